// The step log of a training run: one console line and one metrics.jsonl record per step (loss, lr, gradient
// norm, throughput, MFU, ETA, MoE statistics, the bytes the gradient reduction moved) and per validation pass,
// and the throughput average the summary reports (the first step of a process is left out: it warms caches).
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

#include "train/run_folder.h"
#include "train/trainer.h"

namespace l3c {

class StepLogger {
 public:
  // peak_flops: the MFU denominator (0: MFU is reported as 0).
  StepLogger(const Config& config, RunFolder& folder, int64_t start_step, int64_t tokens_per_step, double peak_flops,
             double flops_per_token);

  // Logs step `step` (0-based) that took `seconds`; `progress` is after it (skipped steps counted there).
  void step(int64_t step, const StepResult& result, double seconds, const TrainerProgress& progress);
  // A validation pass after step `step`: the loss of data.val (NaN without it) and the sections eval.tasks and
  // eval.text gave ({"tasks": ..., "text": ...}; empty without them), in one metrics.jsonl record.
  void validation(int64_t step, double loss, double seconds, const nlohmann::ordered_json& sections = {});

  double mfu(double tokens_per_second) const;
  // Tokens per second over the timed steps (0 before any).
  double average_tokens_per_second() const;

 private:
  const Config& config_;
  RunFolder& folder_;
  int64_t start_step_, tokens_per_step_;
  double peak_flops_, flops_per_token_;
  double timed_seconds_ = 0.0;
  int64_t timed_tokens_ = 0, timed_steps_ = 0;
};

}  // namespace l3c
