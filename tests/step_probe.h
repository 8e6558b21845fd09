// One training step whose update is the gradient, for comparing the gradients of a device and precision against the
// CPU's through the whole trainer: AdamW with eps = 100 (far above every gradient element), lr = 1, no weight decay
// and no clipping makes the first update -g / (|g| + 100), -g / 100 to 1e-4, so comparing updates compares gradients.
// Only the parameters named in train.trainable move, so a test chooses which op's gradients it probes.
#pragma once
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/choice.h"
#include "core/config.h"
#include "kernels/ops.h"
#include "model/params.h"
#include "test_util.h"
#include "train/trainer.h"

namespace l3c::test {

struct StepProbe {
  double loss = 0.0;
  std::vector<double> update;  // after - before, over the whole flat buffer (f32 master weights)
  std::vector<ParamInfo> params;

  // The update of the parameter with this name (it must exist).
  std::vector<double> update_of(const std::string& name) const {
    const auto p = std::find_if(params.begin(), params.end(), [&](const ParamInfo& i) { return i.name == name; });
    REQUIRE(p != params.end());
    return std::vector<double>(update.begin() + p->offset, update.begin() + p->offset + p->numel);
  }
};

// A one-decoder-layer model of these sizes (the rest of the config at its defaults).
inline Config one_layer_model(int64_t vocab, int64_t d_model, int64_t n_heads, int64_t n_kv_heads, int64_t ffn_hidden) {
  Config c;
  c.model.vocab_size = vocab;
  c.model.d_model = d_model;
  c.model.n_layers = 1;
  c.model.n_heads = n_heads;
  c.model.n_kv_heads = n_kv_heads;
  c.model.ffn_hidden = ffn_hidden;
  return c;
}

// c's data and train sections for one step of one micro-batch of B x T tokens on device ("cpu", "cuda") in precision
// ("fp32", "bf16"), with the parameters under the trainable prefixes alone moving.
inline void set_step_probe(Config& c, int64_t B, int64_t T, const std::string& device, const std::string& precision,
                           std::vector<std::string> trainable) {
  c.data.train = "unused";
  c.data.seq_len = T;
  c.train.steps = 1;
  c.train.micro_batch = B;
  c.train.batch_tokens = B * T;
  c.train.lr = 1.0;
  c.train.min_lr = 1.0;
  c.train.schedule = Schedule::Constant;
  c.train.warmup_steps = 0;
  c.train.eps = 100.0;
  c.train.weight_decay = 0.0;
  c.train.grad_clip = 0.0;
  c.train.device = parse_choice<DeviceChoice>(device, "device");
  c.train.precision = parse_choice<Precision>(precision, "precision");
  c.train.trainable = std::move(trainable);
}

// A batch of random tokens and targets (B, T) i32 below vocab.
struct ProbeBatch {
  TestTensor tokens, targets;
  ProbeBatch(int64_t B, int64_t T, int64_t vocab, uint64_t seed)
      : tokens(DType::I32, {B, T}), targets(DType::I32, {B, T}) {
    random_tokens(tokens, vocab, seed);
    random_tokens(targets, vocab, seed + 1);
  }
};

// The step on this batch.
inline StepProbe run_step_probe(const Config& c, const ProbeBatch& batch) {
  const TestTensor &tokens = batch.tokens, &targets = batch.targets;
  TrainingState state(c);
  const std::vector<double> before = to_double_vector(state.host_params().all());
  const BatchSource same_batch = [&](int64_t, Tensor x, Tensor y) {
    ops::copy(x, tokens);
    ops::copy(y, targets);
  };
  StepProbe result;
  result.loss = state.step(0, same_batch).loss;
  const std::vector<double> after = to_double_vector(state.host_params().all());
  for (size_t i = 0; i < after.size(); ++i) result.update.push_back(after[i] - before[i]);
  result.params = state.model().registry().params();
  return result;
}

// Checks a step on a device and precision against the CPU's step on the same model and batch: the loss within 1%,
// and the update (gradient) of each named parameter within max_relative_error of the CPU's, which is not zero.
inline void check_tracks_cpu(const StepProbe& probe, const StepProbe& cpu, const std::vector<std::string>& names,
                             double max_relative_error) {
  CHECK(std::abs(probe.loss - cpu.loss) <= 0.01 * std::abs(cpu.loss));
  for (const std::string& name : names) {
    const std::vector<double> g = probe.update_of(name), c = cpu.update_of(name);
    INFO(name << ": update (gradient) relative error " << norm_relative_error(g, c));
    CHECK(norm2(c) > 0.0);
    CHECK(norm_relative_error(g, c) <= max_relative_error);
  }
}

}  // namespace l3c::test
