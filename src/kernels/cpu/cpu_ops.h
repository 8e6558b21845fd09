// CPU implementations of the op contract (kernels/ops.h): Eigen for matrix products, OpenMP for
// row-wise work. ops.cpp checks shapes and devices and then calls these; they assume valid input.
// Every floating op runs in float or double, picked from the tensors' dtype (F32 / F64).
// Reductions never depend on scheduling: per-row work is independent, and sums that cross rows use
// static partitions whose partials are combined in a fixed order (or a fixed chunking independent of
// the thread count), so a result is bit-identical from run to run at a fixed thread count.
#pragma once
#include <cstdint>
#include <utility>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace l3c::ops::cpu {

// Calls fn(float{}) or fn(double{}) for an F32 / F64 dtype; any other dtype is an internal error.
[[noreturn]] void unsupported_dtype(const char* op, DType dtype);
template <typename Fn>
decltype(auto) dispatch_float(DType dtype, const char* op, Fn&& fn) {
  if (dtype == DType::F32) return std::forward<Fn>(fn)(float{});
  if (dtype == DType::F64) return std::forward<Fn>(fn)(double{});
  unsupported_dtype(op, dtype);
}

// ---- elementwise (elementwise.cpp) ----------------------------------------------------------------
void fill_zero(Tensor t);                 // any dtype
void copy(Tensor dst, Tensor src);        // any dtype, same number of elements
void add_inplace(Tensor y, Tensor x);
void scale_inplace(Tensor y, double s);
// Sum of squares accumulated in double over fixed chunks whose partials are added in order: the
// result does not depend on the thread count.
double sum_squares(Tensor x);
// sum[0] (f64) += (values added in index order in double) / N.
void add_mean(Tensor sum, Tensor values);
void add_to_sums(Tensor sums, Tensor values);

// ---- AdamW and dtype conversion (optimizer.cpp) ---------------------------------------------------------
// One dtype, f32 or f64; gate empty or host f64 (2) (see ops::adamw_update).
void adamw_update(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor constants, Tensor gate);
void update_gate(Tensor gate, Tensor loss_sum, Tensor grad_squares, double max_norm);
void convert(Tensor dst, Tensor src);  // between f32, f64 and bf16 (round to nearest even)

// ---- embedding (embedding.cpp) ------------------------------------------------------------------------
void embedding_forward(Tensor out, Tensor table, Tensor tokens);
// Parallel over column ranges, serial over positions: every element sums in position order.
void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens);

// ---- RMSNorm (rmsnorm.cpp) ------------------------------------------------------------------------
void rmsnorm_forward(Tensor out, Tensor rstd, Tensor x, Tensor weight, double eps);
void rmsnorm_backward(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd);

// ---- matrix products (matmul.cpp) -----------------------------------------------------------------
void matmul_forward(Tensor out, Tensor x, Tensor w, bool accumulate);
void matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, bool accumulate_dx);

// ---- rotary position embedding (rope.cpp) ---------------------------------------------------------
void rope_forward(Tensor x, double theta);
void rope_backward(Tensor dx, double theta);

// ---- causal grouped-query attention (attention.cpp) -----------------------------------------------
// Flash-style tiling: a tile of q_block query rows of one head meets k_block keys at a time (two
// small GEMMs per tile, an online softmax per row in between); no T x T matrix exists. 0 picks the
// default tile sizes; tests pass small ones to exercise the tile edges and the causal mask.
struct AttentionTiles {
  int64_t q_block = 0;
  int64_t k_block = 0;
};
void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, AttentionTiles tiles = {});
// Parallel over (batch, kv head): each task owns its dk/dv rows and the dq rows of its query heads.
void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                        Tensor out, Tensor lse, AttentionTiles tiles = {});

// ---- inference (rope.cpp, attention_cached.cpp) ---------------------------------------------------
void rope_forward_at(Tensor x, double theta, Tensor start);
void kv_cache_write(Tensor cache, Tensor x, Tensor slots, Tensor start);
// Parallel over (row, query head); each query row walks its keys in tiles with an online softmax.
void attention_cached(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor start);

// ---- SwiGLU (swiglu.cpp) --------------------------------------------------------------------------
void swiglu_forward(Tensor out, Tensor gate, Tensor up);
void swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up);

// ---- fused classifier (classifier.cpp) ------------------------------------------------------------
// block_rows: rows of logits computed at a time (0: about 32 MiB of logits, between 64 and 256 rows).
// The backward runs when dx or dW is non-empty; an empty one is skipped.
void classifier_forward_backward(Tensor losses, Tensor dx, Tensor dW, Tensor x, Tensor W, Tensor targets,
                                 double grad_scale, int64_t block_rows = 0);

// ---- concatenation along the last dimension (grouping.cpp) ----------------------------------------
void concat_last_dim(Tensor out, Tensor x_a, Tensor x_b);
void split_last_dim(Tensor dx_a, Tensor dx_b, Tensor dout, bool accumulate_a, bool accumulate_b);

// ---- group by key (grouping.cpp) ------------------------------------------------------------------
// The counting sort is serial (O(N + K)); gather and scatter are parallel over rows, which never
// collide because scatter's index is injective.
void group_by_key(Tensor order, Tensor offsets, Tensor keys);
void gather_rows(Tensor out, Tensor x, Tensor index);
void scatter_rows(Tensor out, Tensor x, Tensor index, bool accumulate);

// ---- L3 lookup attention (l3.cpp) -----------------------------------------------------------------
// Parallel over groups (tokens), largest first; every group writes its own rows of out / dx and its
// own rows of the table gradients, so the result does not depend on scheduling.
void l3_lookup_forward(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets);
void l3_lookup_backward(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v,
                        Tensor probs, Tensor group_offsets, Tensor row_offsets);

// ---- Mixture-of-Experts (moe.cpp) ----------------------------------------------------------------
// Router and combine are parallel over tokens (each token's row written by one thread, slots summed in
// order); the grouped products run one Eigen GEMM per expert, in expert order.
void moe_router_forward(Tensor probs, Tensor lse, Tensor experts, Tensor weights, Tensor logits, bool normalize);
void moe_router_backward(Tensor dlogits, Tensor dweights, Tensor probs, Tensor lse, Tensor experts, Tensor weights,
                         Tensor probs_bias, double z_scale, bool normalize);
void moe_routing_stats(Tensor stats, Tensor probs, Tensor lse, Tensor offsets);
void moe_balance_bias(Tensor probs_bias, Tensor offsets, double scale);
void moe_pair_indices(Tensor token_of_row, Tensor row_of_pair, Tensor order, int64_t top_k);
void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets);
void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                             bool accumulate_dx);
void moe_combine_forward(Tensor out, Tensor rows, Tensor weights, Tensor row_of_pair, bool accumulate);
void moe_combine_backward(Tensor drows, Tensor dweights, Tensor dout, Tensor rows, Tensor weights,
                          Tensor row_of_pair);

}  // namespace l3c::ops::cpu
