// `l3c bench CONFIG [--steps N] [--warmup N] [--device cpu|cuda|auto] [--set k=v ...] [--json]`: times full
// training steps (every micro-batch's forward and backward, clipping, AdamW) on synthetic tokens; reports
// steady-state tokens/s and MFU against the measured CPU matrix-product peak, or the GPU's datasheet bf16 peak.
// `l3c bench --generate ...` times inference instead (cmd_bench_generate.cpp).
#include <algorithm>
#include <chrono>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/limits.h"
#include "core/rng.h"
#include "runtime/device.h"
#include "runtime/memory.h"
#include "train/perf.h"
#include "train/trainer.h"
#include "cli.h"
#include "commands.h"

namespace l3c::cmd {

int bench(const std::vector<std::string>& argv) {
  if (std::find(argv.begin(), argv.end(), "--generate") != argv.end()) return bench_generate(argv);
  const cli::Args args = cli::parse(
      argv, {{"steps", "warmup", "device"},
             {"json"},
             1,
             1,
             "l3c bench CONFIG [--steps N] [--warmup N] [--device cpu|cuda|auto] [--set key=value ...] [--json]\n"
             "       l3c bench --generate CHECKPOINT_OR_CONFIG [--batch B] [--prompt-tokens P] [--new-tokens N] ..."});
  const Config config = load_config(args.positional[0], args.overrides());
  const int64_t steps = args.get_int("steps", 10, 1, limits::kMaxSteps);
  const int64_t warmup = args.get_int("warmup", 2, 0, limits::kMaxSteps);
  const int threads = configure_threads(config.train.threads);
  const RunDevice device = resolve_run_device(config.train);
  const MemoryEstimate memory = estimate_training_memory(Llama(config.model), config, device);
  if (device.device == Device::CUDA) check_fits_device_memory(memory);
  else check_fits_host_memory(memory);

  TrainingState state(config);
  const Philox rng(config.train.seed, RngPurpose::Test);
  const int64_t vocab = config.model.vocab_size;
  const BatchSource random_tokens = [&](int64_t first, Tensor tokens, Tensor targets) {
    const int64_t n = tokens.numel();
    for (int64_t i = 0; i < n; ++i) {
      tokens.ptr<int32_t>()[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(2 * (first * n + i)), vocab));
      targets.ptr<int32_t>()[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(2 * (first * n + i) + 1), vocab));
    }
  };
  for (int64_t s = 0; s < warmup; ++s) state.step(s, random_tokens);
  std::vector<double> seconds, update_seconds;
  for (int64_t s = 0; s < steps; ++s) {
    // A step ends with the loss and gradient norm read back from the device, so the clock sees all its work.
    const auto start = std::chrono::steady_clock::now();
    const StepResult result = state.step(warmup + s, random_tokens);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    update_seconds.push_back(result.update_seconds);
  }
  std::sort(seconds.begin(), seconds.end());
  std::sort(update_seconds.begin(), update_seconds.end());
  const double median = seconds[seconds.size() / 2], median_update = update_seconds[update_seconds.size() / 2];
  const double tokens_per_second = static_cast<double>(state.tokens_per_step()) / median;
  const ModelCost cost = state.model().cost(config.data.seq_len);
  const bool on_gpu = device.device == Device::CUDA;
  const double peak = on_gpu ? gpu_peak_flops(device.description) : measure_cpu_peak_flops();
  const double mfu = peak > 0 ? tokens_per_second * cost.flops_per_token / peak : 0.0;
  spdlog::info("bench: {:.2f}M params, {} tokens/step, {} | median step {:.3f}s | {:.0f} tok/s | "
               "{:.2f} GFLOP/s of {:.2f} peak | MFU {:.1f}%",
               cost.total_params / 1e6, state.tokens_per_step(),
               on_gpu ? fmt::format("{} ({})", device.description, choice_name(config.train.precision))
                      : fmt::format("{} threads", threads),
               median, tokens_per_second, tokens_per_second * cost.flops_per_token / 1e9, peak / 1e9, 100.0 * mfu);
  // On the CPU the whole-buffer work is timed as it runs; on the GPU the host only queues it.
  if (!on_gpu)
    spdlog::info("bench: of which {:.3f}s ({:.1f}%) zero the gradients, take their norm, clip and run AdamW over all "
                 "{:.2f}M parameters", median_update, 100.0 * median_update / median, cost.total_params / 1e6);
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"framework", "l3c"},
                                        {"device", on_gpu ? "cuda" : "cpu"},
                                        {"device_name", device.description},
                                        {"precision", std::string(on_gpu ? choice_name(config.train.precision) : choice_name(config.train.dtype))},
                                        {"threads", threads},
                                        {"params", cost.total_params},
                                        {"tokens_per_step", state.tokens_per_step()},
                                        {"step_seconds", median},
                                        {"update_seconds", on_gpu ? nlohmann::json() : nlohmann::json(median_update)},
                                        {"tokens_per_second", tokens_per_second},
                                        {"flops_per_token", cost.flops_per_token},
                                        {"peak_flops", peak},
                                        {"mfu", mfu},
                                        {"memory_bytes", memory.total()}}
                             .dump());
  return 0;
}

}  // namespace l3c::cmd
