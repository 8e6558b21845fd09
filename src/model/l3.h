// One Large Lookup Layer (MODEL.md "Large Lookup Layer (L3)"), forward and backward:
//   x = RMSNorm(h; g_in);  a = softmax(K_u x);  e = V_u^T a;  z = RMSNorm(W_up e; g_out);  h' = W_mix [z ; h]
// (h' = h + W_mix [z ; h] with `residual`), where u is the token id at the position and K_u, V_u are the
// rows of W_K, W_V that token u owns under the layer's allocation.
//
// The whole micro-batch is computed in grouped order: positions are sorted by token id once per step
// (L3Routing, the group-by-key primitive of ops.h), the layer gathers its input rows into that order,
// every token's block of rows multiplies its own K_u, V_u (ops::l3_lookup_*, a grouped product), the
// dense parts (norms, W_up, W_mix) run on the grouped rows as they are (row order does not matter to
// them), and one scatter puts the output back in position order. Activations are O(N * (d + k + d_emb
// + d_up)), never O(N * v); table gradients are written only in the rows of tokens present in the batch.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "kernels/arena.h"
#include "model/params.h"

namespace l3c {

// The positions of a micro-batch grouped by token id: computed once per step, shared by every L3 layer.
struct L3Routing {
  Tensor order;          // (N) i32: positions sorted by token id, stable
  Tensor group_offsets;  // (V + 1) i32: token u's positions are order[group_offsets[u] .. group_offsets[u + 1])
};

// An allocation in the form the layer uses: rows per token and their offsets into the tables.
struct L3Rows {
  std::vector<int32_t> counts;       // (V) n_u
  std::vector<int32_t> row_offsets;  // (V + 1) o_u; row_offsets[V] = v
  std::shared_ptr<FlatBuffer> device_offsets;  // row_offsets in GPU memory, once uploaded

  static L3Rows from_counts(std::vector<int32_t> counts);
  bool empty() const { return counts.empty(); }
  // row_offsets as an i32 (V + 1) tensor on `device` (the GPU copy must have been uploaded).
  Tensor offsets_tensor(Device device = Device::CPU) const;
  void upload(Device device);        // makes the copy offsets_tensor(device) returns
};

class L3Layer {
 public:
  // Layer j of the config's model.l3 (placed after decoder layer model.l3.after_layers[j]).
  L3Layer(const ModelConfig& model, int64_t index);

  int64_t index() const { return index_; }
  int64_t after_layer() const { return after_layer_; }
  // "model.l3.{j}.<suffix>"
  std::string name(const std::string& suffix) const;
  std::string alloc_name() const { return name("alloc"); }

  // Registers norm_in.weight, w_k, w_v (unless tied), w_up.weight, norm_out.weight, w_mix.weight.
  void register_params(ParamRegistry& registry) const;

  struct Weights {
    Tensor norm_in, w_k, w_v, w_up, norm_out, w_mix;  // w_v is w_k when tie_kv
  };
  Weights weights(const FlatBuffer& buffer, const ParamRegistry& registry) const;

  // Everything the backward needs, in grouped order (row i is position order[i]).
  struct Activations {
    Tensor h;         // (N, d) the input
    Tensor x;         // (N, d) RMSNorm(h; g_in)
    Tensor rstd_in;   // (N)
    Tensor probs;     // (N, k) softmax over the token's rows, 0 past n_u
    Tensor e;         // (N, d_emb) V_u^T a
    Tensor u;         // (N, d_up) W_up e
    Tensor z;         // (N, d_up) RMSNorm(u; g_out)
    Tensor rstd_out;  // (N)
    Tensor zh;        // (N, d_up + d) [z ; h]
    Tensor out;       // (N, d) h' before the scatter back to position order
  };
  // Statistics (rstd, probs) are f32 when dtype is bf16 (ops.h), else dtype.
  Activations allocate_activations(Arena& arena, int64_t N, DType dtype) const;

  // Backward temporaries; one set serves every L3 layer of the model (same sizes).
  struct Scratch {
    Tensor dout, dzh, dz, du, de, dx, dh;
  };
  Scratch allocate_scratch(Arena& arena, int64_t N, DType dtype) const;

  // h (N, d) in position order is replaced by the layer's output h'.
  void forward(const Weights& w, Activations& a, Tensor h, const L3Routing& routing, const L3Rows& rows) const;
  // The same with the table rows' offsets given as an i32 tensor on h's device, one entry more than the groups of
  // routing.group_offsets: inference passes tables holding only the rows of a step's tokens (src/infer/).
  void forward(const Weights& w, Activations& a, Tensor h, const L3Routing& routing, Tensor row_offsets) const;
  // dh (N, d): d loss / d h' on entry, d loss / d h on exit. Accumulates the parameter gradients into g.
  void backward(const Weights& w, const Weights& g, const Activations& a, Scratch& s, Tensor dh,
                const L3Routing& routing, const L3Rows& rows) const;

 private:
  int64_t index_, after_layer_;
  int64_t d_, v_, k_, d_emb_, d_up_;
  bool tie_kv_, residual_, mix_identity_;
  double init_std_, eps_;
};

}  // namespace l3c
