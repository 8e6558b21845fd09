// CUDA L3 lookup attention (MODEL.md "Large Lookup Layer") over rows grouped by token: the rows of token u are
// x[group_offsets[u] .. group_offsets[u + 1]) and meet its table rows K_u = w_k[row_offsets[u] ..
// row_offsets[u + 1]) (n_u of them) and V_u likewise:
//   forward   p = softmax(K_u x_i) (n_u),  e_i = V_u^T p
//   backward  dp_j = de_i . V_j,  ds_j = p_j (dp_j - sum_j' p_j' dp_j'),  dx_i = sum_j ds_j K_j,
//             dK_u[j] += sum_i ds_ij x_i,  dV_u[j] += sum_i p_ij de_i
// Row kernels run one block per grouped row (its token found by binary search over group_offsets): scores by
// warp dot products into shared memory, the softmax by the block tree, and one thread per output column sums
// over the token's rows in order. The table gradients run one block per table row (its token found over
// row_offsets); each row sums over its token's positions in order, so each gradient element has one owner and
// no atomics are needed. The softmax gradients ds (N, k) pass through the workspace. These CUDA-core kernels take
// f32 and bf16 of any shape; l3_grouped.cu holds the tensor-core kernels (bf16), which read each token's K_u, V_u
// once per tile of its positions instead of once per position. l3_kernel_for chooses.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 128;

// dst[j] = query . table[j] (dim) for j < rows, one warp per table row, into shared memory. The block waits before
// (dst may still be read for the previous grouped row) and after.
template <typename T>
__device__ __forceinline__ void table_dots(float* dst, const T* query, const T* table, int64_t rows, int64_t dim) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();
  for (int64_t j = warp; j < rows; j += warps) {
    const T* row = table + j * dim;
    float part = 0.0f;
    for (int64_t c = lane; c < dim; c += 32) part += to_float(query[c]) * to_float(row[c]);
    part = warp_sum(part);
    if (lane == 0) dst[j] = part;
  }
  __syncthreads();
}

template <typename T>
__global__ void l3_forward_kernel(T* __restrict__ out, float* __restrict__ probs, const T* __restrict__ x,
                                  const T* __restrict__ w_k, const T* __restrict__ w_v,
                                  const int32_t* __restrict__ group_offsets, const int32_t* __restrict__ row_offsets,
                                  int64_t n, int64_t groups, int64_t d, int64_t d_emb, int64_t width) {
  L3C_DYNAMIC_SHARED(float, p);  // (width) scores, then probabilities
  __shared__ float max_scratch[32];
  __shared__ float sum_scratch[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t u = find_group(group_offsets, groups, i);
    const int64_t r0 = row_offsets[u], rows = row_offsets[u + 1] - r0;
    float* probs_i = probs + i * width;
    T* out_i = out + i * d_emb;
    if (rows < 1 || rows > width) {  // an allocation the probs cannot hold: NaN instead of a wrong answer
      for (int64_t j = threadIdx.x; j < width; j += blockDim.x) probs_i[j] = NAN;
      for (int64_t c = threadIdx.x; c < d_emb; c += blockDim.x) out_i[c] = from_float<T>(NAN);
      continue;
    }
    table_dots(p, x + i * d, w_k + r0 * d, rows, d);  // scores
    float local_max = -INFINITY;
    for (int64_t j = threadIdx.x; j < rows; j += blockDim.x) local_max = fmaxf(local_max, p[j]);
    const float row_max = block_max(local_max, max_scratch);
    float local_sum = 0.0f;
    for (int64_t j = threadIdx.x; j < rows; j += blockDim.x) {
      const float e = expf(p[j] - row_max);
      p[j] = e;
      local_sum += e;
    }
    const float inv = 1.0f / block_sum(local_sum, sum_scratch);
    for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
      const float prob = j < rows ? p[j] * inv : 0.0f;
      if (j < rows) p[j] = prob;
      probs_i[j] = prob;
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < d_emb; c += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = 0; j < rows; ++j) acc += p[j] * to_float(w_v[(r0 + j) * d_emb + c]);
      out_i[c] = from_float<T>(acc);
    }
  }
}

// Per grouped row: ds (N, width) and dx (overwritten).
template <typename T>
__global__ void l3_backward_rows_kernel(T* __restrict__ dx, float* __restrict__ ds, const T* __restrict__ dout,
                                        const T* __restrict__ w_k, const T* __restrict__ w_v,
                                        const float* __restrict__ probs, const int32_t* __restrict__ group_offsets,
                                        const int32_t* __restrict__ row_offsets, int64_t n, int64_t groups, int64_t d,
                                        int64_t d_emb, int64_t width) {
  L3C_DYNAMIC_SHARED(float, g);  // (width) dp, then ds
  __shared__ float sum_scratch[32];
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t u = find_group(group_offsets, groups, i);
    const int64_t r0 = row_offsets[u], rows = row_offsets[u + 1] - r0;
    const float* p_i = probs + i * width;
    const T* de_i = dout + i * d_emb;
    T* dx_i = dx + i * d;
    if (rows < 1 || rows > width) {
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) dx_i[c] = from_float<T>(NAN);
      continue;
    }
    table_dots(g, de_i, w_v + r0 * d_emb, rows, d_emb);  // dp
    float local = 0.0f;
    for (int64_t j = threadIdx.x; j < rows; j += blockDim.x) local += p_i[j] * g[j];
    const float dot = block_sum(local, sum_scratch);
    for (int64_t j = threadIdx.x; j < rows; j += blockDim.x) {
      const float s = p_i[j] * (g[j] - dot);
      g[j] = s;
      ds[i * width + j] = s;
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = 0; j < rows; ++j) acc += g[j] * to_float(w_k[(r0 + j) * d + c]);
      dx_i[c] = from_float<T>(acc);
    }
  }
}

// Per table row: dV += sum_i p_ij de_i, then dK += sum_i ds_ij x_i (the order the CPU adds them in, which matters
// when the tables are tied and both land in one row).
template <typename T, typename G>
__global__ void l3_backward_table_kernel(G* dw_k, G* dw_v, const T* __restrict__ x, const T* __restrict__ dout,
                                         const float* __restrict__ probs, const float* __restrict__ ds,
                                         const int32_t* __restrict__ group_offsets,
                                         const int32_t* __restrict__ row_offsets, int64_t table_rows, int64_t groups,
                                         int64_t d, int64_t d_emb, int64_t width) {
  const bool tied = dw_k == dw_v;
  for (int64_t r = blockIdx.x; r < table_rows; r += gridDim.x) {
    const int64_t u = find_group(row_offsets, groups, r);
    const int64_t j = r - row_offsets[u];
    const int64_t g0 = group_offsets[u], g1 = group_offsets[u + 1];
    if (g0 == g1 || j >= width) continue;  // the token is not in the batch
    if (tied) {  // d_emb == d
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        float value_sum = 0.0f, key_sum = 0.0f;
        for (int64_t i = g0; i < g1; ++i) {
          value_sum += probs[i * width + j] * to_float(dout[i * d_emb + c]);
          key_sum += ds[i * width + j] * to_float(x[i * d + c]);
        }
        dw_k[r * d + c] = from_float<G>(to_float(dw_k[r * d + c]) + value_sum + key_sum);
      }
    } else {
      for (int64_t c = threadIdx.x; c < d_emb; c += blockDim.x) {
        float acc = 0.0f;
        for (int64_t i = g0; i < g1; ++i) acc += probs[i * width + j] * to_float(dout[i * d_emb + c]);
        dw_v[r * d_emb + c] = from_float<G>(to_float(dw_v[r * d_emb + c]) + acc);
      }
      for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int64_t i = g0; i < g1; ++i) acc += ds[i * width + j] * to_float(x[i * d + c]);
        dw_k[r * d + c] = from_float<G>(to_float(dw_k[r * d + c]) + acc);
      }
    }
  }
}

unsigned grid_for(int64_t items) { return static_cast<unsigned>(items < kMaxGridBlocks ? items : kMaxGridBlocks); }

void l3_lookup_forward_cuda_cores(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets) {
  const int64_t d = x.dim(-1), n = x.numel() / d, d_emb = w_v.dim(1), width = probs.dim(-1);
  const int64_t groups = group_offsets.numel() - 1;
  const size_t shared = static_cast<size_t>(width) * sizeof(float);
  dispatch_float(x.dtype, "l3_lookup_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto* kernel = l3_forward_kernel<T>;
    allow_shared_bytes(kernel, shared);
    launch(kernel, grid_for(n), kThreads, shared, static_cast<T*>(out.data), static_cast<float*>(probs.data),
           static_cast<const T*>(x.data), static_cast<const T*>(w_k.data), static_cast<const T*>(w_v.data),
           static_cast<const int32_t*>(group_offsets.data), static_cast<const int32_t*>(row_offsets.data), n, groups,
           d, d_emb, width);
  });
}

void l3_lookup_backward_cuda_cores(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k,
                                   Tensor w_v, Tensor probs, Tensor group_offsets, Tensor row_offsets) {
  const int64_t d = x.dim(-1), n = x.numel() / d, d_emb = w_v.dim(1), width = probs.dim(-1);
  const int64_t groups = group_offsets.numel() - 1, table_rows = w_k.dim(0);
  float* ds = static_cast<float*>(workspace(static_cast<size_t>(n * width) * sizeof(float)));
  const size_t shared = static_cast<size_t>(width) * sizeof(float);
  dispatch_gradient(x.dtype, dw_k.dtype, "l3_lookup_backward", [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    const int32_t* go = static_cast<const int32_t*>(group_offsets.data);
    const int32_t* ro = static_cast<const int32_t*>(row_offsets.data);
    auto* rows_kernel = l3_backward_rows_kernel<T>;
    allow_shared_bytes(rows_kernel, shared);
    launch(rows_kernel, grid_for(n), kThreads, shared, static_cast<T*>(dx.data), ds, static_cast<const T*>(dout.data),
           static_cast<const T*>(w_k.data), static_cast<const T*>(w_v.data), static_cast<const float*>(probs.data), go,
           ro, n, groups, d, d_emb, width);
    launch(l3_backward_table_kernel<T, G>, grid_for(table_rows), kThreads, 0, static_cast<G*>(dw_k.data),
           static_cast<G*>(dw_v.data), static_cast<const T*>(x.data), static_cast<const T*>(dout.data),
           static_cast<const float*>(probs.data), ds, go, ro, table_rows, groups, d, d_emb, width);
  });
}

}  // namespace

bool tensor_core_l3_supports(DType dtype, int64_t d, int64_t d_emb) {
  return dtype == DType::BF16 && d > 0 && d_emb > 0 && d % 16 == 0 && d_emb % 16 == 0;
}

L3Kernel l3_kernel_for(DType dtype, int64_t d, int64_t d_emb) {
  return tensor_core_l3_supports(dtype, d, d_emb) && gpu_has_bf16_tensor_cores() ? L3Kernel::TensorCores
                                                                                 : L3Kernel::CudaCores;
}

void l3_lookup_forward(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets, L3Kernel kernel) {
  if (kernel == L3Kernel::TensorCores)
    return l3_lookup_forward_tensor_cores(out, probs, x, w_k, w_v, group_offsets, row_offsets);
  l3_lookup_forward_cuda_cores(out, probs, x, w_k, w_v, group_offsets, row_offsets);
}

void l3_lookup_backward(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v,
                        Tensor probs, Tensor group_offsets, Tensor row_offsets, L3Kernel kernel) {
  if (kernel == L3Kernel::TensorCores)
    return l3_lookup_backward_tensor_cores(dx, dw_k, dw_v, dout, x, w_k, w_v, probs, group_offsets, row_offsets);
  l3_lookup_backward_cuda_cores(dx, dw_k, dw_v, dout, x, w_k, w_v, probs, group_offsets, row_offsets);
}

void l3_lookup_forward(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets) {
  l3_lookup_forward(out, probs, x, w_k, w_v, group_offsets, row_offsets,
                    l3_kernel_for(x.dtype, x.dim(-1), w_v.dim(1)));
}

void l3_lookup_backward(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v,
                        Tensor probs, Tensor group_offsets, Tensor row_offsets) {
  l3_lookup_backward(dx, dw_k, dw_v, dout, x, w_k, w_v, probs, group_offsets, row_offsets,
                     l3_kernel_for(x.dtype, x.dim(-1), w_v.dim(1)));
}

}  // namespace l3c::ops::cuda
