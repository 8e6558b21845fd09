// The training loop: steps, validation, checkpoints, resume, stop signals.
#include "train/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "data/allocation.h"
#include "data/prepare.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "core/file_io.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/memory.h"
#include "train/metrics.h"
#include "train/model_io.h"
#include "train/perf.h"
#include "train/run_lock.h"

namespace l3c {

namespace {

// Per-layer MoE statistics summed over micro-batches, then scaled to their mean. The load extremes
// average too: the step reports the mean of each micro-batch's max and min.
void add_moe_stats(std::vector<MoeLayerStats>& sum, const std::vector<MoeLayerStats>& more) {
  for (size_t j = 0; j < sum.size(); ++j) {
    sum[j].load_balance_loss += more[j].load_balance_loss;
    sum[j].z_loss += more[j].z_loss;
    sum[j].load_max += more[j].load_max;
    sum[j].load_min += more[j].load_min;
    sum[j].router_entropy += more[j].router_entropy;
  }
}
void scale_moe_stats(std::vector<MoeLayerStats>& stats, double s) {
  for (MoeLayerStats& m : stats) {
    m.load_balance_loss *= s;
    m.z_loss *= s;
    m.load_max *= s;
    m.load_min *= s;
    m.router_entropy *= s;
  }
}

nlohmann::json moe_stats_json(const std::vector<MoeLayerStats>& stats) {
  nlohmann::json layers = nlohmann::json::array();
  for (const MoeLayerStats& m : stats)
    layers.push_back({{"layer", m.layer}, {"load_balance_loss", m.load_balance_loss}, {"z_loss", m.z_loss},
                      {"load_max", m.load_max}, {"load_min", m.load_min}, {"router_entropy", m.router_entropy}});
  return layers;
}

// A copy of a host buffer (to load a checkpoint into before the parameters take it over).
FlatBuffer host_copy(const FlatBuffer& buffer) {
  FlatBuffer copy(buffer.numel(), buffer.dtype());
  ops::copy(copy.all(), buffer.all());
  return copy;
}

// The model as the run computes it: on its device, with its recomputation setting.
Llama make_model(const Config& config, Device device) {
  Llama model(config.model);
  model.set_recompute(Recompute::from(config.train.recompute));
  model.set_device(device);
  return model;
}

// Copies the host batch to the device buffers when the model computes on the GPU; returns what to pass on.
std::pair<Tensor, Tensor> batch_on_device(Tensor tokens, Tensor targets, const FlatBuffer& device_tokens,
                                          const FlatBuffer& device_targets) {
  if (device_tokens.numel() == 0) return {tokens, targets};
  const int64_t n = tokens.numel();
  Tensor t = device_tokens.all().rows(0, n).view({tokens.dim(0), tokens.dim(1)});
  Tensor g = device_targets.all().rows(0, n).view({targets.dim(0), targets.dim(1)});
  ops::copy(t, tokens);
  ops::copy(g, targets);
  return {t, g};
}
}  // namespace

TrainingState::TrainingState(const Config& config, const std::vector<int32_t>* l3_allocation)
    : config_(config),
      device_(resolve_run_device(config.train)),
      model_(make_model(config, device_.device)),
      dtype_(device_.param_dtype),
      params_(model_.registry().total(), dtype_, device_.device),
      master_(device_.mixed_precision ? model_.registry().total() : 0, DType::F32, device_.device),
      grads_(model_.registry().total(), dtype_, device_.device),
      optimizer_(model_.registry(), device_.moment_dtype, AdamWSettings::from(config.train), device_.device),
      arena_(model_.activation_bytes(config.train.micro_batch, config.data.seq_len, dtype_, true), "activation",
             device_.device) {
  init_params(model_.registry(), params_, config.train.seed);
  if (device_.mixed_precision) init_params(model_.registry(), master_, config.train.seed);
  if (config.model.l3.enabled()) {
    if (l3_allocation) model_.set_l3_allocations(*l3_allocation, "the L3 allocation");
    else model_.set_l3_allocations(allocation_for_model(config.model).counts, "model.l3.allocation");
  }
  const int64_t micro_tokens = config.train.micro_batch * config.data.seq_len;
  tokens_.resize(static_cast<size_t>(micro_tokens));
  targets_.resize(static_cast<size_t>(micro_tokens));
  if (device_.device == Device::CUDA) {
    device_tokens_ = FlatBuffer(micro_tokens, DType::I32, Device::CUDA);
    device_targets_ = FlatBuffer(micro_tokens, DType::I32, Device::CUDA);
    cuda_reserve_workspace(cuda_workspace_bytes(workspace_shape(config, dtype_)));
  }
  accum_steps_ = config.train.grad_accum_steps(config.data.seq_len);
  tokens_per_step_ = accum_steps_ * micro_tokens;
  if (!config.train.trainable.empty()) {
    trainable_ = trainable_mask(model_.registry(), config.train.trainable);
    optimizer_.set_trainable(trainable_);
  }
}

std::vector<uint8_t> trainable_mask(const ParamRegistry& registry, const std::vector<std::string>& trainable) {
  const auto& params = registry.params();
  std::vector<uint8_t> mask(params.size(), trainable.empty() ? 1 : 0);
  for (const std::string& entry : trainable) {
    bool matched = false;
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].group == entry || params[i].name.rfind(entry, 0) == 0) mask[i] = 1, matched = true;
    if (!matched) {
      std::vector<std::string> groups;
      for (const ParamInfo& p : params)
        if (std::find(groups.begin(), groups.end(), p.group) == groups.end()) groups.push_back(p.group);
      std::string group_list;
      for (const std::string& g : groups) group_list += (group_list.empty() ? "" : ", ") + g;
      fail("train.trainable: \"{}\" matches no parameter (an entry is a group: {}; or a parameter name prefix, "
           "e.g. model.layers.0.)", entry, group_list);
    }
  }
  return mask;
}

StepResult TrainingState::step(int64_t step, const BatchSource& batches) {
  const int64_t B = config_.train.micro_batch, T = config_.data.seq_len;
  Tensor tokens(tokens_.data(), DType::I32, {B, T});
  Tensor targets(targets_.data(), DType::I32, {B, T});
  // The step's loss is the mean over all its tokens, so each micro-batch's summed loss is scaled by
  // 1 / (tokens per step).
  const double grad_scale = 1.0 / static_cast<double>(tokens_per_step_);

  StepResult result;
  result.lr = learning_rate(config_.train, step);
  ops::fill_zero(grads_.all());
  for (int64_t micro = 0; micro < accum_steps_; ++micro) {
    arena_.reset();
    batches(first_sequence(step * accum_steps_ + micro, B), tokens, targets);
    const auto [tok, tgt] = batch_on_device(tokens, targets, device_tokens_, device_targets_);
    const LossReport report = model_.forward_backward(params_, &grads_, tok, tgt, grad_scale, arena_);
    result.loss += report.cross_entropy;
    result.aux_loss += report.aux_loss;
    if (micro == 0) result.moe = report.moe;
    else add_moe_stats(result.moe, report.moe);
  }
  const double micro_batches = static_cast<double>(accum_steps_);
  result.loss /= micro_batches;
  result.aux_loss /= micro_batches;
  scale_moe_stats(result.moe, 1.0 / micro_batches);
  // Frozen parameters (train.trainable) take no part in the norm, the clipping or the update.
  for (size_t i = 0; i < trainable_.size(); ++i)
    if (!trainable_[i]) ops::fill_zero(grads_.view(model_.registry().params()[i]));
  result.grad_norm = global_grad_norm(grads_);
  if (!std::isfinite(result.loss + result.aux_loss) || !std::isfinite(result.grad_norm)) {
    if (config_.train.on_nonfinite == "stop")
      fail("step {}: non-finite loss ({}) or gradient norm ({}); lower train.lr or raise train.warmup_steps, or set "
           "train.on_nonfinite=skip to skip such steps", step + 1, result.loss + result.aux_loss, result.grad_norm);
    result.skipped = true;  // no update: weights and AdamW state stay as they were
    return result;
  }
  clip_grad_norm(grads_, result.grad_norm, config_.train.grad_clip);
  optimizer_.step(params_, grads_, result.lr, device_.mixed_precision ? &master_ : nullptr);
  return result;
}

const FlatBuffer& TrainingState::host_params() {
  if (device_.device == Device::CPU) return params_;
  if (host_copy_.numel() != params_.numel()) host_copy_ = FlatBuffer(params_.numel(), DType::F32);
  ops::copy(host_copy_.all(), (device_.mixed_precision ? master_ : params_).all());
  return host_copy_;
}

void TrainingState::set_params(const FlatBuffer& host) {
  L3C_CHECK(host.numel() == params_.numel() && host.device() == Device::CPU, "set_params: {} host values for {}",
            host.numel(), params_.numel());
  if (device_.device == Device::CPU) {
    ops::convert(params_.all(), host.all());
    return;
  }
  L3C_CHECK(host.dtype() == DType::F32, "set_params: f32 values for the GPU, got {}", dtype_name(host.dtype()));
  FlatBuffer& f32 = device_.mixed_precision ? master_ : params_;
  ops::copy(f32.all(), host.all());
  if (device_.mixed_precision) ops::convert(params_.all(), master_.all());
}

double TrainingState::evaluate(const WindowLoader& loader, int64_t batches) {
  return evaluate_loss(model_, params_, loader, config_.train.micro_batch, batches, arena_);
}

double evaluate_loss(const Llama& model, const FlatBuffer& params, const WindowLoader& loader, int64_t micro_batch,
                     int64_t batches, Arena& arena) {
  const int64_t T = loader.seq_len();
  const int64_t windows = batches == 0 ? loader.num_windows() : std::min(batches * micro_batch, loader.num_windows());
  std::vector<int32_t> tokens_data(static_cast<size_t>(micro_batch * T)), targets_data(tokens_data.size());
  FlatBuffer device_tokens, device_targets;  // the batch on the GPU when the model computes there
  if (params.device() == Device::CUDA) {
    device_tokens = FlatBuffer(micro_batch * T, DType::I32, Device::CUDA);
    device_targets = FlatBuffer(micro_batch * T, DType::I32, Device::CUDA);
  }
  double loss_sum = 0.0;
  for (int64_t first = 0; first < windows; first += micro_batch) {
    const int64_t B = std::min(micro_batch, windows - first);
    Tensor tokens(tokens_data.data(), DType::I32, {B, T});
    Tensor targets(targets_data.data(), DType::I32, {B, T});
    loader.fill(first, tokens, targets);
    arena.reset();
    const auto [tok, tgt] = batch_on_device(tokens, targets, device_tokens, device_targets);
    loss_sum += model.forward_backward(params, nullptr, tok, tgt, 0.0, arena).cross_entropy * static_cast<double>(B);
  }
  return loss_sum / static_cast<double>(windows);
}


namespace {

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

// Signals: the first SIGINT or SIGTERM asks the loop to stop after the current step (with a checkpoint);
// a second one ends the process at once with the default action.
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int signal_number) {
  if (g_stop_signal.exchange(signal_number) != 0) {
    std::signal(signal_number, SIG_DFL);
    std::raise(signal_number);
    return;
  }
  static const char message[] =
      "\nstop requested: finishing the current step, then writing a checkpoint (signal again to stop at once)\n";
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, message, sizeof message - 1);
}

class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  static const char* requested() {
    const int s = g_stop_signal.load();
    return s == SIGTERM ? "SIGTERM" : s == SIGINT ? "SIGINT" : nullptr;
  }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

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

}  // namespace

TrainSummary run_training(const Config& config, const TrainOptions& options) {
  namespace fs = std::filesystem;
  using clock = std::chrono::steady_clock;
  const int threads = configure_threads(config.train.threads);
  if (!options.resume.empty() && !options.init_from.empty())
    fail("--resume and --init-from exclude each other (--resume continues a run; --init-from starts a new one)");

  // Everything that can be wrong with the input is checked before the first step.
  WindowLoader train_data(config.data.train, "data.train", config.data.seq_len, config.model.vocab_size);
  std::unique_ptr<WindowLoader> val_data;
  if (!config.data.val.empty())
    val_data = std::make_unique<WindowLoader>(config.data.val, "data.val", config.data.seq_len, config.model.vocab_size);
  {
    const std::unique_ptr<Tokenizer> tokenizer = load_data_tokenizer(config.data.tokenizer, config.model.vocab_size);
    check_shards_tokenizer(*tokenizer, train_data.paths(), "data.train");
    if (val_data) check_shards_tokenizer(*tokenizer, val_data->paths(), "data.val");
  }
  const RunDevice run_device = resolve_run_device(config.train);
  const Llama sizing_model(config.model);
  const MemoryEstimate memory = estimate_training_memory(sizing_model, config, run_device.device);
  if (run_device.device == Device::CUDA) check_fits_device_memory(memory);
  else check_fits_host_memory(memory);
  if (!config.train.trainable.empty()) trainable_mask(sizing_model.registry(), config.train.trainable);

  // Where the run starts: a checkpoint (resume), trained weights (init-from), or the initialisation.
  TrainerProgress progress;
  progress.threads = threads;
  std::string resume_dir;
  std::optional<CheckpointCheck> resume_check;
  const RunLock run_lock(config.run.dir);  // from here on this process alone reads and changes run.dir
  const auto verify_start = clock::now();
  if (!options.resume.empty()) resume_check = find_resume(config, options.resume, resume_dir);
  const double verify_seconds = std::chrono::duration<double>(clock::now() - verify_start).count();
  bool same_run = false;
  if (resume_check) {
    const Config saved = checkpoint_config(resume_check->trainer, resume_dir);
    for (const std::string& note : check_resume_config(saved, config)) spdlog::info("resume: config change {}", note);
    const TrainerProgress saved_progress = checkpoint_progress(resume_check->trainer);
    progress.step = saved_progress.step;
    progress.tokens_seen = saved_progress.tokens_seen;
    progress.skipped_steps = saved_progress.skipped_steps;
    if (progress.step > config.train.steps)
      fail("--resume {}: the checkpoint is at step {}, past train.steps = {}", resume_dir, progress.step,
           config.train.steps);
    if (saved_progress.threads != threads)
      spdlog::warn("resume: the checkpoint was written with {} threads, this run has {}: training continues, but not "
                   "bit for bit as it would have with the same thread count", saved_progress.threads, threads);
    same_run = same_folder(fs::path(resume_dir).parent_path().parent_path().string(), config.run.dir);
    if (same_run) {
      // Newer step folders are either valid (then resuming from an older one would overwrite them) or were
      // passed over as incomplete or corrupt (then they are moved aside, out of the way of new checkpoints).
      for (int64_t step : checkpoint_steps(config.run.dir)) {
        if (step <= progress.step) continue;
        const fs::path newer = fs::path(checkpoints_dir(config.run.dir)) / checkpoint_name(step);
        const CheckpointCheck check = verify_checkpoint(newer.string());
        if (check.ok)
          fail("--resume {}: run.dir holds a newer checkpoint, {}, which continuing from step {} would overwrite; "
               "resume from it (--resume auto), or continue in another folder (--set run.dir=...)", resume_dir,
               newer.string(), progress.step);
        const fs::path aside = newer.parent_path() / ("rejected_" + newer.filename().string());
        std::error_code ec;
        fs::remove_all(aside, ec);
        fs::rename(newer, aside, ec);
        spdlog::warn("resume: moved {} aside to {} ({})", newer.string(), aside.string(), check.reason);
      }
    }
    spdlog::info("resume: continuing from {} (step {} of {}, {} tokens seen{})", resume_dir, progress.step,
                 config.train.steps, progress.tokens_seen,
                 progress.skipped_steps ? fmt::format(", {} steps skipped", progress.skipped_steps) : "");
  }
  if (!options.init_from.empty()) {
    const CheckpointCheck check = verify_checkpoint(options.init_from);
    if (!check.ok) fail("--init-from {}: the checkpoint cannot be loaded: {}", options.init_from, check.reason);
  }
  if (options.stop_at > 0 && options.stop_at <= progress.step)
    fail("--stop-at {}: the run is already at step {}", options.stop_at, progress.step);

  // The L3 allocation: read or computed now, so that a bad allocation stops the run before it starts. A
  // resumed run takes its allocations from the checkpoint.
  std::optional<Allocation> l3_allocation;
  if (config.model.l3.enabled() && !resume_check) {
    const auto start = clock::now();
    l3_allocation = allocation_for_model(config.model);
    const nlohmann::ordered_json summary = allocation_summary(*l3_allocation, 5);
    spdlog::info("L3 allocation ({}): {} rows for {} token ids, at most {} per token{}; {:.1f}s", l3_allocation->method,
                 l3_allocation->v, config.model.vocab_size, l3_allocation->k,
                 l3_allocation->corpus ? fmt::format(", from {} tokens ({} codewords)", l3_allocation->corpus->tokens_parsed,
                                                     l3_allocation->corpus->codewords)
                                       : std::string(),
                 std::chrono::duration<double>(clock::now() - start).count());
    spdlog::info("L3 allocation: most rows {}; histogram {}", summary["most_rows"].dump(), summary["histogram"].dump());
  }
  if (!same_run) prepare_run_dir(config.run.dir);

  spdlog::info("resolved config:\n{}", config_to_json(config).dump(2));
  const std::string metrics_path = (fs::path(config.run.dir) / "metrics.jsonl").string();
  if (same_run) truncate_metrics(metrics_path, progress.step);
  MetricsWriter metrics(metrics_path);  // first: a folder with metrics.jsonl holds a run, so config.json is the run's
  write_config_json((fs::path(config.run.dir) / "config.json").string(), config);
  if (resume_check) metrics.write({{"event", "resume"}, {"step", progress.step}, {"checkpoint", resume_dir}});

  if (l3_allocation) write_allocation_file((fs::path(config.run.dir) / "allocation.safetensors").string(), *l3_allocation);
  // A resumed L3 model starts from a placeholder allocation that the checkpoint's replaces.
  const std::vector<int32_t> placeholder =
      resume_check && config.model.l3.enabled()
          ? uniform_allocation(config.model.vocab_size, config.model.l3.v, config.model.l3.k)
          : std::vector<int32_t>();
  TrainingState state(config, l3_allocation ? &l3_allocation->counts : resume_check ? &placeholder : nullptr);
  if (resume_check) {
    const auto load_start = clock::now();
    FlatBuffer host = host_copy(state.host_params());
    load_checkpoint_state(resume_dir, state.mutable_model(), host, state.optimizer());
    state.set_params(host);
    const double load_seconds = std::chrono::duration<double>(clock::now() - load_start).count();
    uint64_t bytes = 0;
    for (const auto& [file, entry] : resume_check->trainer["files"].items()) bytes += entry["bytes"].get<uint64_t>();
    spdlog::info("resume: checkpoint of {:.1f} MB verified in {:.2f}s and loaded in {:.2f}s ({:.0f} MB/s in all)",
                 bytes / 1e6, verify_seconds, load_seconds, bytes / 1e6 / std::max(verify_seconds + load_seconds, 1e-9));
  }
  if (!options.init_from.empty()) {
    FlatBuffer host = host_copy(state.host_params());
    init_from_checkpoint(options.init_from, state.mutable_model(), host);
    state.set_params(host);
  }
  const ModelCost cost = state.model().cost(config.data.seq_len);
  // MFU: against the measured CPU peak, or the GPU's datasheet bf16 peak (0 when unknown: MFU is then 0).
  const bool on_gpu = run_device.device == Device::CUDA;
  const double peak = on_gpu ? gpu_peak_flops(run_device.description) : measure_cpu_peak_flops();
  auto mfu_of = [&](double tokens_per_second) { return peak > 0 ? tokens_per_second * cost.flops_per_token / peak : 0.0; };
  spdlog::info("model: {:.2f}M parameters, {:.1f} MFLOP/token; data: {} train tokens in {} shards{}; memory {}{}",
               cost.total_params / 1e6, cost.flops_per_token / 1e6, train_data.num_tokens(), train_data.num_shards(),
               val_data ? fmt::format(", {} val tokens", val_data->num_tokens()) : "",
               format_bytes(static_cast<double>(memory.total())), on_gpu ? " on the GPU" : "");
  if (on_gpu)
    spdlog::info("{} steps of {} tokens ({} x {} x {} accumulation) on {} ({}{}), peak {:.0f} TFLOP/s",
                 config.train.steps, state.tokens_per_step(), config.train.micro_batch, config.data.seq_len,
                 config.train.grad_accum_steps(config.data.seq_len), run_device.description, config.train.precision,
                 config.train.recompute == "none" ? "" : ", recompute " + config.train.recompute, peak / 1e12);
  else
    spdlog::info("{} steps of {} tokens ({} x {} x {} accumulation), {} threads, CPU peak {:.1f} GFLOP/s",
                 config.train.steps, state.tokens_per_step(), config.train.micro_batch, config.data.seq_len,
                 config.train.grad_accum_steps(config.data.seq_len), threads, peak / 1e9);
  if (!config.train.trainable.empty()) {
    int64_t frozen = 0, total = 0;
    const std::vector<uint8_t> mask = trainable_mask(state.model().registry(), config.train.trainable);
    for (size_t i = 0; i < mask.size(); ++i) {
      total += state.model().registry().params()[i].numel;
      if (!mask[i]) frozen += state.model().registry().params()[i].numel;
    }
    spdlog::info("train.trainable: {:.2f}M of {:.2f}M parameters train; the others are frozen", (total - frozen) / 1e6,
                 total / 1e6);
  }

  // Training reads windows in the order of (train.seed, epoch, position); validation in file order.
  const WindowOrder order(train_data.num_windows(), config.train.seed, config.data.shuffle);
  const double epochs = static_cast<double>(config.train.steps) * static_cast<double>(state.tokens_per_step()) /
                        (static_cast<double>(train_data.num_windows()) * static_cast<double>(config.data.seq_len));
  spdlog::info("data: {} training windows of {} + 1 tokens, {}; the run reads {:.2f} epochs", train_data.num_windows(),
               config.data.seq_len, order.shuffled() ? fmt::format("shuffled per epoch (seed {})", config.train.seed)
                                                     : std::string("in file order (data.shuffle is false)"), epochs);
  const BatchSource batches = [&](int64_t first, Tensor tokens, Tensor targets) {
    train_data.fill(order, first, tokens, targets);
  };
  int64_t checkpointed_step = progress.step;  // the newest step saved in a checkpoint (0: none)
  auto checkpoint = [&]() {
    progress.data_position = first_sequence(progress.step * state.accum_steps(), config.train.micro_batch);
    checkpointed_step = progress.step;
    return write_checkpoint(config.run.dir, {config, state.model(), state.host_params(), state.optimizer(), progress});
  };
  // A shard changed under the run (src/data/shard.h) ends it, after a checkpoint of the last completed step: the
  // error comes before a step updates anything, so the weights and moments are those of progress.step.
  auto stop_for_changed_shard = [&](const ShardChangedError& e) {
    std::string saved = progress.step == 0 ? "no step had completed" : "";
    if (progress.step > checkpointed_step) {
      try {
        saved = fmt::format("wrote checkpoint {} for step {}", checkpoint(), progress.step);
      } catch (const UserError& failed) {
        saved = fmt::format("could not write a checkpoint for step {}: {}", progress.step, failed.what());
      }
    } else if (progress.step > 0) {
      saved = fmt::format("step {} is already in a checkpoint", progress.step);
    }
    metrics.write({{"event", "stopped"}, {"step", progress.step}, {"reason", "a shard changed"}});
    fail("{}; {}; replace the shard, then continue with --resume auto", e.what(), saved);
  };
  auto validate = [&](int64_t step) {
    const auto start = clock::now();
    double loss = 0.0;
    try {
      loss = state.evaluate(*val_data, config.eval.batches);
    } catch (const ShardChangedError& e) {
      stop_for_changed_shard(e);
    }
    const double seconds = std::chrono::duration<double>(clock::now() - start).count();
    spdlog::info("step {:>6} | val loss {:.4f} | val ppl {:.2f} | {:.1f}s", step, loss, std::exp(loss), seconds);
    metrics.write({{"step", step}, {"val_loss", loss}, {"val_ppl", std::exp(loss)}});
    return loss;
  };

  TrainSummary summary;
  summary.start_step = progress.step;
  summary.resumed_from = resume_dir;
  summary.final_train_loss = std::numeric_limits<double>::quiet_NaN();
  if (resume_check && progress.step == config.train.steps)
    spdlog::info("the checkpoint is at the last step ({}): nothing left to train", progress.step);
  const int64_t step_pause_ms = test_hook_milliseconds("L3C_TEST_STEP_PAUSE_MS");
  const StopSignals signals;
  const auto run_start = clock::now();
  double timed_seconds = 0.0;
  int64_t timed_tokens = 0, timed_steps = 0;
  for (int64_t step = progress.step; step < config.train.steps; ++step) {
    const auto start = clock::now();
    StepResult r;
    try {
      r = state.step(step, batches);
    } catch (const ShardChangedError& e) {
      stop_for_changed_shard(e);
    }
    const double seconds = std::chrono::duration<double>(clock::now() - start).count();
    progress.step = step + 1;
    progress.tokens_seen += state.tokens_per_step();
    const double tokens_per_second = static_cast<double>(state.tokens_per_step()) / seconds;
    const double mfu = mfu_of(tokens_per_second);
    // The first step of a process warms caches and is left out of the throughput average.
    if (step > summary.start_step || config.train.steps - summary.start_step == 1) {
      timed_seconds += seconds;
      timed_tokens += state.tokens_per_step();
      ++timed_steps;
    }
    const double average_step = timed_steps > 0 ? timed_seconds / static_cast<double>(timed_steps) : seconds;
    const double eta = average_step * static_cast<double>(config.train.steps - step - 1);
    nlohmann::json record = {{"step", step + 1}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                             {"tokens", progress.tokens_seen}, {"tokens_per_second", tokens_per_second},
                             {"mfu", mfu}, {"step_seconds", seconds}};
    if (!r.moe.empty()) {
      record["aux_loss"] = r.aux_loss;
      record["total_loss"] = r.loss + r.aux_loss;
      record["moe"] = moe_stats_json(r.moe);
    }
    if (r.skipped) {
      ++progress.skipped_steps;
      record["skipped"] = true;
      record["skipped_steps"] = progress.skipped_steps;
      spdlog::warn("step {:>6}/{} | non-finite loss ({}) or gradient norm ({}): step skipped, weights unchanged "
                   "({} skipped so far)", step + 1, config.train.steps, r.loss + r.aux_loss, r.grad_norm,
                   progress.skipped_steps);
    } else {
      // With MoE layers the loss shown is the total that is optimised, then its cross-entropy part.
      const std::string loss_text = r.moe.empty() ? fmt::format("loss {:.4f}", r.loss)
                                                  : fmt::format("loss {:.4f} (ce {:.4f})", r.loss + r.aux_loss, r.loss);
      spdlog::info("step {:>6}/{} | {} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s | MFU {:.1f}% | ETA {}", step + 1,
                   config.train.steps, loss_text, r.lr, r.grad_norm, tokens_per_second, 100.0 * mfu,
                   format_duration(eta));
      summary.final_train_loss = r.loss;
    }
    metrics.write(record);
    const bool last = step + 1 == config.train.steps;
    if (val_data && (last || (config.eval.every > 0 && (step + 1) % config.eval.every == 0)))
      summary.final_val_loss = validate(step + 1);
    if (step_pause_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_pause_ms));

    const char* stop = StopSignals::requested();
    if (!stop && options.stop_at == step + 1 && !last) stop = "--stop-at";
    if (last || stop || (config.checkpoint.every > 0 && (step + 1) % config.checkpoint.every == 0))
      summary.checkpoint = checkpoint();
    if (stop && !last) {
      summary.stopped = stop;
      metrics.write({{"event", "stopped"}, {"step", step + 1}, {"reason", stop}, {"checkpoint", summary.checkpoint}});
      break;
    }
  }
  summary.steps = progress.step;
  summary.tokens = progress.tokens_seen;
  summary.skipped_steps = progress.skipped_steps;
  summary.seconds = std::chrono::duration<double>(clock::now() - run_start).count();
  summary.tokens_per_second = timed_seconds > 0 ? static_cast<double>(timed_tokens) / timed_seconds : 0.0;
  summary.mfu = mfu_of(summary.tokens_per_second);
  if (!summary.stopped.empty()) return summary;

  save_model((fs::path(config.run.dir) / "model.safetensors").string(), state.model(), state.host_params(), config);
  auto number_or_null = [](double x) { return std::isnan(x) ? nlohmann::json() : nlohmann::json(x); };
  metrics.write({{"summary", true}, {"steps", summary.steps}, {"tokens", summary.tokens},
                 {"skipped_steps", summary.skipped_steps},
                 {"final_train_loss", number_or_null(summary.final_train_loss)},
                 {"final_val_loss", number_or_null(summary.final_val_loss)},
                 {"seconds", summary.seconds}, {"tokens_per_second", summary.tokens_per_second}, {"mfu", summary.mfu}});
  return summary;
}

}  // namespace l3c
