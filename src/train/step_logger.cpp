// The step log: console lines and metrics.jsonl records.
#include "train/step_logger.h"

#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "train/perf.h"

namespace l3c {

namespace {

nlohmann::json moe_stats_json(const std::vector<MoeLayerStats>& stats) {
  nlohmann::json layers = nlohmann::json::array();
  for (const MoeLayerStats& m : stats)
    layers.push_back({{"layer", m.layer}, {"load_balance_loss", m.load_balance_loss}, {"z_loss", m.z_loss},
                      {"load_max", m.load_max}, {"load_min", m.load_min}, {"router_entropy", m.router_entropy}});
  return layers;
}

}  // namespace

StepLogger::StepLogger(const Config& config, RunFolder& folder, int64_t start_step, int64_t tokens_per_step,
                       double peak_flops, double flops_per_token)
    : config_(config),
      folder_(folder),
      start_step_(start_step),
      tokens_per_step_(tokens_per_step),
      peak_flops_(peak_flops),
      flops_per_token_(flops_per_token) {}

double StepLogger::mfu(double tokens_per_second) const {
  return peak_flops_ > 0 ? tokens_per_second * flops_per_token_ / peak_flops_ : 0.0;
}

double StepLogger::average_tokens_per_second() const {
  return timed_seconds_ > 0 ? static_cast<double>(timed_tokens_) / timed_seconds_ : 0.0;
}

void StepLogger::step(int64_t step, const StepResult& r, double seconds, const TrainerProgress& progress) {
  const int64_t steps = config_.train.steps;
  const double tokens_per_second = static_cast<double>(tokens_per_step_) / seconds;
  if (step > start_step_ || steps - start_step_ == 1) {
    timed_seconds_ += seconds;
    timed_tokens_ += tokens_per_step_;
    ++timed_steps_;
  }
  const double average_step = timed_steps_ > 0 ? timed_seconds_ / static_cast<double>(timed_steps_) : seconds;
  const double eta = average_step * static_cast<double>(steps - step - 1);
  nlohmann::json record = {{"step", step + 1}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                           {"tokens", progress.tokens_seen}, {"tokens_per_second", tokens_per_second},
                           {"mfu", mfu(tokens_per_second)}, {"step_seconds", seconds}};
  if (r.reduce.bytes > 0) {
    record["comm_bytes"] = r.reduce.bytes;
    record["comm_seconds"] = r.reduce.seconds;
    if (r.reduce.rows_total > 0) {
      record["comm_table_bytes"] = r.reduce.table_bytes;
      record["comm_table_full_bytes"] = r.reduce.table_full_bytes;
      record["table_rows_reduced"] = r.reduce.rows_reduced;
      record["table_rows"] = r.reduce.rows_total;
    }
  }
  if (!r.moe.empty()) {
    record["aux_loss"] = r.aux_loss;
    record["total_loss"] = r.loss + r.aux_loss;
    record["moe"] = moe_stats_json(r.moe);
  }
  if (r.skipped) {
    record["skipped"] = true;
    record["skipped_steps"] = progress.skipped_steps;
    spdlog::warn("step {:>6}/{} | non-finite loss ({}) or gradient norm ({}): step skipped, weights unchanged "
                 "({} skipped so far)", step + 1, steps, r.loss + r.aux_loss, r.grad_norm, progress.skipped_steps);
  } else {
    // With MoE layers the loss shown is the total that is optimised, then its cross-entropy part.
    const std::string loss_text = r.moe.empty() ? fmt::format("loss {:.4f}", r.loss)
                                                : fmt::format("loss {:.4f} (ce {:.4f})", r.loss + r.aux_loss, r.loss);
    const std::string comm_text =
        r.reduce.bytes > 0 ? fmt::format(" | comm {:.2f} MB in {:.0f} ms", r.reduce.bytes / 1e6, r.reduce.seconds * 1e3)
                           : "";
    spdlog::info("step {:>6}/{} | {} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s | MFU {:.1f}%{} | ETA {}", step + 1,
                 steps, loss_text, r.lr, r.grad_norm, tokens_per_second, 100.0 * mfu(tokens_per_second), comm_text,
                 format_duration(eta));
  }
  folder_.write_metrics(record);
}

void StepLogger::validation(int64_t step, double loss, double seconds, const nlohmann::ordered_json& sections) {
  nlohmann::json record = {{"step", step}};
  if (!std::isnan(loss)) {
    spdlog::info("step {:>6} | val loss {:.4f} | val ppl {:.2f} | {:.1f}s", step, loss, std::exp(loss), seconds);
    record["val_loss"] = loss;
    record["val_ppl"] = std::exp(loss);
  }
  for (const auto& [key, value] : sections.items()) record[key] = value;
  folder_.write_metrics(record);
}

}  // namespace l3c
