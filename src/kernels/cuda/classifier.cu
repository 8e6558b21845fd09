// CUDA fused classifier: logits = x W^T, per-row cross-entropy and (optionally) its backward, over blocks of R rows
// and chunks of C classes, so that only (R, C) logits ever exist (f32, in the workspace) and R can be the whole
// micro-batch at any vocabulary size:
//   pass 1, per chunk c:  logits = x_blk W_c^T                  (cuBLAS; f32 output, also from bf16 inputs)
//                         per row, an online max and sum of exp: with the running max m and sum s,
//                         m' = max(m, max_c z), s' = s e^(m - m') + sum_c e^(z - m')   (sums in double), and the
//                         target's logit when it falls in the chunk
//                         then loss = m + log s - z_target
//   pass 2 (backward), per chunk c: the chunk's logits again (kept from pass 1 when one chunk covers V);
//                         dlogits = (e^(z - m) / s - onehot) * grad_scale (a bf16 copy for bf16: cuBLAS multiplies
//                         like types); dx_blk (+)= dlogits W_c; dW_c += dlogits^T x_blk (cuBLAS)
// Each row of dW is added to once per row block: once per micro-batch when R = N. A (R, V) block instead shrinks R as
// V grows (248 rows at V = 180K in 256 MiB), and dW would be rewritten N / R times, about 130 times per micro-batch
// of 32K rows: 130 round trips of the whole (V, d) gradient. The price of chunks is the logits computed twice in a
// backward: 2 N V d more FLOPs on the classifier's 6 N V d.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr size_t kLogitsBudget = size_t{256} << 20;  // about 256 MiB of logits (and their bf16 copy)
constexpr int64_t kMinChunk = 1024;                   // classes per chunk below which R shrinks instead

// The blocking of one call: R rows by C classes.
struct ClassifierPlan {
  int64_t block_rows = 0, chunk = 0;
};

ClassifierPlan plan_for(int64_t n, int64_t vocab, DType dtype, int64_t block_rows, int64_t chunk) {
  const size_t per_logit = sizeof(float) + (dtype == DType::BF16 ? sizeof(bf16) : 0);
  const int64_t budget = static_cast<int64_t>(kLogitsBudget / per_logit);
  n = std::max<int64_t>(n, 1);
  ClassifierPlan plan;
  if (block_rows <= 0 && chunk <= 0) {
    if (n * vocab <= budget) {
      plan = {n, vocab};  // one chunk: pass 2 reuses pass 1's logits
    } else {
      plan.chunk = std::min(vocab, std::max(kMinChunk, budget / n));
      plan.block_rows = std::clamp<int64_t>(budget / plan.chunk, 1, n);
    }
  } else {
    plan.chunk = chunk > 0 ? std::min(chunk, vocab) : std::min(vocab, std::max<int64_t>(budget / n, 1));
    plan.block_rows = block_rows > 0 ? std::min(block_rows, n) : std::clamp<int64_t>(budget / plan.chunk, 1, n);
  }
  return plan;
}

// The per-row statistics pass 1 keeps across chunks.
struct RowStats {
  float* max;            // (R) running max of the logits
  double* sum;           // (R) running sum of e^(z - max)
  float* target_logit;   // (R) the target's logit (from the chunk that holds it)
};

// Row r of a chunk of logits (rows, chunk) covering classes [c0, c0 + chunk): folds the chunk into the row's running
// max and sum. A target outside [0, V) never matches a class, and gives a NaN loss below.
__global__ void online_softmax_chunk_kernel(RowStats stats, const float* __restrict__ logits, const int32_t* __restrict__ targets,
                                int64_t rows, int64_t chunk, int64_t c0, bool first_chunk) {
  __shared__ float max_scratch[32];
  __shared__ double sum_scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* z = logits + r * chunk;
    float local_max = -INFINITY;
    for (int64_t c = threadIdx.x; c < chunk; c += blockDim.x) local_max = fmaxf(local_max, z[c]);
    const float chunk_max = block_max(local_max, max_scratch);
    double local_sum = 0.0;
    for (int64_t c = threadIdx.x; c < chunk; c += blockDim.x) local_sum += static_cast<double>(expf(z[c] - chunk_max));
    const double chunk_sum = block_sum(local_sum, sum_scratch);
    if (threadIdx.x == 0) {
      const int64_t target = targets[r];
      if (target >= c0 && target < c0 + chunk) stats.target_logit[r] = z[target - c0];
      if (first_chunk) {
        stats.max[r] = chunk_max;
        stats.sum[r] = chunk_sum;
      } else {
        const float old_max = stats.max[r], new_max = fmaxf(old_max, chunk_max);
        stats.sum[r] = stats.sum[r] * exp(static_cast<double>(old_max) - new_max) +
                       chunk_sum * exp(static_cast<double>(chunk_max) - new_max);
        stats.max[r] = new_max;
      }
    }
  }
}

// losses[r] = lse - target logit, lse = max + log(sum) (NaN for a target outside [0, V)).
__global__ void loss_kernel(float* __restrict__ losses, RowStats stats, const int32_t* __restrict__ targets,
                            int64_t rows, int64_t vocab) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  const double row_lse = static_cast<double>(stats.max[r]) + log(stats.sum[r]);
  const int32_t target = targets[r];
  losses[r] = target >= 0 && target < vocab ? static_cast<float>(row_lse - stats.target_logit[r]) : NAN;
}

// dlogits (rows, chunk) = (e^(z - lse) - onehot(target)) * grad_scale over classes [c0, c0 + chunk), computed as
// e^(z - max) * (grad_scale / sum); a zero row for a target outside [0, V). dlogits may be the logits themselves (f32).
template <typename T>
__global__ void dlogits_chunk_kernel(T* dlogits, const float* logits, RowStats stats,
                                     const int32_t* __restrict__ targets, int64_t rows, int64_t chunk, int64_t c0,
                                     int64_t vocab, float grad_scale) {
  const int64_t total = rows * chunk;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / chunk, c = c0 + i % chunk;
    const int32_t target = targets[r];
    float g = 0.0f;
    if (target >= 0 && target < vocab) {
      g = expf(logits[i] - stats.max[r]) * static_cast<float>(static_cast<double>(grad_scale) / stats.sum[r]);
      if (c == target) g -= grad_scale;
    }
    dlogits[i] = from_float<T>(g);
  }
}

// The workspace of a plan, carved in one order by the call and by its size query.
struct ClassifierBuffers {
  float* logits;      // (R, C)
  bf16* dlogits_bf16; // (R, C), bf16 calls only
  RowStats stats;
};
ClassifierBuffers carve_buffers(Carve& carve, const ClassifierPlan& plan, DType dtype) {
  const int64_t R = plan.block_rows, C = plan.chunk;
  ClassifierBuffers b;
  b.logits = carve.take<float>(R * C);
  b.dlogits_bf16 = dtype == DType::BF16 ? carve.take<bf16>(R * C) : nullptr;
  b.stats.max = carve.take<float>(R);
  b.stats.sum = carve.take<double>(R);
  b.stats.target_logit = carve.take<float>(R);
  return b;
}

}  // namespace

size_t classifier_workspace_bytes(int64_t rows, int64_t vocab, DType dtype) {
  Carve sizes(nullptr);
  carve_buffers(sizes, plan_for(rows, vocab, dtype, 0, 0), dtype);
  return sizes.bytes();
}

void classifier_forward_backward(Tensor losses, Tensor dx, Tensor dW, Tensor x, Tensor W, Tensor targets,
                                 double grad_scale, int64_t block_rows, int64_t vocab_chunk) {
  const int64_t vocab = W.dim(0), d = W.dim(1), n = x.numel() / d;
  const DType type = x.dtype;
  const ClassifierPlan plan = plan_for(n, vocab, type, block_rows, vocab_chunk);
  const bool backward = !dx.empty() || !dW.empty();
  const bool one_chunk = plan.chunk == vocab;

  Carve sizes(nullptr);
  carve_buffers(sizes, plan, type);
  Carve carve(workspace(sizes.bytes()));
  const ClassifierBuffers buf = carve_buffers(carve, plan, type);
  void* dlogits = type == DType::BF16 ? static_cast<void*>(buf.dlogits_bf16) : static_cast<void*>(buf.logits);
  const size_t element = dtype_size(type), w_element = dtype_size(W.dtype), dw_element = dtype_size(dW.dtype);

  for (int64_t r0 = 0; r0 < n; r0 += plan.block_rows) {
    const int64_t rows = std::min(n, r0 + plan.block_rows) - r0;
    const void* x_blk = static_cast<const char*>(x.data) + r0 * d * element;
    const int32_t* target_blk = static_cast<const int32_t*>(targets.data) + r0;
    const unsigned row_blocks = static_cast<unsigned>(std::min<int64_t>(rows, 65535));
    auto chunk_logits = [&](int64_t c0, int64_t classes) {  // buf.logits (rows, classes) = x_blk W_c^T
      linear_forward(buf.logits, DType::F32, x_blk, static_cast<const char*>(W.data) + c0 * d * w_element, type, rows,
                     d, classes, /*accumulate=*/false);
    };
    for (int64_t c0 = 0; c0 < vocab; c0 += plan.chunk) {
      const int64_t classes = std::min(vocab, c0 + plan.chunk) - c0;
      chunk_logits(c0, classes);
      launch(online_softmax_chunk_kernel, row_blocks, kThreads, 0, buf.stats, buf.logits, target_blk, rows, classes,
             c0, c0 == 0);
    }
    launch(loss_kernel, blocks_for(rows, kThreads), kThreads, 0, static_cast<float*>(losses.data) + r0, buf.stats,
           target_blk, rows, vocab);
    if (!backward) continue;
    for (int64_t c0 = 0; c0 < vocab; c0 += plan.chunk) {
      const int64_t classes = std::min(vocab, c0 + plan.chunk) - c0;
      if (!one_chunk) chunk_logits(c0, classes);
      dispatch_float(type, "classifier_forward_backward", [&](auto tag) {
        using T = typename decltype(tag)::type;
        launch(dlogits_chunk_kernel<T>, capped_blocks(rows * classes, kThreads), kThreads, 0, static_cast<T*>(dlogits),
               buf.logits, buf.stats, target_blk, rows, classes, c0, vocab, static_cast<float>(grad_scale));
      });
      const void* W_c = static_cast<const char*>(W.data) + c0 * d * w_element;
      if (!dx.empty())
        linear_backward_dx(static_cast<char*>(dx.data) + r0 * d * element, dlogits, W_c, type, rows, d, classes,
                           /*accumulate=*/c0 > 0);
      if (!dW.empty())
        linear_backward_dw(static_cast<char*>(dW.data) + c0 * d * dw_element, dW.dtype, dlogits, x_blk, type, rows, d,
                           classes);
    }
  }
}

}  // namespace l3c::ops::cuda
