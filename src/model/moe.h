// One Mixture-of-Experts FFN (MODEL.md "Mixture-of-Experts FFN", Mixtral semantics), forward and
// backward:
//   r = x Wr^T;  p = softmax(r);  S = top_k(p);  w = p_S / sum p_S (or p_S);  y = sum_{e in S} w_e SwiGLU_e(x)
// plus an optional shared SwiGLU expert every token passes through, and the load-balancing and router
// z-loss terms added to the loss that is differentiated.
//
// Dropless dispatch on the group-by-key primitive of ops.h: the N * top_k (token, slot) pairs are sorted
// by expert id (a stable counting sort, so an expert's rows keep token order), each token's input row is
// gathered once per slot into that grouped order, every expert's block of rows runs its SwiGLU as grouped
// matrix products, and the outputs are combined back in token order with the routing weights.
//
// Parameters (Hugging Face Mixtral names) are registered expert-major per projection: all experts' w1,
// then all w3, then all w2, so that each projection of the layer is one contiguous (E, out, in) tensor
// of the flat buffer that the grouped products read directly.
//
// Precision: activations and weights in the model's dtype (bf16 on a GPU in mixed precision); the router's
// softmax, top-k weights, lse and the statistics in fp32 there (the op contract's statistics). The forward and
// backward never wait for the device: the expert offsets and the routing statistics stay where they are computed,
// and statistics() reads the few logged numbers back when the caller wants them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "kernels/arena.h"
#include "model/params.h"

namespace l3c {

// What one MoE layer's routing did on one micro-batch (for the metrics file).
struct MoeLayerStats {
  int64_t layer = 0;                // decoder layer index
  double load_balance_loss = 0.0;   // alpha * E * sum_e f_e P_e (alpha when perfectly balanced)
  double z_loss = 0.0;              // beta * mean(logsumexp(r)^2)
  double load_max = 0.0;            // largest fraction of tokens routed to one expert (balanced: top_k / E)
  double load_min = 0.0;            // smallest such fraction (0: an expert received no token)
  double router_entropy = 0.0;      // mean over tokens of the entropy of p, in nats (uniform: log E)
};

class MoeLayer {
 public:
  // The FFN of decoder layer `layer` of the config's model (which must select it in model.moe.layers).
  MoeLayer(const ModelConfig& model, int64_t layer);

  int64_t layer() const { return layer_; }
  // "model.layers.{i}.block_sparse_moe.<suffix>"
  std::string name(const std::string& suffix) const;
  // "model.layers.{i}.block_sparse_moe.experts.{e}.<projection>.weight", projection w1 | w2 | w3.
  std::string expert_name(int64_t expert, const char* projection) const;

  // Registers gate.weight, experts.{e}.w1 / w3 / w2 (projection-major, see above) and the shared
  // expert's gate_proj, up_proj, down_proj when shared_expert_hidden > 0.
  void register_params(ParamRegistry& registry) const;

  struct Weights {
    Tensor router;                     // (E, d)
    Tensor w1, w3, w2;                 // (E, F, d), (E, F, d), (E, d, F): gate, up, down of every expert
    Tensor shared_gate, shared_up, shared_down;  // (Fs, d), (Fs, d), (d, Fs); empty without a shared expert
  };
  Weights weights(const FlatBuffer& buffer, const ParamRegistry& registry) const;

  // Everything the backward needs. M = N * top_k routed rows, in grouped (expert) order.
  struct Activations {
    Tensor logits;                     // (N, E) the router's product, in the model's dtype
    Tensor probs;                      // (N, E) softmax(logits), a statistic (f32 in a bf16 model)
    Tensor lse;                        // (N) logsumexp(logits), a statistic
    Tensor experts;                    // (N, top_k) i32: the chosen experts, by descending probability
    Tensor weights;                    // (N, top_k): their combine weights, a statistic
    Tensor order;                      // (M) i32: the pairs sorted by expert
    Tensor expert_offsets;             // (E + 1) i32: expert e's rows are [expert_offsets[e], expert_offsets[e + 1])
    Tensor token_of_row, row_of_pair;  // (M) i32 (ops::moe_pair_indices)
    Tensor x_rows;                     // (M, d) the input row of each pair
    Tensor gate, up, act;              // (M, F)
    Tensor y_rows;                     // (M, d) each pair's expert output, before weighting
    Tensor shared_gate, shared_up, shared_act;  // (N, Fs) when there is a shared expert
    Tensor statistics;                 // (ops::kMoeStatistics) the routing statistics of the forward, a statistic
  };
  // The first form allocates the routing statistics too; the second has the forward write them to `statistics`
  // ((ops::kMoeStatistics) in the statistics dtype: Llama gives every MoE layer a row of one tensor, read back with
  // one copy).
  Activations allocate_activations(Arena& arena, int64_t N, DType dtype) const;
  Activations allocate_activations(Arena& arena, int64_t N, DType dtype, Tensor statistics) const;

  // Backward temporaries; one set serves every MoE layer of the model (same sizes).
  struct Scratch {
    Tensor dy_rows, dx_rows;           // (M, d)
    Tensor dact, dgate, dup;           // (M, F)
    Tensor dweights;                   // (N, top_k) a statistic
    Tensor dlogits;                    // (N, E) in the model's dtype
    Tensor probs_bias;                 // (E) the load-balancing term on d loss / d probs, a statistic
    Tensor dshared_act, dshared_gate, dshared_up;  // (N, Fs)
  };
  Scratch allocate_scratch(Arena& arena, int64_t N, DType dtype) const;

  // x (N, d) is the FFN input (the post-attention RMSNorm's output); out (N, d) += the layer's output. Writes
  // the routing statistics of this micro-batch to a.statistics, where they stay (on the device) until read.
  void forward(const Weights& w, Activations& a, Tensor x, Tensor out) const;
  // The routing statistics and auxiliary losses of the last forward into a: from the ops::kMoeStatistics values
  // of a.statistics read to the host (one copy), or from such values already read.
  MoeLayerStats statistics(const Activations& a) const;
  MoeLayerStats statistics(const double* values) const;
  // The values of routing statistics (f32 or f64, of one layer or of several), read to the host in one copy.
  static std::vector<double> read_statistics(const Tensor& statistics);
  // x (N, d) is the forward's input, dout (N, d) = d loss / d out; overwrites dx (N, d) with
  // d loss / d x and accumulates the parameter gradients into g. The auxiliary losses enter with weight aux_scale (the same factor the
  // cross-entropy's per-token sum is scaled by, times N: each micro-batch contributes its mean).
  void backward(const Weights& w, const Weights& g, const Activations& a, Scratch& s, Tensor x, Tensor dout,
                Tensor dx, double aux_scale) const;

 private:
  int64_t layer_;
  int64_t d_, E_, top_k_, F_, shared_F_;
  bool normalize_;
  double aux_loss_, z_loss_, init_std_, out_std_;
};

}  // namespace l3c
