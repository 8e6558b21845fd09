// CUDA fused classifier: logits = x W^T, per-row cross-entropy and (optionally) its backward, one block of rows
// at a time, so that only (block rows, V) logits ever exist (f32, in the workspace):
//   logits_blk = x_blk W^T                      (cuBLAS; f32 output, also from bf16 inputs)
//   one thread block per row: max, sum of exp (the block tree, in double), loss = lse - logit[target],
//                             dlogits = (softmax - onehot) * grad_scale (over the logits for f32; a bf16 copy
//                             for bf16, since cuBLAS multiplies like types)
//   dx_blk = dlogits W;  dW += dlogits^T x_blk  (cuBLAS; blocks add into dW in block order)
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr size_t kLogitsBudget = size_t{256} << 20;  // default block: about 256 MiB of f32 logits

// Row r of logits (rows, V): writes losses[r]; with backward, dlogits[r] (may be the logits themselves for f32).
// A target outside [0, V) gives a NaN loss and a zero gradient row.
template <typename T>
__global__ void cross_entropy_rows_kernel(float* __restrict__ losses, T* dlogits, float* logits,
                                          const int32_t* __restrict__ targets, int64_t rows, int64_t vocab,
                                          float grad_scale, bool backward) {
  __shared__ float max_scratch[32];
  __shared__ double sum_scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float* z = logits + r * vocab;
    T* dz = dlogits + r * vocab;
    const int32_t target = targets[r];
    const bool target_ok = target >= 0 && target < vocab;
    const float target_logit = target_ok ? z[target] : 0.0f;  // read before z is overwritten below
    float local_max = -INFINITY;
    for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) local_max = fmaxf(local_max, z[c]);
    const float row_max = block_max(local_max, max_scratch);
    double local_sum = 0.0;
    for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
      const float e = expf(z[c] - row_max);
      z[c] = e;
      local_sum += static_cast<double>(e);
    }
    const double sum = block_sum(local_sum, sum_scratch);
    if (threadIdx.x == 0) {
      const double lse = static_cast<double>(row_max) + log(sum);
      losses[r] = target_ok ? static_cast<float>(lse - static_cast<double>(target_logit)) : NAN;
    }
    if (backward) {
      const float softmax_scale = static_cast<float>(static_cast<double>(grad_scale) / sum);
      for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
        float g = z[c] * softmax_scale;
        if (c == target) g -= grad_scale;
        dz[c] = from_float<T>(target_ok ? g : 0.0f);
      }
    }
  }
}

int64_t default_block_rows(int64_t n, int64_t vocab, DType dtype) {
  const size_t per_row = static_cast<size_t>(vocab) * (sizeof(float) + (dtype == DType::BF16 ? sizeof(bf16) : 0));
  const int64_t rows = static_cast<int64_t>(kLogitsBudget / per_row);
  return std::clamp<int64_t>(rows, 1, std::max<int64_t>(n, 1));
}

}  // namespace

size_t classifier_workspace_bytes(int64_t rows, int64_t vocab, DType dtype) {
  const int64_t block = default_block_rows(rows, vocab, dtype);
  Carve sizes(nullptr);
  sizes.take<float>(block * vocab);
  if (dtype == DType::BF16) sizes.take<bf16>(block * vocab);
  return sizes.bytes();
}

void classifier_forward_backward(Tensor losses, Tensor dx, Tensor dW, Tensor x, Tensor W, Tensor targets,
                                 double grad_scale, int64_t block_rows) {
  const int64_t vocab = W.dim(0), d = W.dim(1), n = x.numel() / d;
  const DType type = x.dtype;
  if (block_rows <= 0) block_rows = default_block_rows(n, vocab, type);
  block_rows = std::min(block_rows, n);
  const bool backward = !dx.empty() || !dW.empty();

  Carve sizes(nullptr);
  sizes.take<float>(block_rows * vocab);
  if (type == DType::BF16) sizes.take<bf16>(block_rows * vocab);
  Carve carve(workspace(sizes.bytes()));
  float* logits = carve.take<float>(block_rows * vocab);
  bf16* dlogits_bf16 = type == DType::BF16 ? carve.take<bf16>(block_rows * vocab) : nullptr;
  void* dlogits = type == DType::BF16 ? static_cast<void*>(dlogits_bf16) : static_cast<void*>(logits);
  const size_t element = dtype_size(type);

  for (int64_t r0 = 0; r0 < n; r0 += block_rows) {
    const int64_t rows = std::min(n, r0 + block_rows) - r0;
    const void* x_blk = static_cast<const char*>(x.data) + r0 * d * element;
    linear_forward(logits, DType::F32, x_blk, W.data, type, rows, d, vocab, /*accumulate=*/false);
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(rows, 65535));
    const int32_t* target_blk = static_cast<const int32_t*>(targets.data) + r0;
    float* loss_blk = static_cast<float*>(losses.data) + r0;
    dispatch_float(type, "classifier_forward_backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      launch(cross_entropy_rows_kernel<T>, blocks, kThreads, 0, loss_blk, static_cast<T*>(dlogits), logits, target_blk,
             rows, vocab, static_cast<float>(grad_scale), backward);
    });
    if (!backward) continue;
    if (!dx.empty())
      linear_backward_dx(static_cast<char*>(dx.data) + r0 * d * element, dlogits, W.data, type, rows, d, vocab,
                         /*accumulate=*/false);
    if (!dW.empty()) linear_backward_dw(dW.data, dW.dtype, dlogits, x_blk, type, rows, d, vocab);
  }
}

}  // namespace l3c::ops::cuda
