// The Llama decoder of MODEL.md: embedding, n_layers x (RMSNorm -> causal GQA attention with RoPE,
// RMSNorm -> SwiGLU FFN, or a Mixture-of-Experts FFN in the layers model.moe selects, src/model/moe.h),
// each optionally followed by a Large Lookup Layer (model.l3, src/model/l3.h), final RMSNorm, output
// projection (tied to the embedding or not), cross-entropy (plus the MoE auxiliary losses).
// Forward and backward are explicit; every activation the backward needs lives in the step's arena.
//
// L3 parameters are registered after all dense ones, so a dense model and the same model with L3
// layers initialise their shared parameters identically (init is keyed by parameter index). An L3
// layer's allocation is model state but not a parameter: it lives here, outside the flat buffers (the
// optimizer never sees it), is set once before the first forward, and is saved with the weights.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "kernels/arena.h"
#include "model/l3.h"
#include "model/moe.h"
#include "model/params.h"

namespace l3c {

// Parameter and FLOP counts of a model, for `inspect`, `bench` and the MFU in the training log.
struct ModelCost {
  int64_t total_params = 0;
  // Parameters one token uses: everything but the L3 tables and the MoE experts, plus at most k rows of
  // each table and top_k experts of each MoE layer.
  int64_t active_params = 0;
  std::vector<std::pair<std::string, int64_t>> params_by_group;  // in registry order of first appearance
  int64_t matmul_params = 0;        // parameters that take part in a matrix product per token (L3: k rows)
  double flops_per_token = 0.0;     // training (forward + backward): 6 * matmul_params + attention
};

// The loss of one micro-batch, by part.
struct LossReport {
  double cross_entropy = 0.0;        // mean over the micro-batch's positions (perplexity uses this alone)
  double aux_loss = 0.0;             // MoE load-balancing + z-loss terms, summed over MoE layers
  std::vector<MoeLayerStats> moe;    // per MoE layer, in layer order

  double total() const { return cross_entropy + aux_loss; }  // what the backward differentiates
};

// Where a training step sums what its micro-batches report, on the model's device (f64), so that the host reads
// them once per step instead of once per micro-batch: loss (1), the mean cross-entropies (ops::add_mean: the bits
// of the host's sum); moe_statistics (MoE layers * ops::kMoeStatistics, or empty without MoE layers), each MoE
// layer's routing statistics (ops::moe_routing_stats), to be turned into a report by Llama::moe_report.
struct StepSums {
  Tensor loss;
  Tensor moe_statistics;
};

// Activations recomputed in the backward instead of kept for it (train.recompute): the SwiGLU product and/or the
// attention output of every layer live in one buffer shared by all layers, and the backward recomputes a layer's
// from what it keeps (gate and up; q, k, v) just before using it.
struct Recompute {
  bool swiglu = false;
  bool attention = false;
  static Recompute from(RecomputeChoice choice) {
    return {choice == RecomputeChoice::Swiglu || choice == RecomputeChoice::All,
            choice == RecomputeChoice::Attention || choice == RecomputeChoice::All};
  }
};

class Llama {
 public:
  explicit Llama(const ModelConfig& config);

  // Where the model computes: the parameters, gradients and arena passed to it live there. On CUDA the L3
  // allocations are copied to the GPU (now, and whenever one is set).
  void set_device(Device device);
  Device device() const { return device_; }
  void set_recompute(Recompute recompute) { recompute_ = recompute; }
  Recompute recompute() const { return recompute_; }

  const ModelConfig& config() const { return config_; }
  const ParamRegistry& registry() const { return registry_; }

  // L3 layers (in model.l3.after_layers order) and their allocations. set_l3_allocation validates the
  // counts against the config (UserError naming `what`: V entries, each in [1, k], summing to v).
  const std::vector<L3Layer>& l3_layers() const { return l3_layers_; }
  void set_l3_allocation(int64_t layer, std::vector<int32_t> counts, const std::string& what);
  void set_l3_allocations(const std::vector<int32_t>& counts, const std::string& what);  // every layer
  const std::vector<int32_t>& l3_allocation(int64_t layer) const { return l3_rows_.at(layer).counts; }
  bool l3_allocations_set() const;

  // Bytes of activation arena one micro-batch of B x T needs (with the backward's scratch when
  // training), measured by running the same allocation sequence the step runs (with the model's recompute
  // setting; statistics are f32 when dtype is bf16).
  size_t activation_bytes(int64_t B, int64_t T, DType dtype, bool training) const;

  // One micro-batch. tokens and targets (B, T) i32, on the model's device like params, grads and the arena.
  // Returns the mean cross-entropy over the B*T positions and the auxiliary losses. When grads is given,
  // also runs the backward of grad_scale * (sum of per-position losses + B*T * aux_loss), i.e.
  // grad_scale * B*T * total(), and accumulates into grads. With sums, the micro-batch's mean cross-entropy and MoE
  // statistics are added to them where the model computes instead of being read back, and the report is empty: a
  // training step reads the sums of its micro-batches once (on a GPU the host then does not wait for each one).
  LossReport forward_backward(const FlatBuffer& params, FlatBuffer* grads, Tensor tokens, Tensor targets,
                              double grad_scale, Arena& arena, const StepSums* sums = nullptr) const;
  // The MoE part of a report (per layer, and the auxiliary loss) from routing statistics read back from the device
  // (moe_layers().size() * ops::kMoeStatistics values, as StepSums::moe_statistics holds them).
  void moe_report(const double* statistics, LossReport& report) const;

  // Logits (B*T, V) for every position: for generation and reference tests.
  void forward_logits(const FlatBuffer& params, Tensor tokens, Tensor logits, Arena& arena) const;

  // ---- inference (src/eval): a forward pass that keeps no state for a backward ---------------------------------
  // Where the residual stream is read (the logit lens): after decoder layer `layer` (its FFN block), and, when an
  // L3 layer follows it, after that L3 layer (after_l3).
  using ResidualObserver = std::function<void(int64_t layer, bool after_l3, Tensor resid)>;
  // Bytes of arena forward_hidden needs for B x T tokens: the activations of one layer, shared by all of them.
  size_t inference_bytes(int64_t B, int64_t T, DType dtype) const;
  // hidden (B*T, d) = the final norm's output for tokens (B, T), on the model's device; observe, when set, sees the
  // residual stream (B*T, d) at every point named above, in order. Position t of a row depends on tokens 0..t only.
  void forward_hidden(const FlatBuffer& params, Tensor tokens, Tensor hidden, Arena& arena,
                      const ResidualObserver& observe = {}) const;
  // logits (N, V) of the rows hidden (N, d) of forward_hidden (the output projection alone).
  void output_logits(const FlatBuffer& params, Tensor hidden, Tensor logits) const;
  // logits (N, V) the final norm and output projection give on residual-stream rows resid (N, d): the logit
  // lens. normed (N, d) and rstd (N) are scratch.
  void lens_logits(const FlatBuffer& params, Tensor resid, Tensor normed, Tensor rstd, Tensor logits) const;

  const std::vector<MoeLayer>& moe_layers() const { return moe_layers_; }

  // Parameter counts by component and training FLOPs per token at sequence length seq_len.
  ModelCost cost(int64_t seq_len) const;

  // The weights of decoder layer i: views into `buffer`, laid out by `registry` (the model's own, or another that
  // holds the same names, as inference's trunk does).
  struct LayerWeights {
    Tensor input_norm, wq, wk, wv, wo, post_norm, w_gate, w_up, w_down;  // FFN weights empty in MoE layers
  };
  LayerWeights layer_weights(const FlatBuffer& buffer, const ParamRegistry& registry, int64_t i) const;

 private:
  struct Weights {
    Tensor embed, final_norm, lm_head;  // lm_head is the embedding when tied
    std::vector<LayerWeights> layers;
    std::vector<L3Layer::Weights> l3;
    std::vector<MoeLayer::Weights> moe;
  };
  struct LayerActivations {
    Tensor resid_in, ln1, rstd1, q, k, v, att, lse, resid_mid, ln2, rstd2, gate, up, act;  // gate, up, act: dense FFN
  };
  struct Activations {
    std::vector<LayerActivations> layers;
    Tensor act_shared, att_shared;             // with recomputation: the one buffer every layer's act / att uses
    Tensor resid_out, lnf, rstdf, losses;
    L3Routing routing;                         // when the model has L3 layers
    std::vector<L3Layer::Activations> l3;
    std::vector<MoeLayer::Activations> moe;
    Tensor moe_statistics;                     // (MoE layers, ops::kMoeStatistics): each layer's row, read in one copy
  };
  struct Scratch {
    Tensor dresid, dln, datt, dq, dk, dv, dact, dgate, dup;
    L3Layer::Scratch l3;                       // shared by the L3 layers
    MoeLayer::Scratch moe;                     // shared by the MoE layers
  };

  Weights weights(const FlatBuffer& buffer) const;
  // inference: one layer's buffers serve every layer (the residual stream alternates between two).
  Activations allocate_activations(Arena& arena, int64_t B, int64_t T, DType dtype, bool inference = false) const;
  Scratch allocate_scratch(Arena& arena, int64_t B, int64_t T, DType dtype) const;
  // Runs everything up to the final norm (each MoE layer leaves its routing statistics in a.moe_statistics).
  void forward_trunk(const Weights& w, Activations& a, Tensor tokens, int64_t B, int64_t T,
                     const ResidualObserver& observe = {}) const;
  // aux_scale: the weight of the MoE auxiliary losses in the differentiated objective.
  void backward_trunk(const Weights& w, const Weights& g, Activations& a, Scratch& s, Tensor tokens,
                      int64_t B, int64_t T, double aux_scale) const;

  // The L3 layer after decoder layer i, or nullptr.
  const L3Layer* l3_after(int64_t i) const;
  // The MoE FFN of decoder layer i (its index into moe_layers_), or -1 for a dense FFN.
  int64_t moe_index(int64_t i) const { return moe_index_[i]; }

  ModelConfig config_;
  Device device_ = Device::CPU;
  Recompute recompute_;
  ParamRegistry registry_;
  std::vector<L3Layer> l3_layers_;
  std::vector<L3Rows> l3_rows_;                // per L3 layer; empty until set
  std::vector<MoeLayer> moe_layers_;           // in decoder layer order
  std::vector<int64_t> moe_index_;             // (n_layers): index into moe_layers_, or -1
};

}  // namespace l3c
