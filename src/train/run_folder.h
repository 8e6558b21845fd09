// The run folder (run.dir) of a training job: where the run starts (a new run, a checkpoint to resume, trained
// weights to start from) and every file it writes (config.json, metrics.jsonl, allocation.safetensors,
// checkpoints, model.safetensors).
//
// This is the one place where rank 0 is singled out: it alone looks for the checkpoint to resume (moving
// rejected folders aside), creates and writes the folder; it tells the other ranks which checkpoint to load,
// and on them every write is a no-op. Methods that gather state from all ranks (checkpoint, save_model) are
// called by every rank.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "data/allocation.h"
#include "dist/communicator.h"
#include "runtime/checkpoint.h"
#include "train/metrics.h"
#include "train/run_lock.h"
#include "train/trainer.h"

namespace l3c {

class RunFolder {
 public:
  // Decides where the run starts, with every check that can refuse it (a checkpoint that does not verify, a
  // config that cannot resume it, --stop-at behind the checkpoint), before anything is written.
  RunFolder(const Config& config, const TrainOptions& options, Communicator& comm, int64_t threads);

  bool resuming() const { return resume_check_.has_value(); }
  const std::string& resume_dir() const { return resume_dir_; }
  // Where the run stands: step 0, or the checkpoint's step, tokens and skipped steps.
  const TrainerProgress& start() const { return start_; }
  // Bytes of the checkpoint resumed from, and how long verifying it took (for the log).
  uint64_t resume_bytes() const;
  double verify_seconds() const { return verify_seconds_; }

  // Creates the folder (or reopens the run's), writes config.json and the allocation, opens metrics.jsonl (cut
  // back to the checkpoint's step when the run continues in the same folder).
  void open(const std::optional<Allocation>& l3_allocation);
  void write_metrics(const nlohmann::json& record);
  // Loads the resumed checkpoint or the --init-from weights into the state (every rank).
  void load_into(TrainingState& state) const;
  // Writes a checkpoint of the state at `progress` and returns its path (on every rank). Collective.
  std::string checkpoint(TrainingState& state, const TrainerProgress& progress);
  // Writes RUN/model.safetensors. Collective.
  void save_model(TrainingState& state);

 private:
  const Config& config_;
  const TrainOptions& options_;
  Communicator& comm_;
  bool writer_;
  TrainerProgress start_;
  std::string resume_dir_;
  std::optional<CheckpointCheck> resume_check_;
  double verify_seconds_ = 0.0;
  bool same_run_ = false;  // resuming a checkpoint of run.dir itself
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<RunLock> lock_;  // rank 0: held from the start until the run ends
};

}  // namespace l3c
