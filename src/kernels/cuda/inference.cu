// CUDA ops of the inference session (ops.h "inference"): RoPE from a start position per batch row, writing new
// keys and values into the KV cache, and attention of new query rows against the cache.
//
// RoPE computes each pair's angle in double, as rope.cu's table does (same rounding to f32), so a position
// rotates the same here as in training. Attention: one block per query row (b, t, h); the block walks the
// cached keys in chunks of blockDim keys (one key per thread: its score, a block max and sum), keeps an online
// softmax across chunks, and accumulates the output in shared memory, one head dimension per thread. Sums run
// in a fixed order (block reductions over fixed trees, keys in position order): results do not depend on timing.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kAttentionThreads = 128;

template <typename T>
__global__ void rope_at_kernel(T* __restrict__ x, const int32_t* __restrict__ start, int64_t batch, int64_t positions,
                               int64_t heads, int64_t head_dim, double theta) {
  rotate_pairs(x, batch, positions, heads, head_dim, [&](int64_t b, int64_t t, int64_t i) {
    const double angle = rope_angle(t + start[b], i, head_dim, theta);
    return RopeTurn{static_cast<float>(cos(angle)), static_cast<float>(sin(angle))};
  });
}

// cache (S, Tmax, row) [slots[b], start[b] + t] = x (B, T, row) [b, t], one element per thread.
template <typename T>
__global__ void kv_cache_write_kernel(T* __restrict__ cache, const T* __restrict__ x, const int32_t* __restrict__ slots,
                                      const int32_t* __restrict__ start, int64_t batch, int64_t positions,
                                      int64_t max_positions, int64_t row) {
  const int64_t n = batch * positions * row;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = e % row, bt = e / row, b = bt / positions, t = bt % positions;
    cache[(static_cast<int64_t>(slots[b]) * max_positions + start[b] + t) * row + c] = x[e];
  }
}

// Block (b * T + t) * H + h: query row q[b, t, h] against cache row slots[b], keys 0 .. start[b] + t.
// Shared memory: kAttentionThreads probabilities, head_dim accumulators, 32 reduction slots.
template <typename T>
__global__ void attention_cached_kernel(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k_cache,
                                        const T* __restrict__ v_cache, const int32_t* __restrict__ slots,
                                        const int32_t* __restrict__ start, int64_t positions, int64_t heads,
                                        int64_t kv_heads, int64_t head_dim, int64_t max_positions, float scale) {
  L3C_DYNAMIC_SHARED(float, shared);
  float* probs = shared;                      // (blockDim)
  float* acc = probs + blockDim.x;            // (head_dim)
  float* scratch = acc + head_dim;            // (32)
  const int64_t row = blockIdx.x, h = row % heads, bt = row / heads, b = bt / positions, t = bt % positions;
  const int64_t g = h / (heads / kv_heads), keys = start[b] + t + 1, kv_stride = kv_heads * head_dim;
  const T* q_row = q + row * head_dim;
  const T* k_slot = k_cache + static_cast<int64_t>(slots[b]) * max_positions * kv_stride + g * head_dim;
  const T* v_slot = v_cache + static_cast<int64_t>(slots[b]) * max_positions * kv_stride + g * head_dim;
  for (int64_t c = threadIdx.x; c < head_dim; c += blockDim.x) acc[c] = 0.0f;
  float running_max = -INFINITY, running_sum = 0.0f;
  for (int64_t j0 = 0; j0 < keys; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    float score = -INFINITY;
    if (j < keys) {
      const T* k_row = k_slot + j * kv_stride;
      float dot = 0.0f;
      for (int64_t c = 0; c < head_dim; ++c) dot += to_float(q_row[c]) * to_float(k_row[c]);
      score = dot * scale;
    }
    const float new_max = fmaxf(running_max, block_max(score, scratch));
    const float p = j < keys ? expf(score - new_max) : 0.0f;
    const float rescale = expf(running_max - new_max);  // 0 on the first chunk
    probs[threadIdx.x] = p;
    running_sum = running_sum * rescale + block_sum(p, scratch);  // block_sum's barriers publish probs
    running_max = new_max;
    const int64_t chunk = keys - j0 < static_cast<int64_t>(blockDim.x) ? keys - j0 : blockDim.x;
    for (int64_t c = threadIdx.x; c < head_dim; c += blockDim.x) {
      float sum = acc[c] * rescale;
      for (int64_t jj = 0; jj < chunk; ++jj) sum += probs[jj] * to_float(v_slot[(j0 + jj) * kv_stride + c]);
      acc[c] = sum;
    }
    __syncthreads();  // probs is rewritten by the next chunk
  }
  for (int64_t c = threadIdx.x; c < head_dim; c += blockDim.x) out[row * head_dim + c] = from_float<T>(acc[c] / running_sum);
}

}  // namespace

void rope_forward_at(Tensor x, double theta, Tensor start) {
  dispatch_float(x.dtype, "rope_forward_at", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(rope_at_kernel<T>, capped_blocks(x.numel() / 2, kThreads), kThreads, 0, static_cast<T*>(x.data),
           static_cast<const int32_t*>(start.data), x.dim(0), x.dim(1), x.dim(2), x.dim(3), theta);
  });
}

void kv_cache_write(Tensor cache, Tensor x, Tensor slots, Tensor start) {
  dispatch_float(x.dtype, "kv_cache_write", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(kv_cache_write_kernel<T>, capped_blocks(x.numel(), kThreads), kThreads, 0, static_cast<T*>(cache.data),
           static_cast<const T*>(x.data), static_cast<const int32_t*>(slots.data),
           static_cast<const int32_t*>(start.data), x.dim(0), x.dim(1), cache.dim(1), x.dim(2) * x.dim(3));
  });
}

void attention_cached(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor start) {
  const int64_t rows = q.dim(0) * q.dim(1) * q.dim(2), head_dim = q.dim(3);
  const size_t shared_bytes = (kAttentionThreads + head_dim + 32) * sizeof(float);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  dispatch_float(q.dtype, "attention_cached", [&](auto tag) {
    using T = typename decltype(tag)::type;
    allow_shared_bytes(attention_cached_kernel<T>, shared_bytes);
    launch(attention_cached_kernel<T>, static_cast<unsigned>(rows), kAttentionThreads, shared_bytes,
           static_cast<T*>(out.data), static_cast<const T*>(q.data), static_cast<const T*>(k_cache.data),
           static_cast<const T*>(v_cache.data), static_cast<const int32_t*>(slots.data),
           static_cast<const int32_t*>(start.data), q.dim(1), q.dim(2), k_cache.dim(2), head_dim, k_cache.dim(1),
           scale);
  });
}

}  // namespace l3c::ops::cuda
