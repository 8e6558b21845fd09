// Checkpoints: everything a run needs to continue bit for bit, written so that a crash at any moment
// leaves either the previous checkpoints or a complete new one, never one that looks complete but is not.
//
// RUN/checkpoints/step_00001000/
//   model.safetensors      the weights (MODEL.md names) and each L3 layer's allocation (model.l3.{j}.alloc)
//   optimizer.safetensors  AdamW moments exp_avg.<param>, exp_avg_sq.<param>; AdamW's step in the metadata
//   trainer.json           format, step, tokens seen, skipped steps, data position, RNG and schedule state,
//                          world size, threads, the resolved config, and {bytes, sha256} of every file;
//                          its own checksum ("self_sha256") covers the rest of it
// RUN/checkpoints/latest   the name of the newest checkpoint folder (a hint; resume scans the folders)
//
// Writing: files go into checkpoints/.tmp_step_XXXXXXXX/, each fsynced; then the folder is fsynced and
// renamed to step_XXXXXXXX, checkpoints/ is fsynced, `latest` is replaced atomically, and old checkpoints
// are pruned (the newest checkpoint.keep, plus every checkpoint.milestone_every-th step, stay).
// Reading: verify_checkpoint checks every byte against trainer.json before anything is loaded.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "model/llama.h"
#include "model/params.h"
#include "optim/adamw.h"

namespace l3c {

// Where a run stands after `step` optimizer steps: what trainer.json records besides the config.
struct TrainerProgress {
  int64_t step = 0;             // optimizer steps done; the next step to run has this index
  int64_t tokens_seen = 0;      // training tokens read so far (skipped steps included)
  int64_t skipped_steps = 0;    // steps skipped for a non-finite loss or gradient (train.on_nonfinite = skip)
  int64_t data_position = 0;    // the global sequence position the next step starts at
  int64_t threads = 0;          // OpenMP threads of the run (bit-exact resume needs the same count)
  int64_t world_size = 1;
};

// "step_00001000".
std::string checkpoint_name(int64_t step);
// RUN/checkpoints.
std::string checkpoints_dir(const std::string& run_dir);

// The state a checkpoint saves, as views of the trainer's buffers: the parameters in host memory (f32 or f64;
// TrainingState::host_params()), the optimizer wherever it lives (moments on the GPU are copied to the host).
struct CheckpointState {
  const Config& config;
  const Llama& model;
  const FlatBuffer& params;
  AdamW& optimizer;
  TrainerProgress progress;
};

// Writes RUN/checkpoints/step_XXXXXXXX as described above and returns its path. Refuses non-finite
// weights or moments. Any failure (disk full, file too large, permission denied) removes the temporary
// folder and is a UserError that names the cause and says that the earlier checkpoints are intact.
std::string write_checkpoint(const std::string& run_dir, const CheckpointState& state);

// The result of checking a checkpoint folder: ok, or the precise reason it must not be loaded.
struct CheckpointCheck {
  bool ok = false;
  std::string reason;       // when not ok: "model.safetensors: sha256 mismatch ..."
  nlohmann::json trainer;   // trainer.json, when it parsed
};

// Checks that trainer.json parses, carries this format and an intact self-checksum, and that every file it
// lists exists with the recorded size and sha256. Reads every byte of the checkpoint.
CheckpointCheck verify_checkpoint(const std::string& dir);

// The newest checkpoint of the run that verifies (step_* folders, newest first; `latest` is only a
// hint), logging why each newer folder was passed over; nullopt when none verifies. Each folder passed
// over is appended to `passed_over` as "step_...: reason" when given; `check` receives the verification
// of the folder found.
std::optional<std::string> find_resume_checkpoint(const std::string& run_dir,
                                                  std::vector<std::string>* passed_over = nullptr,
                                                  CheckpointCheck* check = nullptr);

// Removes checkpoints/.tmp_* folders left by an interrupted write, with a log line each.
void remove_stale_temporaries(const std::string& run_dir);

// Keeps the newest `keep` checkpoints and those whose step is a multiple of milestone_every (> 0); removes
// the other step_* folders.
void prune_checkpoints(const std::string& run_dir, int64_t keep, int64_t milestone_every);

// The step of every step_* folder of the run, ascending (verified or not).
std::vector<int64_t> checkpoint_steps(const std::string& run_dir);

// trainer.json of a verified checkpoint: the progress, and the resolved config it was saved with.
TrainerProgress checkpoint_progress(const nlohmann::json& trainer);
Config checkpoint_config(const nlohmann::json& trainer, const std::string& dir);

// Loads a verified checkpoint's weights, L3 allocations and AdamW state into model, params (host memory) and
// optimizer (host or GPU) (which must have the checkpoint's layout). UserError naming the file and tensor on any mismatch.
void load_checkpoint_state(const std::string& dir, Llama& model, FlatBuffer& params, AdamW& optimizer);

// Starts a new run from a checkpoint's trained weights (--init-from; the checkpoint is verified first):
// every parameter of `model` the checkpoint holds is copied (a shape mismatch is a UserError), the others
// keep their initialisation, and both lists are logged. An L3 layer whose tables come from the checkpoint
// takes the checkpoint's allocation too: table rows mean nothing under another allocation.
void init_from_checkpoint(const std::string& dir, Llama& model, FlatBuffer& params);
// The weights file --init-from reads: a checkpoint folder's (verified first) or a model folder's model.safetensors
// (a run folder, or what `l3c import hf` writes). UserError naming the folder otherwise.
std::string init_from_weights(const std::string& dir);

// Compares the config a checkpoint was saved with to the config of the run that resumes it, key by key.
// Keys that may change on resume (see resume_changeable_keys) are returned as notes ("train.steps: 100 ->
// 200"); any other change is a UserError listing every changed key with its old and new value.
std::vector<std::string> check_resume_config(const Config& saved, const Config& now);
// Every key whose value differs between two configs ("section.key" -> {value in a, value in b}; null when
// absent), and one such difference as "key: a -> b".
std::map<std::string, std::pair<nlohmann::json, nlohmann::json>> config_differences(const Config& a, const Config& b);
std::string describe_difference(const std::string& key, const std::pair<nlohmann::json, nlohmann::json>& values);
const std::vector<std::string>& resume_changeable_keys();

// Test-only hook: L3C_TEST_CHECKPOINT_PAUSE_MS=N makes write_checkpoint sleep N ms after each file, so a
// test can kill the trainer in the middle of a write. Unset in normal use.
int64_t test_hook_milliseconds(const char* variable);

}  // namespace l3c
