// The Llama decoder of MODEL.md: embedding, n_layers x (RMSNorm -> causal GQA attention with RoPE,
// RMSNorm -> SwiGLU), final RMSNorm, output projection (tied to the embedding or not), cross-entropy.
// Forward and backward are explicit; every activation the backward needs lives in the step's arena.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/config.h"
#include "model/params.h"

namespace l3c {

// Parameter and FLOP counts of a model, for `inspect`, `bench` and the MFU in the training log.
struct ModelCost {
  int64_t total_params = 0;
  std::vector<std::pair<std::string, int64_t>> params_by_group;  // in registry order of first appearance
  int64_t matmul_params = 0;        // parameters that take part in a matrix product per token
  double flops_per_token = 0.0;     // training (forward + backward): 6 * matmul_params + attention
};

class Llama {
 public:
  explicit Llama(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }
  const ParamRegistry& registry() const { return registry_; }

  // Bytes of activation arena one micro-batch of B x T needs (with the backward's scratch when
  // training), measured by running the same allocation sequence the step runs.
  size_t activation_bytes(int64_t B, int64_t T, DType dtype, bool training) const;

  // One micro-batch. tokens and targets (B, T) i32. Returns the mean cross-entropy over the B*T
  // positions. When grads is given, also runs the backward of (grad_scale * sum of per-position
  // losses) and accumulates into grads.
  double forward_backward(const FlatBuffer& params, FlatBuffer* grads, Tensor tokens, Tensor targets,
                          double grad_scale, Arena& arena) const;

  // Logits (B*T, V) for every position: for generation and reference tests.
  void forward_logits(const FlatBuffer& params, Tensor tokens, Tensor logits, Arena& arena) const;

  // Parameter counts by component and training FLOPs per token at sequence length seq_len.
  ModelCost cost(int64_t seq_len) const;

 private:
  struct LayerWeights {
    Tensor input_norm, wq, wk, wv, wo, post_norm, w_gate, w_up, w_down;
  };
  struct Weights {
    Tensor embed, final_norm, lm_head;  // lm_head is the embedding when tied
    std::vector<LayerWeights> layers;
  };
  struct LayerActivations {
    Tensor resid_in, ln1, rstd1, q, k, v, att, lse, resid_mid, ln2, rstd2, gate, up, act;
  };
  struct Activations {
    std::vector<LayerActivations> layers;
    Tensor resid_out, lnf, rstdf, losses;
  };
  struct Scratch {
    Tensor dresid, dln, datt, dq, dk, dv, dact, dgate, dup;
  };

  Weights weights(const FlatBuffer& buffer) const;
  Activations allocate_activations(Arena& arena, int64_t B, int64_t T, DType dtype) const;
  Scratch allocate_scratch(Arena& arena, int64_t B, int64_t T, DType dtype) const;
  void forward_trunk(const Weights& w, Activations& a, Tensor tokens, int64_t B, int64_t T) const;
  void backward_trunk(const Weights& w, const Weights& g, Activations& a, Scratch& s, Tensor tokens,
                      int64_t B, int64_t T) const;

  ModelConfig config_;
  ParamRegistry registry_;
};

}  // namespace l3c
