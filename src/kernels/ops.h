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
#pragma once
#include "core/tensor.h"

namespace l3c::ops {

// ---- elementwise ---------------------------------------------------------------------------------
void fill_zero(Tensor t);
void copy(Tensor dst, Tensor src);                   // dst = src (same shape and dtype)
void add_inplace(Tensor y, Tensor x);                // y += x (residual adds)
void scale_inplace(Tensor y, double s);              // y *= s
double sum_squares(Tensor x);                        // sum of x^2, accumulated in double

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

}  // namespace l3c::ops
