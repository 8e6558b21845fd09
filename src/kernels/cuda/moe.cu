// CUDA Mixture-of-Experts ops (kernels/ops.h, Mixtral semantics): the router (softmax, top-k, renormalised
// weights) and its backward, column sums, the pair indices of the dispatch, the grouped products (one cuBLAS
// product per expert, the group sizes read back to the host first) and the combine with its backward.
// The router runs one thread per token (E is small); the other kernels give every output element one thread,
// summed in slot or row order: no atomics. The router is f32 only; the rest takes f32 or bf16.
#include <algorithm>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;

// Row n: probs = softmax(logits), lse, and the top_k experts by probability (descending, ties to the lower
// index), with their probabilities as weights, divided by their sum when normalize.
__global__ void router_forward_kernel(float* __restrict__ probs, float* __restrict__ lse, int32_t* __restrict__ experts,
                                      float* __restrict__ weights, const float* __restrict__ logits, int64_t n,
                                      int64_t num_experts, int64_t top_k, bool normalize) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* z = logits + row * num_experts;
    float* p = probs + row * num_experts;
    int32_t* chosen = experts + row * top_k;
    float* w = weights + row * top_k;
    float row_max = -INFINITY;
    for (int64_t e = 0; e < num_experts; ++e) row_max = fmaxf(row_max, z[e]);
    double sum = 0.0;
    for (int64_t e = 0; e < num_experts; ++e) sum += static_cast<double>(expf(z[e] - row_max));
    lse[row] = static_cast<float>(static_cast<double>(row_max) + log(sum));
    for (int64_t e = 0; e < num_experts; ++e) p[e] = static_cast<float>(static_cast<double>(expf(z[e] - row_max)) / sum);
    double selected = 0.0;
    for (int64_t s = 0; s < top_k; ++s) {
      int64_t best = -1;
      for (int64_t e = 0; e < num_experts; ++e) {
        bool taken = false;
        for (int64_t t = 0; t < s; ++t) taken = taken || chosen[t] == e;
        if (!taken && (best < 0 || p[e] > p[best])) best = e;  // strict: ties keep the lower index
      }
      chosen[s] = static_cast<int32_t>(best);
      w[s] = p[best];
      selected += static_cast<double>(p[best]);
    }
    if (normalize)
      for (int64_t s = 0; s < top_k; ++s) w[s] = static_cast<float>(static_cast<double>(w[s]) / selected);
  }
}

// Row n of dlogits: with g_e = d/dp_e of (sum_s dweights_s w_s + sum_e bias_e p_e),
//   dlogits_e = p_e (g_e - sum_e' p_e' g_e') + 2 z_scale lse p_e.
// With normalize, w_s = p_{e_s} / S (S = sum of the selected probabilities), so
//   d/dp_{e_s} = (dweights_s - sum_s' dweights_s' w_s') / S; without, it is dweights_s.
__global__ void router_backward_kernel(float* __restrict__ dlogits, const float* __restrict__ dweights,
                                       const float* __restrict__ probs, const float* __restrict__ lse,
                                       const int32_t* __restrict__ experts, const float* __restrict__ weights,
                                       const float* __restrict__ bias, float z_scale, int64_t n, int64_t num_experts,
                                       int64_t top_k, bool normalize) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < n;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float* p = probs + row * num_experts;
    const int32_t* chosen = experts + row * top_k;
    const float* dw = dweights + row * top_k;
    const float* w = weights + row * top_k;
    float* dz = dlogits + row * num_experts;
    float selected = 0.0f, weighted = 0.0f;
    for (int64_t s = 0; s < top_k; ++s) {
      selected += p[chosen[s]];
      weighted += dw[s] * w[s];
    }
    // g_e, as a function: the bias term plus the slot term of a selected expert
    auto slot_term = [&](int64_t e) {
      for (int64_t s = 0; s < top_k; ++s)
        if (chosen[s] == e) return normalize ? (dw[s] - weighted) / selected : dw[s];
      return 0.0f;
    };
    float dot = 0.0f;
    for (int64_t e = 0; e < num_experts; ++e) dot += p[e] * ((bias ? bias[e] : 0.0f) + slot_term(e));
    const float z_term = 2.0f * z_scale * lse[row];
    for (int64_t e = 0; e < num_experts; ++e) {
      const float g = (bias ? bias[e] : 0.0f) + slot_term(e);
      dz[e] = p[e] * (g - dot) + z_term * p[e];
    }
  }
}

// out[e] = sum over rows of x[., e], in row order, in double: one block per column, the block tree.
template <typename T>
__global__ void column_sum_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t n, int64_t columns) {
  __shared__ double scratch[32];
  for (int64_t e = blockIdx.x; e < columns; e += gridDim.x) {
    double acc = 0.0;
    for (int64_t row = threadIdx.x; row < n; row += blockDim.x) acc += static_cast<double>(to_float(x[row * columns + e]));
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[e] = from_float<T>(static_cast<float>(acc));
  }
}

__global__ void pair_indices_kernel(int32_t* __restrict__ token_of_row, int32_t* __restrict__ row_of_pair,
                                    const int32_t* __restrict__ order, int64_t m, int64_t top_k) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    token_of_row[i] = static_cast<int32_t>(order[i] / top_k);
    row_of_pair[order[i]] = static_cast<int32_t>(i);
  }
}

// out[n][c] (+)= sum_s w[n, s] rows[row_of_pair[n * top_k + s]][c]; weights null: every weight is 1.
template <typename T>
__global__ void combine_forward_kernel(T* __restrict__ out, const T* __restrict__ rows, const T* __restrict__ weights,
                                       const int32_t* __restrict__ row_of_pair, int64_t n, int64_t d, int64_t top_k,
                                       bool accumulate) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n * d;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t token = idx / d, c = idx % d;
    float acc = accumulate ? to_float(out[idx]) : 0.0f;
    for (int64_t s = 0; s < top_k; ++s) {
      const float w = weights ? to_float(weights[token * top_k + s]) : 1.0f;
      acc += w * to_float(rows[static_cast<int64_t>(row_of_pair[token * top_k + s]) * d + c]);
    }
    out[idx] = from_float<T>(acc);
  }
}

// drows[row_of_pair[n * top_k + s]][c] = w[n, s] dout[n][c] (every grouped row is one pair's: no collisions).
template <typename T>
__global__ void combine_backward_rows_kernel(T* __restrict__ drows, const T* __restrict__ dout,
                                             const T* __restrict__ weights, const int32_t* __restrict__ row_of_pair,
                                             int64_t n, int64_t d, int64_t top_k) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n * top_k * d;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = idx / d, c = idx % d, token = pair / top_k;
    const float w = weights ? to_float(weights[pair]) : 1.0f;
    drows[static_cast<int64_t>(row_of_pair[pair]) * d + c] = from_float<T>(w * to_float(dout[token * d + c]));
  }
}

// dweights[n, s] = dout[n] . rows[row_of_pair[n * top_k + s]]: one block per pair, the block tree.
template <typename T>
__global__ void combine_backward_weights_kernel(T* __restrict__ dweights, const T* __restrict__ dout,
                                                const T* __restrict__ rows, const int32_t* __restrict__ row_of_pair,
                                                int64_t pairs, int64_t d, int64_t top_k) {
  __shared__ float scratch[32];
  for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const T* a = dout + (pair / top_k) * d;
    const T* b = rows + static_cast<int64_t>(row_of_pair[pair]) * d;
    float acc = 0.0f;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) acc += to_float(a[c]) * to_float(b[c]);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) dweights[pair] = from_float<T>(acc);
  }
}

void require_f32(const char* op, const Tensor& t) {
  L3C_CHECK(t.dtype == DType::F32, "ops::{}: the CUDA router computes in f32, got {}", op, dtype_name(t.dtype));
}

std::vector<int32_t> host_offsets(const Tensor& offsets) {
  std::vector<int32_t> host(static_cast<size_t>(offsets.numel()));
  L3C_CUDA_CHECK(cudaMemcpy(host.data(), offsets.data, host.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
  for (size_t e = 0; e + 1 < host.size(); ++e)
    L3C_CHECK(host[e] <= host[e + 1], "ops::grouped_matmul: offsets decrease at group {}: {} > {}", e, host[e], host[e + 1]);
  return host;
}

unsigned grid_for(int64_t items) { return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(items, 1), kMaxGridBlocks)); }

}  // namespace

void moe_router_forward(Tensor probs, Tensor lse, Tensor experts, Tensor weights, Tensor logits, bool normalize) {
  for (const Tensor* t : {&probs, &lse, &weights, &logits}) require_f32("moe_router_forward", *t);
  const int64_t num_experts = logits.dim(-1), n = logits.numel() / num_experts, top_k = experts.dim(-1);
  launch(router_forward_kernel, capped_blocks(n, 128), 128, 0, static_cast<float*>(probs.data),
         static_cast<float*>(lse.data), static_cast<int32_t*>(experts.data), static_cast<float*>(weights.data),
         static_cast<const float*>(logits.data), n, num_experts, top_k, normalize);
}

void moe_router_backward(Tensor dlogits, Tensor dweights, Tensor probs, Tensor lse, Tensor experts, Tensor weights,
                         Tensor probs_bias, double z_scale, bool normalize) {
  for (const Tensor* t : {&dlogits, &dweights, &probs, &lse, &weights}) require_f32("moe_router_backward", *t);
  if (!probs_bias.empty()) require_f32("moe_router_backward", probs_bias);
  const int64_t num_experts = probs.dim(-1), n = probs.numel() / num_experts, top_k = experts.dim(-1);
  launch(router_backward_kernel, capped_blocks(n, 128), 128, 0, static_cast<float*>(dlogits.data),
         static_cast<const float*>(dweights.data), static_cast<const float*>(probs.data),
         static_cast<const float*>(lse.data), static_cast<const int32_t*>(experts.data),
         static_cast<const float*>(weights.data), static_cast<const float*>(probs_bias.data),
         static_cast<float>(z_scale), n, num_experts, top_k, normalize);
}

void column_sum(Tensor out, Tensor x) {
  const int64_t columns = out.numel(), n = x.numel() / columns;
  dispatch_float(x.dtype, "column_sum", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(column_sum_kernel<T>, grid_for(columns), kThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(x.data), n, columns);
  });
}

void moe_pair_indices(Tensor token_of_row, Tensor row_of_pair, Tensor order, int64_t top_k) {
  const int64_t m = order.numel();
  launch(pair_indices_kernel, capped_blocks(m, kThreads), kThreads, 0, static_cast<int32_t*>(token_of_row.data),
         static_cast<int32_t*>(row_of_pair.data), static_cast<const int32_t*>(order.data), m, top_k);
}

void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets) {
  const int64_t groups = w.dim(0), out_features = w.dim(1), in_features = w.dim(2);
  const std::vector<int32_t> host = host_offsets(offsets);
  const size_t element = dtype_size(x.dtype);
  for (int64_t e = 0; e < groups; ++e) {
    const int64_t begin = host[e], rows = host[e + 1] - host[e];
    if (rows == 0) continue;
    linear_forward(static_cast<char*>(out.data) + begin * out_features * element, out.dtype,
                   static_cast<const char*>(x.data) + begin * in_features * element,
                   static_cast<const char*>(w.data) + e * out_features * in_features * element, x.dtype, rows,
                   in_features, out_features, /*accumulate=*/false);
  }
}

void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                             bool accumulate_dx) {
  const int64_t groups = w.dim(0), out_features = w.dim(1), in_features = w.dim(2);
  const std::vector<int32_t> host = host_offsets(offsets);
  const size_t element = dtype_size(x.dtype);
  for (int64_t e = 0; e < groups; ++e) {
    const int64_t begin = host[e], rows = host[e + 1] - host[e];
    if (rows == 0) continue;
    const char* dout_e = static_cast<const char*>(dout.data) + begin * out_features * element;
    const char* w_e = static_cast<const char*>(w.data) + e * out_features * in_features * element;
    if (!dx.empty())
      linear_backward_dx(static_cast<char*>(dx.data) + begin * in_features * element, dout_e, w_e, x.dtype, rows,
                         in_features, out_features, accumulate_dx);
    if (!dw.empty())
      linear_backward_dw(static_cast<char*>(dw.data) + e * out_features * in_features * element, dw.dtype, dout_e,
                         static_cast<const char*>(x.data) + begin * in_features * element, x.dtype, rows, in_features,
                         out_features);
  }
}

void moe_combine_forward(Tensor out, Tensor rows, Tensor weights, Tensor row_of_pair, bool accumulate) {
  const int64_t d = out.dim(-1), n = out.numel() / d, top_k = row_of_pair.numel() / std::max<int64_t>(n, 1);
  dispatch_float(out.dtype, "moe_combine_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(combine_forward_kernel<T>, capped_blocks(n * d, kThreads), kThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(rows.data), static_cast<const T*>(weights.data),
           static_cast<const int32_t*>(row_of_pair.data), n, d, top_k, accumulate);
  });
}

void moe_combine_backward(Tensor drows, Tensor dweights, Tensor dout, Tensor rows, Tensor weights,
                          Tensor row_of_pair) {
  const int64_t d = dout.dim(-1), n = dout.numel() / d, top_k = row_of_pair.numel() / std::max<int64_t>(n, 1);
  dispatch_float(dout.dtype, "moe_combine_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(combine_backward_rows_kernel<T>, capped_blocks(n * top_k * d, kThreads), kThreads, 0,
           static_cast<T*>(drows.data), static_cast<const T*>(dout.data), static_cast<const T*>(weights.data),
           static_cast<const int32_t*>(row_of_pair.data), n, d, top_k);
    if (!dweights.empty())
      launch(combine_backward_weights_kernel<T>, grid_for(n * top_k), 128, 0, static_cast<T*>(dweights.data),
             static_cast<const T*>(dout.data), static_cast<const T*>(rows.data),
             static_cast<const int32_t*>(row_of_pair.data), n * top_k, d, top_k);
  });
}

}  // namespace l3c::ops::cuda
