// The run folder: where a run starts, and the files it writes (rank 0 only).
#include "train/run_folder.h"

#include <chrono>
#include <filesystem>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/errors.h"
#include "core/file_io.h"
#include "kernels/ops.h"
#include "runtime/model_io.h"
#include "train/run_lock.h"

namespace l3c {

namespace {

namespace fs = std::filesystem;
using clock = std::chrono::steady_clock;

// The run folder must not already hold a run, nor any file a new run writes: nothing saved, and nothing the user
// put there (their own config.json), is ever overwritten. Called with the folder locked (RunLock).
void prepare_run_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  for (const char* name : {"metrics.jsonl", "model.safetensors", "checkpoints"})
    if (fs::exists(fs::path(dir) / name))
      fail("run.dir {} already holds a run ({} exists); choose another folder with --set run.dir=..., or continue it "
           "with --resume auto", dir, name);
  for (const char* name : {"config.json", "allocation.safetensors"})
    if (fs::exists(fs::path(dir) / name))
      fail("run.dir {} holds a {} but no run: a new run writes its own {} there and does not overwrite files it did "
           "not write; move the file, or choose another folder with --set run.dir=...", dir, name, name);
}

bool holds_run(const std::string& dir) {
  namespace fs = std::filesystem;
  for (const char* name : {"metrics.jsonl", "model.safetensors", "checkpoints"})
    if (fs::exists(fs::path(dir) / name)) return true;
  return false;
}

bool same_folder(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::equivalent(a, b, ec);
}

// Keeps the records of metrics.jsonl up to `step` (and drops a torn last line and any summary), so that a
// resumed run reads as one run.
void truncate_metrics(const std::string& path, int64_t step) {
  if (!std::filesystem::exists(path)) return;
  const std::string text = read_file_bytes(path);
  std::string kept;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) break;  // a line without its newline was torn by a crash
    const std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_discarded() || !record.is_object() || record.contains("summary")) continue;
    if (record.contains("step") && record["step"].is_number_integer() && record["step"].get<int64_t>() > step) continue;
    kept += line + "\n";
  }
  write_file_atomic(path, kept);
}


// The checkpoint `l3c train --resume` continues from, verified; nullopt for "auto" in a folder that holds
// no run yet (a new run starts).
std::optional<CheckpointCheck> find_resume(const Config& config, const std::string& resume, std::string& dir) {
  if (resume != "auto") {
    CheckpointCheck check = verify_checkpoint(resume);
    if (!check.ok) fail("--resume {}: the checkpoint cannot be loaded: {}", resume, check.reason);
    dir = resume;
    return check;
  }
  remove_stale_temporaries(config.run.dir);
  std::vector<std::string> passed_over;
  CheckpointCheck check;
  const std::optional<std::string> found = find_resume_checkpoint(config.run.dir, &passed_over, &check);
  if (!found) {
    if (holds_run(config.run.dir)) {
      std::string reasons;
      for (const std::string& line : passed_over) reasons += "\n  " + line;
      fail("--resume auto: run.dir {} holds a run but no complete checkpoint to resume from{}{}", config.run.dir,
           passed_over.empty() ? " (none was written)" : ":", reasons);
    }
    spdlog::info("resume: run.dir {} holds no run yet; starting a new run", config.run.dir);
    return std::nullopt;
  }
  dir = *found;
  return check;
}

// A copy of a host buffer (to load a checkpoint into before the parameters take it over).
FlatBuffer host_copy(const FlatBuffer& buffer) {
  FlatBuffer copy(buffer.numel(), buffer.dtype());
  ops::copy(copy.all(), buffer.all());
  return copy;
}

}  // namespace

RunFolder::RunFolder(const Config& config, const TrainOptions& options, Communicator& comm, int64_t threads)
    : config_(config), options_(options), comm_(comm), writer_(comm.is_root()) {
  start_.threads = threads;
  start_.world_size = comm.size();
  if (!options.resume.empty() && !options.init_from.empty())
    fail("--resume and --init-from exclude each other (--resume continues a run; --init-from starts a new one)");
  // From here on this process alone reads and changes run.dir (rank 0: the others do not touch the folder).
  if (writer_) lock_ = std::make_unique<RunLock>(config.run.dir);
  // Rank 0 finds the checkpoint (cleaning up after interrupted writes); the others verify the one it names.
  const auto verify_start = clock::now();
  if (!options.resume.empty()) {
    if (writer_) resume_check_ = find_resume(config, options.resume, resume_dir_);
    resume_dir_ = broadcast_string(comm, resume_dir_);
    if (!writer_ && !resume_dir_.empty()) {
      resume_check_ = verify_checkpoint(resume_dir_);
      if (!resume_check_->ok) fail("--resume {}: the checkpoint cannot be loaded here: {}", resume_dir_, resume_check_->reason);
    }
  }
  verify_seconds_ = std::chrono::duration<double>(clock::now() - verify_start).count();
  if (resume_check_) {
    const Config saved = checkpoint_config(resume_check_->trainer, resume_dir_);
    for (const std::string& note : check_resume_config(saved, config)) spdlog::info("resume: config change {}", note);
    const TrainerProgress saved_progress = checkpoint_progress(resume_check_->trainer);
    start_.step = saved_progress.step;
    start_.tokens_seen = saved_progress.tokens_seen;
    start_.skipped_steps = saved_progress.skipped_steps;
    if (start_.step > config.train.steps)
      fail("--resume {}: the checkpoint is at step {}, past train.steps = {}", resume_dir_, start_.step,
           config.train.steps);
    if (saved_progress.threads != threads)
      spdlog::warn("resume: the checkpoint was written with {} threads, this run has {}: training continues, but not "
                   "bit for bit as it would have with the same thread count", saved_progress.threads, threads);
    if (saved_progress.world_size != comm.size())
      spdlog::info("resume: the checkpoint was written by {} ranks, this run has {}: the global batch and the data "
                   "order are the same; sums over ranks differ in float rounding only", saved_progress.world_size,
                   comm.size());
    same_run_ = same_folder(fs::path(resume_dir_).parent_path().parent_path().string(), config.run.dir);
    if (same_run_ && writer_) {
      // Newer step folders are either valid (then resuming from an older one would overwrite them) or were
      // passed over as incomplete or corrupt (then they are moved aside, out of the way of new checkpoints).
      for (int64_t step : checkpoint_steps(config.run.dir)) {
        if (step <= start_.step) continue;
        const fs::path newer = fs::path(checkpoints_dir(config.run.dir)) / checkpoint_name(step);
        const CheckpointCheck check = verify_checkpoint(newer.string());
        if (check.ok)
          fail("--resume {}: run.dir holds a newer checkpoint, {}, which continuing from step {} would overwrite; "
               "resume from it (--resume auto), or continue in another folder (--set run.dir=...)", resume_dir_,
               newer.string(), start_.step);
        const fs::path aside = newer.parent_path() / ("rejected_" + newer.filename().string());
        std::error_code ec;
        fs::remove_all(aside, ec);
        fs::rename(newer, aside, ec);
        spdlog::warn("resume: moved {} aside to {} ({})", newer.string(), aside.string(), check.reason);
      }
    }
    spdlog::info("resume: continuing from {} (step {} of {}, {} tokens seen{})", resume_dir_, start_.step,
                 config.train.steps, start_.tokens_seen,
                 start_.skipped_steps ? fmt::format(", {} steps skipped", start_.skipped_steps) : "");
  }
  if (!options.init_from.empty()) init_from_weights(options.init_from);  // refuses a bad folder before anything starts
  if (options.stop_at > 0 && options.stop_at <= start_.step)
    fail("--stop-at {}: the run is already at step {}", options.stop_at, start_.step);
}

uint64_t RunFolder::resume_bytes() const {
  uint64_t bytes = 0;
  if (resume_check_)
    for (const auto& [file, entry] : resume_check_->trainer["files"].items()) bytes += entry["bytes"].get<uint64_t>();
  return bytes;
}

void RunFolder::open(const std::optional<Allocation>& l3_allocation) {
  spdlog::info("resolved config:\n{}", config_to_json(config_).dump(2));
  if (!writer_) return;
  if (!same_run_) prepare_run_dir(config_.run.dir);
  const std::string metrics_path = (fs::path(config_.run.dir) / "metrics.jsonl").string();
  if (same_run_) truncate_metrics(metrics_path, start_.step);
  // metrics.jsonl first: a folder holding it holds a run, so the config.json written next is the run's own.
  metrics_ = std::make_unique<MetricsWriter>(metrics_path);
  write_config_json((fs::path(config_.run.dir) / "config.json").string(), config_);
  if (resume_check_) metrics_->write({{"event", "resume"}, {"step", start_.step}, {"checkpoint", resume_dir_}});
  if (l3_allocation) write_allocation_file((fs::path(config_.run.dir) / "allocation.safetensors").string(), *l3_allocation);
}

void RunFolder::write_metrics(const nlohmann::json& record) {
  if (metrics_) metrics_->write(record);
}

void RunFolder::load_into(TrainingState& state) const {
  if (resume_check_) {
    FlatBuffer host = host_copy(state.host_params());
    load_checkpoint_state(resume_dir_, state.mutable_model(), host, state.io_optimizer());
    state.set_params(host);
    state.scatter_optimizer();
  }
  if (!options_.init_from.empty()) {
    FlatBuffer host = host_copy(state.host_params());
    init_from_checkpoint(options_.init_from, state.mutable_model(), host);
    state.set_params(host);
  }
}

std::string RunFolder::checkpoint(TrainingState& state, const TrainerProgress& progress) {
  const FlatBuffer& params = state.host_params();  // collective under ZeRO-1 with master weights
  state.gather_optimizer();                        // collective under ZeRO-1
  std::string path;
  if (writer_) path = write_checkpoint(config_.run.dir, {config_, state.model(), params, state.io_optimizer(), progress});
  // The others wait for the checkpoint to be complete: a stop then leaves every rank behind a finished write.
  return broadcast_string(comm_, path);
}

void RunFolder::save_model(TrainingState& state) {
  const FlatBuffer& params = state.host_params();
  if (writer_) l3c::save_model((fs::path(config_.run.dir) / "model.safetensors").string(), state.model(), params, config_);
  comm_.barrier();
}

}  // namespace l3c
