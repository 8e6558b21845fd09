// `l3c bench CONFIG [--steps N] [--warmup N] [--set k=v ...] [--json]`: times full training steps
// (every micro-batch's forward and backward, clipping, AdamW) on synthetic tokens; reports
// steady-state tokens/s and MFU against the measured CPU matrix-product peak.
#include <algorithm>
#include <chrono>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "core/rng.h"
#include "train/memory.h"
#include "train/perf.h"
#include "train/trainer.h"

namespace l3c::cmd {

int bench(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"steps", "warmup"}, {"json"}, 1, 1, "l3c bench CONFIG [--steps N] [--warmup N] [--set key=value ...] [--json]"});
  const Config config = load_config(args.positional[0], args.sets);
  const int64_t steps = args.get_int("steps", 10, 1);
  const int64_t warmup = args.get_int("warmup", 2, 0);
  const int threads = configure_threads(config.train.threads);
  check_fits_host_memory(estimate_training_memory(Llama(config.model), config));

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
  std::vector<double> seconds;
  for (int64_t s = 0; s < steps; ++s) {
    const auto start = std::chrono::steady_clock::now();
    state.step(warmup + s, random_tokens);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const double tokens_per_second = static_cast<double>(state.tokens_per_step()) / median;
  const ModelCost cost = state.model().cost(config.data.seq_len);
  const double peak = measure_cpu_peak_flops();
  const double mfu = tokens_per_second * cost.flops_per_token / peak;
  spdlog::info("bench: {:.2f}M params, {} tokens/step, {} threads | median step {:.3f}s | {:.0f} tok/s | "
               "{:.2f} GFLOP/s of {:.2f} peak | MFU {:.1f}%",
               cost.total_params / 1e6, state.tokens_per_step(), threads, median, tokens_per_second,
               tokens_per_second * cost.flops_per_token / 1e9, peak / 1e9, 100.0 * mfu);
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"framework", "l3c"},
                                        {"threads", threads},
                                        {"params", cost.total_params},
                                        {"tokens_per_step", state.tokens_per_step()},
                                        {"step_seconds", median},
                                        {"tokens_per_second", tokens_per_second},
                                        {"flops_per_token", cost.flops_per_token},
                                        {"peak_flops", peak},
                                        {"mfu", mfu}}
                             .dump());
  return 0;
}

}  // namespace l3c::cmd
