// CUDA causal grouped-query attention, fused and flash-style: no T x T matrix ever exists. This file holds the
// kernels on CUDA cores (any float dtype, head_dim up to 256) and the choice between them and the tensor-core
// kernels of attention_flash.cu (bf16, head_dim 64 or 128, sm_80+), made by attention_kernel_for.
//
// Layout: q, out, dq (B, T, H, hd); k, v, dk, dv (B, T, Hkv, hd); lse (B, H, T) f32; query head h reads kv head
// h / (H / Hkv). A block works on a tile of 32 rows (query rows, or keys for dK/dV) and gives each row TPK
// consecutive threads; thread `sub` of a row holds the elements c = sub + TPK * e (e < EPT) of that row's vectors
// in registers, so a dot product is EPT multiply-adds and a log2(TPK)-step shuffle sum inside the row's group,
// and the shared-memory reads of one warp touch consecutive words (no bank conflicts). The other operand
// streams through shared memory in tiles of 32 rows (f32).
//
// Forward (grid: query tiles x H x B): for each tile of 32 keys up to the block's last row, the 32 scores of a
// row, one online-softmax update per tile (running max m, running sum l, the accumulator rescaled when the max
// grows), then acc += p v. out = acc / l, lse = m + log(l).
//
// Backward, two kernels, no atomics (FlashAttention-2's dK/dV loop, plus a separate dQ pass instead of atomic
// dQ accumulation), probabilities recomputed as p = exp(s * scale - lse) and D_i = dO_i . O_i:
//   dK/dV (grid: key tiles x Hkv x B): a block owns 32 keys of one kv head; it walks the query rows at or after
//     its first key, for every query head of the group: dV_j += p dO_i, dK_j += dS_ij q_i with
//     dS_ij = p (dO_i . v_j - D_i) / sqrt(hd).
//   dQ (grid: query tiles x H x B): a block owns 32 query rows and walks the keys up to its last row:
//     dQ_i += dS_ij k_j.
// Every output element is written by one thread, summed in a fixed order: results are deterministic.
#include <cmath>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kTile = 32;  // rows per block and keys (or query rows) per shared-memory tile

struct Dims {
  int batch, seq, heads, kv_heads, hd;
  __host__ __device__ int group() const { return heads / kv_heads; }
  // Offsets of element 0 of row t of head h in a (B, T, heads, hd) tensor and of kv head g in (B, T, Hkv, hd).
  __host__ __device__ int64_t q_offset(int b, int t, int h) const {
    return ((static_cast<int64_t>(b) * seq + t) * heads + h) * hd;
  }
  __host__ __device__ int64_t kv_offset(int b, int t, int g) const {
    return ((static_cast<int64_t>(b) * seq + t) * kv_heads + g) * hd;
  }
};

// Loads rows [t0, t0 + kTile) of head `head` (of `heads`) of a (B, T, heads, hd) tensor into tile (kTile, hd) as
// f32; rows past the sequence are zeros. Every thread of the block takes part.
template <typename T>
__device__ __forceinline__ void load_tile(float* tile, const T* src, const Dims& dim, int b, int t0, int head,
                                          int heads) {
  for (int idx = threadIdx.x; idx < kTile * dim.hd; idx += blockDim.x) {
    const int row = idx / dim.hd, c = idx % dim.hd, t = t0 + row;
    tile[idx] = t < dim.seq ? to_float(src[((static_cast<int64_t>(b) * dim.seq + t) * heads + head) * dim.hd + c]) : 0.0f;
  }
}

template <typename T, int TPK, int EPT>
__launch_bounds__(kTile * TPK)  // the block size: registers (up to 237 a thread) fit it
__global__ void attention_forward_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                                         const T* __restrict__ k, const T* __restrict__ v, Dims dim, float scale) {
  L3C_DYNAMIC_SHARED(float, smem);
  float* key_tile = smem;                    // (kTile, hd)
  float* value_tile = smem + kTile * dim.hd; // (kTile, hd)
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int g = h / dim.group();
  const int r = threadIdx.x / TPK, sub = threadIdx.x % TPK;
  const int i = tile * kTile + r;
  const bool row_valid = i < dim.seq;

  float qr[EPT], acc[EPT];
#pragma unroll
  for (int e = 0; e < EPT; ++e) {
    const int c = sub + TPK * e;
    qr[e] = row_valid && c < dim.hd ? to_float(q[dim.q_offset(b, i, h) + c]) : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  const int last_row = (tile + 1) * kTile < dim.seq ? (tile + 1) * kTile - 1 : dim.seq - 1;
  for (int j0 = 0; j0 <= last_row; j0 += kTile) {
    __syncthreads();  // the previous tile is no longer read
    load_tile(key_tile, k, dim, b, j0, g, dim.kv_heads);
    load_tile(value_tile, v, dim, b, j0, g, dim.kv_heads);
    __syncthreads();

    float s[kTile];
    float tile_max = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < kTile; ++jj) {
      float part = 0.0f;
#pragma unroll
      for (int e = 0; e < EPT; ++e) {
        const int c = sub + TPK * e;
        if (c < dim.hd) part += qr[e] * key_tile[jj * dim.hd + c];
      }
      part = group_sum<TPK>(part);
      s[jj] = j0 + jj <= i ? part * scale : -INFINITY;  // causal mask (rows past T compute harmlessly)
      tile_max = fmaxf(tile_max, s[jj]);
    }
    if (tile_max > -INFINITY) {  // some key of this tile is visible to row i
      const float new_max = fmaxf(m, tile_max);
      const float rescale = expf(m - new_max);  // 0 on the first visible tile (m = -inf)
      l *= rescale;
#pragma unroll
      for (int e = 0; e < EPT; ++e) acc[e] *= rescale;
#pragma unroll
      for (int jj = 0; jj < kTile; ++jj) {
        const float p = expf(s[jj] - new_max);  // 0 for masked keys
        l += p;
#pragma unroll
        for (int e = 0; e < EPT; ++e) {
          const int c = sub + TPK * e;
          if (c < dim.hd) acc[e] += p * value_tile[jj * dim.hd + c];
        }
      }
      m = new_max;
    }
  }

  if (row_valid) {
    const float inv = 1.0f / l;
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      const int c = sub + TPK * e;
      if (c < dim.hd) out[dim.q_offset(b, i, h) + c] = from_float<T>(acc[e] * inv);
    }
    if (sub == 0) lse[(static_cast<int64_t>(b) * dim.heads + h) * dim.seq + i] = m + logf(l);
  }
}

template <typename T, int TPK, int EPT>
__launch_bounds__(kTile * TPK)  // the block size: registers (up to 237 a thread) fit it
__global__ void attention_backward_dkv_kernel(T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ dout,
                                              const T* __restrict__ q, const T* __restrict__ k,
                                              const T* __restrict__ v, const T* __restrict__ out,
                                              const float* __restrict__ lse, Dims dim, float scale) {
  L3C_DYNAMIC_SHARED(float, smem);
  float* query_tile = smem;                     // (kTile, hd) q rows of one head
  float* dout_tile = smem + kTile * dim.hd;     // (kTile, hd) dO rows
  float* lse_tile = smem + 2 * kTile * dim.hd;  // (kTile)
  float* delta_tile = lse_tile + kTile;         // (kTile) D_i = dO_i . O_i
  const int tile = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int r = threadIdx.x / TPK, sub = threadIdx.x % TPK;
  const int j = tile * kTile + r;  // this thread group's key
  const bool key_valid = j < dim.seq;

  float kr[EPT], vr[EPT], dkr[EPT], dvr[EPT];
#pragma unroll
  for (int e = 0; e < EPT; ++e) {
    const int c = sub + TPK * e;
    const bool inside = key_valid && c < dim.hd;
    kr[e] = inside ? to_float(k[dim.kv_offset(b, j, g) + c]) : 0.0f;
    vr[e] = inside ? to_float(v[dim.kv_offset(b, j, g) + c]) : 0.0f;
    dkr[e] = 0.0f;
    dvr[e] = 0.0f;
  }

  for (int hr = 0; hr < dim.group(); ++hr) {
    const int h = g * dim.group() + hr;
    const float* lse_head = lse + (static_cast<int64_t>(b) * dim.heads + h) * dim.seq;
    // Query rows before the tile's first key see none of its keys.
    for (int i0 = tile * kTile; i0 < dim.seq; i0 += kTile) {
      __syncthreads();
      load_tile(query_tile, q, dim, b, i0, h, dim.heads);
      load_tile(dout_tile, dout, dim, b, i0, h, dim.heads);
      if (threadIdx.x < kTile) {
        const int i = i0 + static_cast<int>(threadIdx.x);
        lse_tile[threadIdx.x] = i < dim.seq ? lse_head[i] : 0.0f;
      }
      __syncthreads();
      {  // D for the tile's rows: thread group r computes row i0 + r
        const int i = i0 + r;
        float part = 0.0f;
#pragma unroll
        for (int e = 0; e < EPT; ++e) {
          const int c = sub + TPK * e;
          if (c < dim.hd && i < dim.seq) part += dout_tile[r * dim.hd + c] * to_float(out[dim.q_offset(b, i, h) + c]);
        }
        part = group_sum<TPK>(part);
        if (sub == 0) delta_tile[r] = part;
      }
      __syncthreads();
      for (int ii = 0; ii < kTile; ++ii) {
        const int i = i0 + ii;
        float score = 0.0f, dp = 0.0f;
#pragma unroll
        for (int e = 0; e < EPT; ++e) {
          const int c = sub + TPK * e;
          if (c < dim.hd) {
            score += kr[e] * query_tile[ii * dim.hd + c];
            dp += vr[e] * dout_tile[ii * dim.hd + c];
          }
        }
        score = group_sum<TPK>(score);
        dp = group_sum<TPK>(dp);
        const bool visible = key_valid && j <= i && i < dim.seq;
        const float p = visible ? expf(score * scale - lse_tile[ii]) : 0.0f;
        const float ds = p * (dp - delta_tile[ii]) * scale;
#pragma unroll
        for (int e = 0; e < EPT; ++e) {
          const int c = sub + TPK * e;
          if (c < dim.hd) {
            dvr[e] += p * dout_tile[ii * dim.hd + c];
            dkr[e] += ds * query_tile[ii * dim.hd + c];
          }
        }
      }
    }
  }

  if (key_valid) {
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      const int c = sub + TPK * e;
      if (c < dim.hd) {
        dk[dim.kv_offset(b, j, g) + c] = from_float<T>(dkr[e]);
        dv[dim.kv_offset(b, j, g) + c] = from_float<T>(dvr[e]);
      }
    }
  }
}

template <typename T, int TPK, int EPT>
__launch_bounds__(kTile * TPK)  // the block size: registers (up to 237 a thread) fit it
__global__ void attention_backward_dq_kernel(T* __restrict__ dq, const T* __restrict__ dout, const T* __restrict__ q,
                                             const T* __restrict__ k, const T* __restrict__ v,
                                             const T* __restrict__ out, const float* __restrict__ lse, Dims dim,
                                             float scale) {
  L3C_DYNAMIC_SHARED(float, smem);
  float* key_tile = smem;                     // (kTile, hd)
  float* value_tile = smem + kTile * dim.hd;  // (kTile, hd)
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int g = h / dim.group();
  const int r = threadIdx.x / TPK, sub = threadIdx.x % TPK;
  const int i = tile * kTile + r;
  const bool row_valid = i < dim.seq;

  float qr[EPT], dor[EPT], dqr[EPT];
  float delta = 0.0f;
#pragma unroll
  for (int e = 0; e < EPT; ++e) {
    const int c = sub + TPK * e;
    const bool inside = row_valid && c < dim.hd;
    qr[e] = inside ? to_float(q[dim.q_offset(b, i, h) + c]) : 0.0f;
    dor[e] = inside ? to_float(dout[dim.q_offset(b, i, h) + c]) : 0.0f;
    delta += inside ? dor[e] * to_float(out[dim.q_offset(b, i, h) + c]) : 0.0f;
    dqr[e] = 0.0f;
  }
  delta = group_sum<TPK>(delta);
  const float lse_i = row_valid ? lse[(static_cast<int64_t>(b) * dim.heads + h) * dim.seq + i] : 0.0f;

  const int last_row = (tile + 1) * kTile < dim.seq ? (tile + 1) * kTile - 1 : dim.seq - 1;
  for (int j0 = 0; j0 <= last_row; j0 += kTile) {
    __syncthreads();
    load_tile(key_tile, k, dim, b, j0, g, dim.kv_heads);
    load_tile(value_tile, v, dim, b, j0, g, dim.kv_heads);
    __syncthreads();
    for (int jj = 0; jj < kTile; ++jj) {
      float score = 0.0f, dp = 0.0f;
#pragma unroll
      for (int e = 0; e < EPT; ++e) {
        const int c = sub + TPK * e;
        if (c < dim.hd) {
          score += qr[e] * key_tile[jj * dim.hd + c];
          dp += dor[e] * value_tile[jj * dim.hd + c];
        }
      }
      score = group_sum<TPK>(score);
      dp = group_sum<TPK>(dp);
      const bool visible = row_valid && j0 + jj <= i;
      const float p = visible ? expf(score * scale - lse_i) : 0.0f;
      const float ds = p * (dp - delta) * scale;
#pragma unroll
      for (int e = 0; e < EPT; ++e) {
        const int c = sub + TPK * e;
        if (c < dim.hd) dqr[e] += ds * key_tile[jj * dim.hd + c];
      }
    }
  }

  if (row_valid) {
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      const int c = sub + TPK * e;
      if (c < dim.hd) dq[dim.q_offset(b, i, h) + c] = from_float<T>(dqr[e]);
    }
  }
}

Dims dims_of(const Tensor& q, const Tensor& k) {
  auto narrow = [](int64_t v) {
    L3C_CHECK(v > 0 && v <= 65535 * 32, "ops::attention: dimension {} is too large for the CUDA kernels", v);
    return static_cast<int>(v);
  };
  return {narrow(q.dim(0)), narrow(q.dim(1)), narrow(q.dim(2)), narrow(k.dim(2)), narrow(q.dim(3))};
}

template <int V>
using Int = std::integral_constant<int, V>;

// Calls fn(Int<TPK>, Int<EPT>) for the head size: TPK threads per row, EPT elements per thread (TPK * EPT >= hd,
// the smallest instantiated size).
template <typename Fn>
void dispatch_head_dim(int hd, Fn&& fn) {
  if (hd <= 32) return fn(Int<4>{}, Int<8>{});
  if (hd <= 64) return fn(Int<4>{}, Int<16>{});
  if (hd <= 128) return fn(Int<4>{}, Int<32>{});
  if (hd <= 256) return fn(Int<8>{}, Int<32>{});
  L3C_CHECK(false, "ops::attention: head_dim {} is above 256, the largest the CUDA kernels support", hd);
}

void attention_forward_cuda_cores(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) {
  const Dims dim = dims_of(q, k);
  L3C_CHECK(dim.batch <= 65535 && dim.heads <= 65535, "ops::attention_forward: batch {} or heads {} above 65535",
            dim.batch, dim.heads);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim.hd)));
  const dim3 grid((dim.seq + kTile - 1) / kTile, dim.heads, dim.batch);
  const size_t shared = 2 * kTile * dim.hd * sizeof(float);
  dispatch_float(q.dtype, "attention_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_head_dim(dim.hd, [&](auto tpk, auto ept) {
      constexpr int TPK = decltype(tpk)::value, EPT = decltype(ept)::value;
      auto* kernel = attention_forward_kernel<T, TPK, EPT>;
      allow_shared_bytes(kernel, shared);
      launch(kernel, grid, kTile * TPK, shared, static_cast<T*>(out.data), static_cast<float*>(lse.data),
             static_cast<const T*>(q.data), static_cast<const T*>(k.data), static_cast<const T*>(v.data), dim, scale);
    });
  });
}

void attention_backward_cuda_cores(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                   Tensor out, Tensor lse) {
  const Dims dim = dims_of(q, k);
  L3C_CHECK(dim.batch <= 65535 && dim.heads <= 65535, "ops::attention_backward: batch {} or heads {} above 65535",
            dim.batch, dim.heads);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim.hd)));
  const unsigned tiles = (dim.seq + kTile - 1) / kTile;
  const size_t kv_shared = (2 * kTile * dim.hd + 2 * kTile) * sizeof(float);
  const size_t q_shared = 2 * kTile * dim.hd * sizeof(float);
  dispatch_float(q.dtype, "attention_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_head_dim(dim.hd, [&](auto tpk, auto ept) {
      constexpr int TPK = decltype(tpk)::value, EPT = decltype(ept)::value;
      auto* dkv_kernel = attention_backward_dkv_kernel<T, TPK, EPT>;
      allow_shared_bytes(dkv_kernel, kv_shared);
      launch(dkv_kernel, dim3(tiles, dim.kv_heads, dim.batch), kTile * TPK, kv_shared, static_cast<T*>(dk.data),
             static_cast<T*>(dv.data), static_cast<const T*>(dout.data), static_cast<const T*>(q.data),
             static_cast<const T*>(k.data), static_cast<const T*>(v.data), static_cast<const T*>(out.data),
             static_cast<const float*>(lse.data), dim, scale);
      auto* dq_kernel = attention_backward_dq_kernel<T, TPK, EPT>;
      allow_shared_bytes(dq_kernel, q_shared);
      launch(dq_kernel, dim3(tiles, dim.heads, dim.batch), kTile * TPK, q_shared, static_cast<T*>(dq.data),
             static_cast<const T*>(dout.data), static_cast<const T*>(q.data), static_cast<const T*>(k.data),
             static_cast<const T*>(v.data), static_cast<const T*>(out.data), static_cast<const float*>(lse.data), dim,
             scale);
    });
  });
}

}  // namespace

AttentionKernel attention_kernel_for(DType dtype, int64_t head_dim) {
  return tensor_core_attention_supports(dtype, head_dim) && gpu_has_bf16_tensor_cores() ? AttentionKernel::TensorCores
                                                                                        : AttentionKernel::CudaCores;
}

void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, AttentionKernel kernel) {
  if (kernel == AttentionKernel::TensorCores) return attention_forward_tensor_cores(out, lse, q, k, v);
  attention_forward_cuda_cores(out, lse, q, k, v);
}

void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                        Tensor lse, AttentionKernel kernel) {
  if (kernel == AttentionKernel::TensorCores)
    return attention_backward_tensor_cores(dq, dk, dv, dout, q, k, v, out, lse);
  attention_backward_cuda_cores(dq, dk, dv, dout, q, k, v, out, lse);
}

void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) {
  attention_forward(out, lse, q, k, v, attention_kernel_for(q.dtype, q.dim(3)));
}

void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                        Tensor lse) {
  attention_backward(dq, dk, dv, dout, q, k, v, out, lse, attention_kernel_for(q.dtype, q.dim(3)));
}

}  // namespace l3c::ops::cuda
