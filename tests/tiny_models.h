// The tiny models of the model-level tests (test_model, test_l3, test_moe): small enough for finite-difference
// gradient checks in double precision, and weights drawn so that every parameter matters.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/config.h"
#include "kernels/arena.h"
#include "model/llama.h"
#include "model/params.h"
#include "test_util.h"

namespace l3c::test {

// A dense Llama of these sizes, every other field at its default.
inline ModelConfig model_of_sizes(int64_t vocab_size, int64_t d_model, int64_t n_layers, int64_t n_heads,
                                  int64_t n_kv_heads, int64_t ffn_hidden) {
  return {.vocab_size = vocab_size, .d_model = d_model, .n_layers = n_layers, .n_heads = n_heads,
          .n_kv_heads = n_kv_heads, .ffn_hidden = ffn_hidden, .l3 = {}, .moe = {}};
}

// A Llama of 13 tokens, d_model 8, `layers` layers of 2 query heads sharing 1 kv head and a 12-unit FFN;
// init_std 0.3, large enough that every gradient is far from zero.
inline ModelConfig tiny_model_config(int64_t layers) {
  ModelConfig m = model_of_sizes(13, 8, layers, 2, 1, 12);
  m.init_std = 0.3;
  return m;
}

// One layer of d_model 8 with 2 heads, 2 kv heads and an 8-unit FFN over `vocab_size` tokens: the model around
// the one L3 or MoE layer that a layer test builds.
inline ModelConfig one_layer_config(int64_t vocab_size) { return model_of_sizes(vocab_size, 8, 1, 2, 2, 8); }

// init_params(seed), then every norm gain (InitKind::Ones) i set to 1 + amplitude sin(frequency i + offset),
// away from 1, so that the gains matter too.
inline void init_params_with_gains(const ParamRegistry& registry, FlatBuffer& params, uint64_t seed,
                                   double amplitude, double frequency) {
  init_params(registry, params, seed);
  for (const ParamInfo& p : registry.params())
    if (p.init == InitKind::Ones) {
      const Tensor gain = params.view(p);
      for (int64_t i = 0; i < p.numel; ++i) set_value(gain, i, 1.0 + amplitude * std::sin(frequency * i + p.offset));
    }
}

// The f64 gradient check of a whole model: weights from init_params_with_gains (seed 7, gains 1 + 0.2 sin(1.7 i)),
// tokens and targets (2, 5) below 13 (seeds 11 and 12), and the summed cross-entropy as the objective (the one whose
// gradient grad_scale 1 gives).
struct ModelGradCheck {
  static constexpr int64_t B = 2, T = 5;
  const Llama& model;
  FlatBuffer params, grads;
  TestTensor tokens{DType::I32, {B, T}}, targets{DType::I32, {B, T}};
  Arena arena;

  explicit ModelGradCheck(const Llama& checked)
      : model(checked), params(checked.registry().total(), DType::F64), grads(checked.registry().total(), DType::F64),
        arena(checked.activation_bytes(B, T, DType::F64, true), "test") {
    init_params_with_gains(model.registry(), params, 7, 0.2, 1.7);
    random_tokens(tokens, 13, 11);
    random_tokens(targets, 13, 12);
  }
  // The objective: the summed cross-entropy.
  double loss_sum() {
    arena.reset();
    return model.forward_backward(params, nullptr, tokens, targets, 0.0, arena).cross_entropy * B * T;
  }
  // The analytic gradients of loss_sum() into grads; returns the mean cross-entropy.
  double backward() {
    arena.reset();
    return model.forward_backward(params, &grads, tokens, targets, 1.0, arena).cross_entropy;
  }
  std::vector<double> numeric(const ParamInfo& p) {
    return numerical_gradient(params.view(p), [&] { return loss_sum(); }, 1e-5);
  }
  std::vector<double> analytic(const ParamInfo& p) const { return to_double_vector(grads.view(p)); }
};

}  // namespace l3c::test
