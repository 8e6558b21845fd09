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

using Dims = AttentionDims;

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

// A thread group of TPK threads holds one row of hd values, EPT a thread: thread `sub` holds columns sub + TPK e.
// Loads that row from src (row start; zeros where !valid or past hd).
template <typename T, int TPK, int EPT>
__device__ __forceinline__ void load_row(float (&row)[EPT], const T* src, int sub, int hd, bool valid) {
#pragma unroll
  for (int e = 0; e < EPT; ++e) {
    const int c = sub + TPK * e;
    row[e] = valid && c < hd ? to_float(src[c]) : 0.0f;
  }
}
// The dot product of the group's row with a row of a shared tile, summed over the group (every thread gets it).
template <int TPK, int EPT>
__device__ __forceinline__ float row_dot(const float (&row)[EPT], const float* tile_row, int sub, int hd) {
  float part = 0.0f;
#pragma unroll
  for (int e = 0; e < EPT; ++e) {
    const int c = sub + TPK * e;
    if (c < hd) part += row[e] * tile_row[c];
  }
  return group_sum<TPK>(part);
}
// row += weight * tile_row.
template <int TPK, int EPT>
__device__ __forceinline__ void add_scaled_row(float (&row)[EPT], float weight, const float* tile_row, int sub,
                                               int hd) {
#pragma unroll
  for (int e = 0; e < EPT; ++e) {
    const int c = sub + TPK * e;
    if (c < hd) row[e] += weight * tile_row[c];
  }
}
// dst (row start) = the group's row times scale.
template <typename T, int TPK, int EPT>
__device__ __forceinline__ void store_row(T* dst, const float (&row)[EPT], float scale, int sub, int hd) {
#pragma unroll
  for (int e = 0; e < EPT; ++e) {
    const int c = sub + TPK * e;
    if (c < hd) dst[c] = from_float<T>(row[e] * scale);
  }
}

// A thread of the forward and dQ grids (query tiles x H x B): thread `sub` of the TPK of its row, query row i (valid:
// i < T) of head h (kv head g) of batch b; last_row: the block's last row below T.
struct QueryRowThread {
  int h, b, g, sub, i;
  bool valid;
  int last_row;
};
template <int TPK>
__device__ __forceinline__ QueryRowThread query_row_thread(const Dims& dim) {
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int r = threadIdx.x / TPK, sub = threadIdx.x % TPK;
  const int i = tile * kTile + r;
  const int last_row = (tile + 1) * kTile < dim.seq ? (tile + 1) * kTile - 1 : dim.seq - 1;
  return {h, b, h / dim.group(), sub, i, i < dim.seq, last_row};
}

// Keys and values j0 .. j0 + kTile - 1 of kv head g into key_tile and value_tile, between two barriers: every thread
// is done with the previous tiles before, and the new ones are complete after.
template <typename T>
__device__ __forceinline__ void load_key_value_tiles(float* key_tile, float* value_tile, const T* k, const T* v,
                                                     const Dims& dim, int b, int j0, int g) {
  __syncthreads();
  load_tile(key_tile, k, dim, b, j0, g, dim.kv_heads);
  load_tile(value_tile, v, dim, b, j0, g, dim.kv_heads);
  __syncthreads();
}

template <typename T, int TPK, int EPT>
__launch_bounds__(kTile * TPK)  // the block size: registers (up to 237 a thread) fit it
__global__ void attention_forward_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                                         const T* __restrict__ k, const T* __restrict__ v, Dims dim, float scale) {
  L3C_DYNAMIC_SHARED(float, smem);
  float* key_tile = smem;                    // (kTile, hd)
  float* value_tile = smem + kTile * dim.hd; // (kTile, hd)
  const auto [h, b, g, sub, i, row_valid, last_row] = query_row_thread<TPK>(dim);

  float qr[EPT], acc[EPT] = {};
  load_row<T, TPK>(qr, q + dim.q_offset(b, i, h), sub, dim.hd, row_valid);
  float m = -INFINITY, l = 0.0f;

  for (int j0 = 0; j0 <= last_row; j0 += kTile) {
    load_key_value_tiles(key_tile, value_tile, k, v, dim, b, j0, g);

    float s[kTile];
    float tile_max = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < kTile; ++jj) {
      const float part = row_dot<TPK>(qr, key_tile + jj * dim.hd, sub, dim.hd);
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
        add_scaled_row<TPK>(acc, p, value_tile + jj * dim.hd, sub, dim.hd);
      }
      m = new_max;
    }
  }

  if (row_valid) {
    store_row<T, TPK>(out + dim.q_offset(b, i, h), acc, 1.0f / l, sub, dim.hd);
    if (sub == 0) lse[dim.lse_offset(b, h, i)] = m + logf(l);
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

  float kr[EPT], vr[EPT], dkr[EPT] = {}, dvr[EPT] = {};
  load_row<T, TPK>(kr, k + dim.kv_offset(b, j, g), sub, dim.hd, key_valid);
  load_row<T, TPK>(vr, v + dim.kv_offset(b, j, g), sub, dim.hd, key_valid);

  for (int hr = 0; hr < dim.group(); ++hr) {
    const int h = g * dim.group() + hr;
    const float* lse_head = lse + dim.lse_offset(b, h, 0);
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
        const float score = row_dot<TPK>(kr, query_tile + ii * dim.hd, sub, dim.hd);
        const float dp = row_dot<TPK>(vr, dout_tile + ii * dim.hd, sub, dim.hd);
        const bool visible = key_valid && j <= i && i < dim.seq;
        const float p = visible ? expf(score * scale - lse_tile[ii]) : 0.0f;
        const float ds = p * (dp - delta_tile[ii]) * scale;
        add_scaled_row<TPK>(dvr, p, dout_tile + ii * dim.hd, sub, dim.hd);
        add_scaled_row<TPK>(dkr, ds, query_tile + ii * dim.hd, sub, dim.hd);
      }
    }
  }

  if (key_valid) {
    store_row<T, TPK>(dk + dim.kv_offset(b, j, g), dkr, 1.0f, sub, dim.hd);
    store_row<T, TPK>(dv + dim.kv_offset(b, j, g), dvr, 1.0f, sub, dim.hd);
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
  const auto [h, b, g, sub, i, row_valid, last_row] = query_row_thread<TPK>(dim);

  float qr[EPT], dor[EPT], dqr[EPT] = {};
  float delta = 0.0f;  // D_i = dO_i . O_i, with the loads of the row (one loop, as the compiler contracts it)
#pragma unroll
  for (int e = 0; e < EPT; ++e) {
    const int c = sub + TPK * e;
    const bool inside = row_valid && c < dim.hd;
    qr[e] = inside ? to_float(q[dim.q_offset(b, i, h) + c]) : 0.0f;
    dor[e] = inside ? to_float(dout[dim.q_offset(b, i, h) + c]) : 0.0f;
    delta += inside ? dor[e] * to_float(out[dim.q_offset(b, i, h) + c]) : 0.0f;
  }
  delta = group_sum<TPK>(delta);
  const float lse_i = row_valid ? lse[dim.lse_offset(b, h, i)] : 0.0f;

  for (int j0 = 0; j0 <= last_row; j0 += kTile) {
    load_key_value_tiles(key_tile, value_tile, k, v, dim, b, j0, g);
    for (int jj = 0; jj < kTile; ++jj) {
      const float score = row_dot<TPK>(qr, key_tile + jj * dim.hd, sub, dim.hd);
      const float dp = row_dot<TPK>(dor, value_tile + jj * dim.hd, sub, dim.hd);
      const bool visible = row_valid && j0 + jj <= i;
      const float p = visible ? expf(score * scale - lse_i) : 0.0f;
      const float ds = p * (dp - delta) * scale;
      add_scaled_row<TPK>(dqr, ds, key_tile + jj * dim.hd, sub, dim.hd);
    }
  }

  if (row_valid) store_row<T, TPK>(dq + dim.q_offset(b, i, h), dqr, 1.0f, sub, dim.hd);
}

// The dimensions of q and k, with batch and heads within the grid's limits (`op` names the call in the error).
Dims dims_of(const Tensor& q, const Tensor& k, const char* op) {
  const Dims dim = attention_dims(q, k, 65535 * kTile, "CUDA kernels");
  L3C_CHECK(dim.batch <= 65535 && dim.heads <= 65535, "ops::{}: batch {} or heads {} above 65535", op, dim.batch,
            dim.heads);
  return dim;
}

template <int V>
using Int = std::integral_constant<int, V>;

// Calls fn(TypeTag<T>, Int<TPK>, Int<EPT>) for the dtype T of the call `op` and the head size: TPK threads per row,
// EPT elements per thread (TPK * EPT >= hd, the smallest instantiated size).
template <typename Fn>
void dispatch_kernel(DType dtype, int hd, const char* op, Fn&& fn) {
  dispatch_float(dtype, op, [&](auto tag) {
    if (hd <= 32) return fn(tag, Int<4>{}, Int<8>{});
    if (hd <= 64) return fn(tag, Int<4>{}, Int<16>{});
    if (hd <= 128) return fn(tag, Int<4>{}, Int<32>{});
    if (hd <= 256) return fn(tag, Int<8>{}, Int<32>{});
    L3C_CHECK(false, "ops::attention: head_dim {} is above 256, the largest the CUDA kernels support", hd);
  });
}

void attention_forward_cuda_cores(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) {
  const Dims dim = dims_of(q, k, "attention_forward");
  const float scale = dim.scale();
  const dim3 grid((dim.seq + kTile - 1) / kTile, dim.heads, dim.batch);
  const size_t shared = 2 * kTile * dim.hd * sizeof(float);
  dispatch_kernel(q.dtype, dim.hd, "attention_forward", [&](auto tag, auto tpk, auto ept) {
    using T = typename decltype(tag)::type;
    constexpr int TPK = decltype(tpk)::value, EPT = decltype(ept)::value;
    launch_with_shared(attention_forward_kernel<T, TPK, EPT>, grid, kTile * TPK, shared, static_cast<T*>(out.data),
                       static_cast<float*>(lse.data), static_cast<const T*>(q.data), static_cast<const T*>(k.data),
                       static_cast<const T*>(v.data), dim, scale);
  });
}

void attention_backward_cuda_cores(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                   Tensor out, Tensor lse) {
  const Dims dim = dims_of(q, k, "attention_backward");
  const float scale = dim.scale();
  const unsigned tiles = (dim.seq + kTile - 1) / kTile;
  const size_t kv_shared = (2 * kTile * dim.hd + 2 * kTile) * sizeof(float);
  const size_t q_shared = 2 * kTile * dim.hd * sizeof(float);
  dispatch_kernel(q.dtype, dim.hd, "attention_backward", [&](auto tag, auto tpk, auto ept) {
    using T = typename decltype(tag)::type;
    constexpr int TPK = decltype(tpk)::value, EPT = decltype(ept)::value;
    launch_with_shared(attention_backward_dkv_kernel<T, TPK, EPT>, dim3(tiles, dim.kv_heads, dim.batch), kTile * TPK,
                       kv_shared, static_cast<T*>(dk.data), static_cast<T*>(dv.data),
                       static_cast<const T*>(dout.data), static_cast<const T*>(q.data), static_cast<const T*>(k.data),
                       static_cast<const T*>(v.data), static_cast<const T*>(out.data),
                       static_cast<const float*>(lse.data), dim, scale);
    launch_with_shared(attention_backward_dq_kernel<T, TPK, EPT>, dim3(tiles, dim.heads, dim.batch), kTile * TPK,
                       q_shared, static_cast<T*>(dq.data), static_cast<const T*>(dout.data),
                       static_cast<const T*>(q.data), static_cast<const T*>(k.data), static_cast<const T*>(v.data),
                       static_cast<const T*>(out.data), static_cast<const float*>(lse.data), dim, scale);
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
