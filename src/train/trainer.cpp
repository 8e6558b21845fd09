// The training loop.
#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "data/allocation.h"
#include "data/prepare.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "optim/schedule.h"
#include "train/memory.h"
#include "train/metrics.h"
#include "train/model_io.h"
#include "train/perf.h"

namespace l3c {

namespace {
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
    result.loss += model_.forward_backward(params_, &grads_, tok, tgt, grad_scale, arena_);
  }
  result.loss /= static_cast<double>(accum_steps_);
  result.grad_norm = global_grad_norm(grads_);
  if (!std::isfinite(result.loss) || !std::isfinite(result.grad_norm))
    fail("step {}: non-finite loss ({}) or gradient norm ({}); lower train.lr or raise train.warmup_steps", step + 1,
         result.loss, result.grad_norm);
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
    loss_sum += model.forward_backward(params, nullptr, tok, tgt, 0.0, arena) * static_cast<double>(B);
  }
  return loss_sum / static_cast<double>(windows);
}


namespace {
// The run folder must not already hold a run: nothing saved is ever overwritten.
void prepare_run_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  for (const char* name : {"metrics.jsonl", "model.safetensors"})
    if (fs::exists(fs::path(dir) / name))
      fail("run.dir {} already holds a run ({} exists); choose another folder with --set run.dir=...", dir, name);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("run.dir {}: cannot create the folder: {}", dir, ec.message());
}
}  // namespace

TrainSummary run_training(const Config& config) {
  namespace fs = std::filesystem;
  using clock = std::chrono::steady_clock;
  const int threads = configure_threads(config.train.threads);

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
  // The L3 allocation: read or computed now, so that a bad allocation stops the run before it starts.
  std::optional<Allocation> l3_allocation;
  if (config.model.l3.enabled()) {
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
  prepare_run_dir(config.run.dir);

  spdlog::info("resolved config:\n{}", config_to_json(config).dump(2));
  write_config_json((fs::path(config.run.dir) / "config.json").string(), config);
  MetricsWriter metrics((fs::path(config.run.dir) / "metrics.jsonl").string());

  if (l3_allocation) write_allocation_file((fs::path(config.run.dir) / "allocation.safetensors").string(), *l3_allocation);
  TrainingState state(config, l3_allocation ? &l3_allocation->counts : nullptr);
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

  if (config.checkpoint.every > 0)
    spdlog::warn("checkpoint.every = {}: periodic checkpoints are not written yet; the run folder receives the "
                 "final weights only", config.checkpoint.every);
  // Training reads windows in the order of (train.seed, epoch, position); validation in file order.
  const WindowOrder order(train_data.num_windows(), config.train.seed, config.data.shuffle);
  const double epochs = static_cast<double>(config.train.steps * state.tokens_per_step()) /
                        static_cast<double>(train_data.num_windows() * config.data.seq_len);
  spdlog::info("data: {} training windows of {} + 1 tokens, {}; the run reads {:.2f} epochs", train_data.num_windows(),
               config.data.seq_len, order.shuffled() ? fmt::format("shuffled per epoch (seed {})", config.train.seed)
                                                     : std::string("in file order (data.shuffle is false)"), epochs);
  const BatchSource batches = [&](int64_t first, Tensor tokens, Tensor targets) {
    train_data.fill(order, first, tokens, targets);
  };
  auto validate = [&](int64_t step) {
    const auto start = clock::now();
    const double loss = state.evaluate(*val_data, config.eval.batches);
    const double seconds = std::chrono::duration<double>(clock::now() - start).count();
    spdlog::info("step {:>6} | val loss {:.4f} | val ppl {:.2f} | {:.1f}s", step, loss, std::exp(loss), seconds);
    metrics.write({{"step", step}, {"val_loss", loss}, {"val_ppl", std::exp(loss)}});
    return loss;
  };

  TrainSummary summary;
  const auto run_start = clock::now();
  double timed_seconds = 0.0;
  int64_t timed_tokens = 0;
  for (int64_t step = 0; step < config.train.steps; ++step) {
    const auto start = clock::now();
    const StepResult r = state.step(step, batches);
    const double seconds = std::chrono::duration<double>(clock::now() - start).count();
    const double tokens_per_second = static_cast<double>(state.tokens_per_step()) / seconds;
    const double mfu = mfu_of(tokens_per_second);
    // The first step warms caches and is left out of the throughput average.
    if (step > 0 || config.train.steps == 1) {
      timed_seconds += seconds;
      timed_tokens += state.tokens_per_step();
    }
    const double average_step = timed_seconds > 0 ? timed_seconds / static_cast<double>(std::max<int64_t>(step, 1)) : seconds;
    const double eta = average_step * static_cast<double>(config.train.steps - step - 1);
    spdlog::info("step {:>6}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s | MFU {:.1f}% | ETA {}",
                 step + 1, config.train.steps, r.loss, r.lr, r.grad_norm, tokens_per_second, 100.0 * mfu,
                 format_duration(eta));
    metrics.write({{"step", step + 1}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                   {"tokens", (step + 1) * state.tokens_per_step()}, {"tokens_per_second", tokens_per_second},
                   {"mfu", mfu}, {"step_seconds", seconds}});
    summary.final_train_loss = r.loss;
    const bool last = step + 1 == config.train.steps;
    if (val_data && (last || (config.eval.every > 0 && (step + 1) % config.eval.every == 0)))
      summary.final_val_loss = validate(step + 1);
  }
  save_model((fs::path(config.run.dir) / "model.safetensors").string(), state.model(), state.host_params(), config);

  summary.steps = config.train.steps;
  summary.tokens = config.train.steps * state.tokens_per_step();
  summary.seconds = std::chrono::duration<double>(clock::now() - run_start).count();
  summary.tokens_per_second = timed_seconds > 0 ? static_cast<double>(timed_tokens) / timed_seconds : 0.0;
  summary.mfu = mfu_of(summary.tokens_per_second);
  metrics.write({{"summary", true}, {"steps", summary.steps}, {"tokens", summary.tokens},
                 {"final_train_loss", summary.final_train_loss},
                 {"final_val_loss", std::isnan(summary.final_val_loss) ? nlohmann::json() : nlohmann::json(summary.final_val_loss)},
                 {"seconds", summary.seconds}, {"tokens_per_second", summary.tokens_per_second}, {"mfu", summary.mfu}});
  return summary;
}

}  // namespace l3c
