// CUDA implementations of the op contract (kernels/ops.h): own kernels, cuBLAS for the matrix products.
// ops.cpp checks shapes, dtypes and devices and then calls these; they assume valid input, with every tensor
// in device memory. Floating tensors are f32 or bf16 (arithmetic in f32); statistics (RMSNorm's rstd,
// attention's lse, the classifier's losses, L3's probs) are always f32, so a bf16 model keeps fp32 norms,
// softmax and loss; the MoE ops keep their routing statistics (probabilities, lse, routing weights) in f32.
//
// Determinism: all work runs in order on one stream, no kernel uses floating-point atomics, and
// every reduction has a fixed order or tree (independent of the GPU model, since partitions are fixed sizes),
// so the same inputs give the same bits from run to run.
//
// Scratch memory: the ops share one device workspace (reserve_workspace sizes it up front; it grows, with
// one allocation, if a call needs more). The classifier's logits block, L3's softmax gradients, partial sums
// and the RoPE table live there.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/ops.h"

namespace l3c::ops::cuda {

// ---- errors (device.cu) ----------------------------------------------------------------------------------
// The op the backend runs, for the message of a CUDA error raised meanwhile (ops.cpp sets it around every call
// it passes to this backend). `call` is the call as written, "attention_forward(out, lse, q, k, v)": the name is
// what precedes the parenthesis. Scopes nest; each thread has its own.
class CurrentOp {
 public:
  explicit CurrentOp(const char* call);
  ~CurrentOp();
  CurrentOp(const CurrentOp&) = delete;
  CurrentOp& operator=(const CurrentOp&) = delete;

 private:
  const char* previous_;
};

// ---- device memory and the workspace (device.cu) -----------------------------------------------------
// Makes sure the workspace holds at least `bytes` (UserError when the GPU cannot provide it).
void reserve_workspace(size_t bytes);
size_t workspace_capacity();
// Bytes of workspace the classifier uses for a block of logits, for V classes and N rows at most.
size_t classifier_workspace_bytes(int64_t rows, int64_t vocab, DType dtype);
// Bytes of workspace the MoE ops use for `rows` grouped rows (N * top_k) over `experts` experts.
size_t moe_workspace_bytes(int64_t rows, int64_t experts);
// Waits for all queued work (results are then visible to the host).
void synchronize();
// How many times so far the host has waited for the device: blocking copies in either direction, read-backs,
// synchronize, frees. Tests count them over a piece of code (the MoE layer makes none).
int64_t host_synchronizations();
// The record of the work queued on the stream (kernels/device.h, cuda_record_launches).
void record_launches(bool on);
std::vector<std::string> take_launch_record();

// ---- elementwise (elementwise.cu) ----------------------------------------------------------------------
void fill_zero(Tensor t);                 // any dtype
void copy(Tensor dst, Tensor src);        // any dtype, device to device
// dst = src across devices (host <-> device, any dtype); returns when the copy is done.
void copy_between(Tensor dst, Tensor src);
// dst = src converted (f32 <-> bf16, or the same dtype), on the device.
void convert(Tensor dst, Tensor src);
void add_inplace(Tensor y, Tensor x);
void scale_inplace(Tensor y, double s);
// Sum of squares in double: fixed per-block partials (a fixed grid), added in block order by one block.
double sum_squares(Tensor x);
// The same, into out (1) f64 on the device (nothing read back).
void sum_squares_into(Tensor out, Tensor x);
// sum[0] (f64) += (values (N) f32 added in index order in double) / N: one thread, so that the bits are the host's
// (N dependent double adds: about 0.2 ms for N = 64K, against a read-back that would stall the queue).
void add_mean(Tensor sum, Tensor values);
void add_to_sums(Tensor sums, Tensor values);  // values f32

// ---- embedding (embedding.cu) --------------------------------------------------------------------------
void embedding_forward(Tensor out, Tensor table, Tensor tokens);
// Positions are grouped by token (the stable counting sort of grouping.cu), then every table row adds its
// positions' rows in position order: one thread per element, no atomics.
void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens);

// ---- RMSNorm (rmsnorm.cu) ------------------------------------------------------------------------------
void rmsnorm_forward(Tensor out, Tensor rstd, Tensor x, Tensor weight, double eps);
void rmsnorm_backward(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd);

// ---- matrix products (matmul.cu, cuBLAS with fp32 accumulation; no TF32) ---------------------------------
void matmul_forward(Tensor out, Tensor x, Tensor w, bool accumulate);
void matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, bool accumulate_dx);

// ---- rotary position embedding (rope.cu) --------------------------------------------------------------
void rope_forward(Tensor x, double theta);
void rope_backward(Tensor dx, double theta);

// ---- inference: RoPE at positions, the KV cache and attention against it (inference.cu) -----------------
void rope_forward_at(Tensor x, double theta, Tensor start);
void kv_cache_write(Tensor cache, Tensor x, Tensor slots, Tensor start);
void attention_cached(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor start);

// ---- causal grouped-query attention (attention.cu, attention_flash.cu) ------------------------------------
// Fused, flash-style: no T x T matrix exists; the backward is two kernels without atomics (dK and dV per key
// tile, dQ per query tile), each recomputing the probabilities from lse. Two implementations of the same contract:
enum class AttentionKernel {
  CudaCores,    // attention.cu: f32 or bf16, head_dim up to 256; 32-row tiles, every product on CUDA cores
  TensorCores,  // attention_flash.cu: bf16 with head_dim 64 or 128 on sm_80+; 64-row tiles, WMMA bf16 products
};
// Whether the tensor-core kernels take this dtype and head size (whatever the GPU).
bool tensor_core_attention_supports(DType dtype, int64_t head_dim);
// The kernel for a dtype and head size on this process's GPU: tensor cores wherever they apply (the GPU's compute
// capability is read once). A model's shapes and dtype are fixed, so one kernel serves every call of a run.
AttentionKernel attention_kernel_for(DType dtype, int64_t head_dim);
void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v);  // attention_kernel_for's choice
void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                        Tensor lse);
// The kernel named (tests, the dev/ ladder); TensorCores must be supported for the inputs.
void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, AttentionKernel kernel);
void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                        Tensor lse, AttentionKernel kernel);

// ---- SwiGLU (swiglu.cu) ------------------------------------------------------------------------------
void swiglu_forward(Tensor out, Tensor gate, Tensor up);
void swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up);

// ---- fused classifier (classifier.cu) -----------------------------------------------------------------
// Blocks of rows by chunks of classes: logits (fp32, in the workspace) by cuBLAS, an online max and sum per row over
// the chunks, then per chunk dlogits and two cuBLAS products for dx and dW. block_rows and vocab_chunk 0: the whole
// micro-batch in one block where 256 MiB of logits hold chunks of at least 1024 classes (all of V when they hold
// it), else fewer rows; a test may set either. A target outside [0, V) gives a NaN loss (and no gradient) instead of
// reading out of bounds.
void classifier_forward_backward(Tensor losses, Tensor dx, Tensor dW, Tensor x, Tensor W, Tensor targets,
                                 double grad_scale, int64_t block_rows = 0, int64_t vocab_chunk = 0);

// ---- concatenation, group by key, gather / scatter (grouping.cu) ----------------------------------------
void concat_last_dim(Tensor out, Tensor x_a, Tensor x_b);
void split_last_dim(Tensor dx_a, Tensor dx_b, Tensor dout, bool accumulate_a, bool accumulate_b);
// Stable counting sort by key, computed by one block: a histogram (integer atomics: counts are exact), an
// exclusive scan, then placement tile by tile in position order, each thread ranking itself among the equal
// keys before it. A key outside [0, K) is an internal error (the check reads one integer back: verify_keys;
// without it nothing is read back).
void group_by_key(Tensor order, Tensor offsets, Tensor keys, bool verify_keys);
void gather_rows(Tensor out, Tensor x, Tensor index);
void scatter_rows(Tensor out, Tensor x, Tensor index, bool accumulate);

// ---- L3 lookup attention (l3.cu, l3_grouped.cu) ---------------------------------------------------------
// Two implementations of the same contract, without atomics (each table-gradient element has one owner that sums
// its token's rows in order), the softmax gradients in the workspace:
enum class L3Kernel {
  CudaCores,    // l3.cu: f32 or bf16, any shape; one block per grouped row (K_u, V_u read once per position) and
                // one block per table row for the table gradients
  TensorCores,  // l3_grouped.cu: bf16 on sm_80+; tiles of up to 64 positions of one token against its rows, WMMA
                // bf16 products with fp32 accumulation (K_u, V_u read once per tile), chunks of 64 table rows
};
// Whether the tensor-core kernels are chosen for this dtype and these widths (whatever the GPU): bf16 with d and
// d_emb multiples of 16. (They compute any shape in bf16; other widths leave most of each tile empty.)
bool tensor_core_l3_supports(DType dtype, int64_t d, int64_t d_emb);
// The kernel for a dtype and widths on this process's GPU: tensor cores wherever they apply.
L3Kernel l3_kernel_for(DType dtype, int64_t d, int64_t d_emb);
void l3_lookup_forward(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets);  // l3_kernel_for's choice
void l3_lookup_backward(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v,
                        Tensor probs, Tensor group_offsets, Tensor row_offsets);
// The kernel named (tests, the dev/ ladder); TensorCores takes bf16 only.
void l3_lookup_forward(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets, L3Kernel kernel);
void l3_lookup_backward(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v,
                        Tensor probs, Tensor group_offsets, Tensor row_offsets, L3Kernel kernel);

// ---- Mixture-of-Experts (moe.cu) -----------------------------------------------------------------------
// f32 or bf16 with f32 routing statistics (ops.h). Nothing reads back to the host: the expert offsets stay on the
// device, and the grouped products lay out their row tiles from them there (own tiled kernels, fp32
// accumulation, on tensor cores in bf16; see moe.cu for why not cuBLAS's grouped GEMM).
void moe_router_forward(Tensor probs, Tensor lse, Tensor experts, Tensor weights, Tensor logits, bool normalize);
void moe_router_backward(Tensor dlogits, Tensor dweights, Tensor probs, Tensor lse, Tensor experts, Tensor weights,
                         Tensor probs_bias, double z_scale, bool normalize);
void moe_routing_stats(Tensor stats, Tensor probs, Tensor lse, Tensor offsets);
void moe_balance_bias(Tensor probs_bias, Tensor offsets, double scale);
void moe_pair_indices(Tensor token_of_row, Tensor row_of_pair, Tensor order, int64_t top_k);
// The grouped products have two implementations of the same contract (each output element summed by one owner in
// a fixed order: no atomics, the same bits on every run; the row tiles never cross an expert):
enum class MoeKernel {
  CudaCores,    // f32 or bf16, any shape: 64 x 64 output tiles, 4 x 4 outputs a thread, f32 products
  TensorCores,  // bf16 on sm_80+, any shape (ragged tiles zero-padded in shared memory): the same 64 x 64 tiles,
                // WMMA bf16 16 x 16 x 16 fragments with fp32 accumulation, 4 warps of 32 x 32
};
// Whether the tensor-core kernels are chosen for this dtype (whatever the GPU): bf16.
bool tensor_core_moe_supports(DType dtype);
// The kernel for a dtype on this process's GPU: tensor cores wherever they apply.
MoeKernel moe_kernel_for(DType dtype);
void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets);  // moe_kernel_for's choice
void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                             bool accumulate_dx);
// The kernel named (tests, the dev/ ladder); TensorCores takes bf16 only.
void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets, MoeKernel kernel);
void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                             bool accumulate_dx, MoeKernel kernel);
void moe_combine_forward(Tensor out, Tensor rows, Tensor weights, Tensor row_of_pair, bool accumulate);
void moe_combine_backward(Tensor drows, Tensor dweights, Tensor dout, Tensor rows, Tensor weights,
                          Tensor row_of_pair);

// ---- AdamW (optimizer.cu) ----------------------------------------------------------------------------
// See ops::adamw_update: param and grad (f32 or bf16, alike), m, v (f32), master (f32; empty when param is f32),
// constants (the step's AdamWConstants<float>, in device memory), gate (f64 (2) or empty).
void adamw_update(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor master, Tensor constants, Tensor gate);
void update_gate(Tensor gate, Tensor loss_sum, Tensor grad_squares, double max_norm);

}  // namespace l3c::ops::cuda
