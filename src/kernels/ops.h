// The op contract: every numerical operation the model and optimizer use, forward and backward.
// Model code calls only these. Each op dispatches on its tensors' device to the CPU implementation
// (kernels/cpu, Eigen + OpenMP; f32 and f64, f64 for gradient checks) or the CUDA one (kernels/cuda).
//
// Conventions:
//  - All floating tensors of one call share a dtype. Token ids and targets are i32.
//  - Shapes are written (rows, cols) row-major; N = B*T positions flattened.
//  - "overwrites" writes the whole output; "accumulates" adds into it (+=). Parameter gradients always
//    accumulate (gradient accumulation over micro-batches); activation gradients say which they do.
//  - Results are deterministic for a fixed thread count: no reduction order depends on scheduling.
//  - CUDA computes in f32 or bf16 (f32 arithmetic); there, the statistics an op writes for its backward or
//    its caller (rstd, lse, losses, L3 probs) are f32 even when the call is bf16: fp32 norms, softmax, loss.
//  - All tensors of one call live on one device; ops::copy alone moves data between host and device.
#pragma once
#include <cmath>

#include "core/tensor.h"

namespace l3c::ops {

// The dtype of the statistics of a call in `dtype` (see above): f32 for a bf16 call, else the call's own.
inline DType statistics_dtype(DType dtype) { return dtype == DType::BF16 ? DType::F32 : dtype; }

// ---- elementwise ---------------------------------------------------------------------------------
void fill_zero(Tensor t);
void copy(Tensor dst, Tensor src);                   // dst = src (same size and dtype; also host <-> device)
void convert(Tensor dst, Tensor src);                // dst = src in dst's dtype (f32 <-> bf16 on CUDA)
void add_inplace(Tensor y, Tensor x);                // y += x (residual adds)
void scale_inplace(Tensor y, double s);              // y *= s
double sum_squares(Tensor x);                        // sum of x^2, accumulated in double
// The same sum of squares into out (1) f64, left where x lives: on a GPU nothing is read back (the trainer reads
// it with the loss, once per step).
void sum_squares_into(Tensor out, Tensor x);
// sum (1) f64 += the mean of values (N >= 1, f32 or f64): the values added in index order in double, the total
// divided by N (a micro-batch's mean loss, accumulated over micro-batches where it lives: on a GPU nothing is read
// back, and the bits are those of the same sum computed on the host).
void add_mean(Tensor sum, Tensor values);
// sums (n) f64 += values (n, f32, or f64 on the CPU), element by element in double, where they live (a step's MoE
// routing statistics summed over its micro-batches, read back once).
void add_to_sums(Tensor sums, Tensor values);

// ---- AdamW over flat buffers (MODEL.md "Optimizer", PyTorch order) --------------------------------
struct AdamWStep {
  double lr = 0.0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  double bias1 = 1.0, bias2 = 1.0;  // 1 - beta1^t and 1 - beta2^t at step t (counted from 1)
};
// The scalars an update computes with, each computed from the step in double and rounded once to T (the moments'
// dtype). The update reads them from memory on its device, so that on a GPU its launches take the same arguments
// at every step (a step captured in a CUDA graph replays with only these rewritten).
template <typename T>
struct AdamWConstants {
  T beta1, beta2;
  T step_size;       // lr / bias1
  T inv_sqrt_bias2;  // 1 / sqrt(bias2)
  T eps;
  T decay;           // 1 - lr * weight_decay
};
inline constexpr int64_t kAdamWConstants = 6;  // the values of AdamWConstants, in this order
static_assert(sizeof(AdamWConstants<float>) == kAdamWConstants * sizeof(float) &&
              sizeof(AdamWConstants<double>) == kAdamWConstants * sizeof(double));
template <typename T>
AdamWConstants<T> adamw_constants(const AdamWStep& s) {
  return {static_cast<T>(s.beta1), static_cast<T>(s.beta2), static_cast<T>(s.lr / s.bias1),
          static_cast<T>(1.0 / std::sqrt(s.bias2)), static_cast<T>(s.eps),
          static_cast<T>(1.0 - s.lr * s.weight_decay)};
}
// Writes adamw_constants of the step into out (kAdamWConstants), f32 or f64, in host memory.
void write_adamw_constants(Tensor out, const AdamWStep& step);
// One update of every element: theta *= 1 - lr * wd (decoupled decay first); m = b1 m + (1 - b1) g;
// v = b2 v + (1 - b2) g^2; theta -= (lr / bias1) m / (sqrt(v) / sqrt(bias2) + eps). param, grad, m, v (n)
// share a dtype and master is empty, except in mixed precision (CUDA): then theta is master (n, f32), m and v
// are f32, grad is param's dtype, and param (bf16) receives master rounded to nearest. Overwrites param, m, v
// (and master).
// constants: the step's AdamWConstants (kAdamWConstants) in m's dtype, on param's device (write_adamw_constants
// on the host, then copied to the GPU).
// gate: empty, or the f64 (2) an update_gate wrote, on param's device: when gate[1] is 0 nothing is written; else
// grad enters multiplied by gate[0] and rounded to its dtype (the bits of clipping the gradients in place first).
void adamw_update(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor master, Tensor constants,
                  Tensor gate = Tensor());
// The gate of a training step's update, computed where the step's sums are, so that on a GPU the update is queued
// without the host waiting for the norm. loss_sum, grad_squares (f64 (1)): the step's loss sum and its gradients'
// sum of squares. gate (f64 (2)) receives [0] the clipping factor, max_norm / (sqrt(grad_squares) + 1e-6) where that
// is below 1, else 1 (and 1 when max_norm is 0: PyTorch's clip_grad_norm_), and [1] 1 when both sums are finite
// (the update applies), else 0.
void update_gate(Tensor gate, Tensor loss_sum, Tensor grad_squares, double max_norm);

// ---- embedding ------------------------------------------------------------------------------------
// out (N, d) = table (V, d)[tokens (N)]. Token ids are checked by the caller (data loading).
void embedding_forward(Tensor out, Tensor table, Tensor tokens);
// dtable (V, d) += scatter of dout (N, d) by tokens (N). Accumulates.
void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens);

// ---- RMSNorm over the last dimension ------------------------------------------------------------
// rstd (N) = 1 / sqrt(mean(x^2) + eps); out (N, d) = x * rstd * weight (d). Overwrites out, rstd.
void rmsnorm_forward(Tensor out, Tensor rstd, Tensor x, Tensor weight, double eps);
// Accumulates dx (N, d) and dweight (d), given dout (N, d) and the forward's x, weight, rstd.
void rmsnorm_backward(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd);

// ---- matrix products (nn.Linear layout: weights are (out_features, in_features)) -----------------
// out (N, M) = x (N, K) @ w (M, K)^T. Overwrites out, or accumulates when accumulate is true.
void matmul_forward(Tensor out, Tensor x, Tensor w, bool accumulate = false);
// dx (N, K) = dout (N, M) @ w (M, K): overwrites, or accumulates when accumulate_dx is true.
// dw (M, K) += dout^T @ x. Either dx or dw may be an empty Tensor, and is then skipped.
void matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, bool accumulate_dx = false);

// ---- rotary position embedding (rotate-half pairing, positions 0..T-1) ---------------------------
// x (B, T, nh, hd) rotated in place: for i < hd/2, the pair (x[i], x[i + hd/2]) at position t is
// rotated by the angle t * theta^(-2i/hd) (angles computed in double).
void rope_forward(Tensor x, double theta);
// Applies the inverse rotation in place to a gradient dx (B, T, nh, hd): the backward of rope_forward.
void rope_backward(Tensor dx, double theta);

// ---- causal grouped-query attention --------------------------------------------------------------
// q (B, T, H, hd), k and v (B, T, Hkv, hd), H a multiple of Hkv; query head h reads kv head
// h / (H / Hkv). out (B, T, H, hd) = softmax(q k^T / sqrt(hd) + causal mask) v, computed row by row
// with an online softmax (no T x T matrix). lse (B, H, T) receives each row's log-sum-exp of the
// scaled scores, which the backward uses to recompute probabilities. Overwrites out and lse.
void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v);
// Overwrites dq (B, T, H, hd), dk and dv (B, T, Hkv, hd) from dout (B, T, H, hd) and the forward's
// q, k, v, out, lse.
void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                        Tensor out, Tensor lse);

// ---- inference: positions past a start, and queries against a KV cache ----------------------------
// The session of src/infer/ decodes a few new positions per sequence against keys and values cached from
// earlier steps. start (B) and slots (B) are i32 on the op's device: batch row b holds positions
// start[b] .. start[b] + T - 1 of the sequence whose cache is row slots[b] of the cache tensors.
// RoPE of x (B, T, nh, hd) in place, row (b, t) at position start[b] + t (rope_forward is start = 0).
void rope_forward_at(Tensor x, double theta, Tensor start);
// cache (S, Tmax, Hkv, hd): cache[slots[b], start[b] + t] = x[b, t] for x (B, T, Hkv, hd); start[b] + T <= Tmax.
void kv_cache_write(Tensor cache, Tensor x, Tensor slots, Tensor start);
// out (B, T, H, hd): the query q[b, t] (B, T, H, hd), at position p = start[b] + t, attends over the keys and
// values at positions 0 .. p of cache row slots[b] of k_cache and v_cache (S, Tmax, Hkv, hd):
// softmax(q k^T / sqrt(hd)) v, query head h reading kv head h / (H / Hkv), as attention_forward. Overwrites out.
void attention_cached(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor start);

// ---- SwiGLU --------------------------------------------------------------------------------------
// out (N, F) = silu(gate) * up, with gate, up (N, F). Overwrites out.
void swiglu_forward(Tensor out, Tensor gate, Tensor up);
// Overwrites dgate and dup (N, F) from dout (N, F).
void swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up);

// ---- fused classifier: output projection + softmax + cross-entropy --------------------------------
// For each row n of x (N, d): logits = x[n] @ W^T (V), losses[n] = logsumexp(logits) - logits[t_n]
// with t_n = targets[n]. Overwrites losses (N).
// When dx is not empty, also the backward with dlogits = (softmax(logits) - onehot(t_n)) * grad_scale:
// dx (N, d) = dlogits @ W (overwrites) and dW (V, d) += dlogits^T @ x (accumulates).
// Rows are processed in blocks: at most one block of rows x V logits exists at a time, never (N, V).
void classifier_forward_backward(Tensor losses, Tensor dx, Tensor dW, Tensor x, Tensor W,
                                 Tensor targets, double grad_scale);

// ---- concatenation along the last dimension -----------------------------------------------------
// out (N, a + b) = [x_a | x_b]: x_a (N, a) fills the first a columns, x_b (N, b) the rest. Overwrites.
void concat_last_dim(Tensor out, Tensor x_a, Tensor x_b);
// The backward: dx_a (N, a) and dx_b (N, b) receive the two column blocks of dout (N, a + b); each
// overwrites, or accumulates when its flag is set.
void split_last_dim(Tensor dx_a, Tensor dx_b, Tensor dout, bool accumulate_a = false, bool accumulate_b = false);

// ---- group by key: the permutation behind L3 (key = token id) and MoE (key = expert id) ----------
// A stable counting sort of positions by an i32 key. keys (N) in [0, K). Overwrites order (N) i32 with
// the positions sorted by key (equal keys keep position order) and offsets (K + 1) i32 with the group
// boundaries: the positions of key k are order[offsets[k] .. offsets[k + 1]). K = offsets.numel() - 1.
// A key outside [0, K) is an internal error (keys are validated when data is loaded). On CUDA that check reads
// one integer back, so the host waits for the device; KeyCheck::Trusted skips it for keys the caller computed
// itself in range (the MoE router's experts), so that the MoE layer never waits. The CPU always checks.
enum class KeyCheck { Verify, Trusted };
void group_by_key(Tensor order, Tensor offsets, Tensor keys, KeyCheck check = KeyCheck::Verify);
// out (M, d) = x (N, d)[index (M)]: out[i] = x[index[i]]. Overwrites. With index = order this
// permutes rows into grouped order; its backward is scatter_rows with the same index.
void gather_rows(Tensor out, Tensor x, Tensor index);
// out (N, d)[index[i]] = x (M, d)[i], or += when accumulate. The entries of index (M) must be distinct
// (a permutation or an injective map), so no two rows of x meet in one row of out; rows of out that
// index does not name are left as they are. With index = order this puts grouped rows back in position
// order (the inverse permutation); its backward is gather_rows with the same index.
void scatter_rows(Tensor out, Tensor x, Tensor index, bool accumulate = false);

// ---- L3 lookup attention over grouped rows (MODEL.md "Large Lookup Layer") -----------------------
// Rows are in grouped order (see group_by_key): the rows of x (N, d) that belong to token u are
// x[group_offsets[u] .. group_offsets[u + 1]), and token u owns the table rows
// [row_offsets[u], row_offsets[u + 1]) of w_k (v, d) and w_v (v, d_emb); group_offsets and
// row_offsets are both (V + 1) i32, row_offsets[V] = v, and n_u = row_offsets[u + 1] - row_offsets[u]
// is at most the width k of probs. For each row x_i of token u:
//   probs[i, :n_u] = softmax(K_u x_i)  (no 1/sqrt scaling)       probs (N, k); entries past n_u are 0
//   out[i] = V_u^T probs[i, :n_u]                                  out (N, d_emb)
// Overwrites out and probs. Every group multiplies its own K_u, V_u: a grouped matrix product.
// w_v may be the same tensor as w_k (tied keys and values, d_emb = d).
void l3_lookup_forward(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets);
// The backward, from dout (N, d_emb) and the forward's x, w_k, w_v, probs: overwrites dx (N, d);
// accumulates dw_k (v, d) and dw_v (v, d_emb), touching only the rows of tokens that have rows in x.
// When w_v is w_k, dw_v must be dw_k (both gradients add into it).
void l3_lookup_backward(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v,
                        Tensor probs, Tensor group_offsets, Tensor row_offsets);

// ---- Mixture-of-Experts (MODEL.md "Mixture-of-Experts FFN", Mixtral semantics) -------------------
// Routing works on (token, slot) pairs: pair p = n * top_k + s is slot s of token n. The model sorts the
// pairs by expert id with group_by_key (keys = experts viewed as (N * top_k)), so that the rows of one
// expert are contiguous, runs each expert's SwiGLU as grouped products, and combines back in token order.
// Dtypes: the router's logits and their gradient, the grouped rows and the expert weights have the call's dtype;
// the routing statistics (probs, lse, the routing weights and their gradient, probs_bias, the layer statistics)
// are statistics in the sense above: f32 in a bf16 call, as Mixtral computes its router softmax in fp32.
//
// Router, per row n of logits (N, E): probs[n] = softmax(logits[n]) and lse[n] = logsumexp(logits[n]),
// computed in at least fp32; experts[n] (top_k) i32 = the top_k largest probabilities in descending order,
// ties to the lower expert index; weights[n] (top_k) = those probabilities, divided by their sum when
// normalize. Overwrites probs (N, E), lse (N), experts (N, top_k), weights (N, top_k).
void moe_router_forward(Tensor probs, Tensor lse, Tensor experts, Tensor weights, Tensor logits, bool normalize);
// The router's backward. Overwrites dlogits (N, E) with the gradient of
//   sum_{n,s} dweights[n,s] * weights[n,s]  +  sum_{n,e} probs_bias[e] * probs[n,e]  +  z_scale * sum_n lse[n]^2
// i.e. the chain through the (renormalised) top-k weights, a per-expert linear term on the probabilities
// (the load-balancing loss: probs_bias[e] = alpha * E * f_e / N times the loss scale; may be empty) and the
// router z-loss (z_scale = beta / N times the loss scale).
void moe_router_backward(Tensor dlogits, Tensor dweights, Tensor probs, Tensor lse, Tensor experts,
                         Tensor weights, Tensor probs_bias, double z_scale, bool normalize);
// The routing statistics of one MoE layer, reduced where the tensors live (on a GPU nothing waits for the device:
// the caller reads these few numbers back when it wants them). From probs (N, E), lse (N) and the expert
// offsets (E + 1) i32 of the N * top_k pairs grouped by expert (rows_e = offsets[e + 1] - offsets[e],
// M = offsets[E]), overwrites stats (kMoeStatistics) with
//   [0] sum_e (rows_e / M) * P_e, P_e = mean_n probs[n, e]  (the load-balancing sum, before alpha * E)
//   [1] mean_n lse[n]^2                                      (the z-loss, before beta)
//   [2] max_e rows_e / N    [3] min_e rows_e / N             (the largest and smallest share of tokens)
//   [4] mean_n of -sum_e probs[n, e] log probs[n, e]         (the router entropy, nats)
// computed in double; all zero when N = 0.
constexpr int64_t kMoeStatistics = 5;
void moe_routing_stats(Tensor stats, Tensor probs, Tensor lse, Tensor offsets);
// The load-balancing term of the router's backward from the expert offsets (E + 1) i32, on the device:
// probs_bias[e] = scale * (offsets[e + 1] - offsets[e]) for probs_bias (E). Overwrites.
void moe_balance_bias(Tensor probs_bias, Tensor offsets, double scale);
// From the pairs sorted by expert, order (M = N * top_k) i32: token_of_row[i] = order[i] / top_k (which
// token grouped row i reads) and row_of_pair[order[i]] = i (where pair p landed). Overwrites both (M) i32.
void moe_pair_indices(Tensor token_of_row, Tensor row_of_pair, Tensor order, int64_t top_k);
// Grouped product: for each group e, rows [offsets[e], offsets[e+1]) of x (M, I) times w[e]^T, where
// w (E, O, I) holds one nn.Linear weight per group: out (M, O). offsets (E + 1) i32, running from 0 to M (on
// CUDA they stay on the device: no group size is read by the host). Overwrites out. Groups may be empty.
void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets);
// Its backward: dx (M, I) = per-group dout @ w[e] (overwrites, or accumulates when accumulate_dx);
// dw (E, O, I) += per-group dout^T @ x (accumulates; a parameter gradient: f32 in a bf16 call, or bf16). dx or
// dw may be empty and is then skipped. An empty group leaves its dw[e] as it was.
void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                             bool accumulate_dx = false);
// Combine: out[n] = sum_s weights[n, s] * rows[row_of_pair[n * top_k + s]], for out (N, d), rows (M, d),
// weights (N, top_k) (empty: every weight is 1), row_of_pair (N * top_k) i32. Overwrites out, or
// accumulates when accumulate. With empty weights this is also the backward of the dispatch
// gather_rows(x_grouped, x, token_of_row): it sums each token's top_k row gradients in slot order.
void moe_combine_forward(Tensor out, Tensor rows, Tensor weights, Tensor row_of_pair, bool accumulate = false);
// Its backward: drows[row_of_pair[n * top_k + s]] = weights[n, s] * dout[n] (overwrites drows (M, d)) and
// dweights[n, s] = dout[n] . rows[row_of_pair[n * top_k + s]] (overwrites dweights (N, top_k); may be empty).
void moe_combine_backward(Tensor drows, Tensor dweights, Tensor dout, Tensor rows, Tensor weights,
                          Tensor row_of_pair);

}  // namespace l3c::ops
