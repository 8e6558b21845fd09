// CUDA RMSNorm over the last dimension: out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
// One block per row (sums of squares in double, by the fixed block tree). The weight gradient sums over rows in
// two passes: per chunk of kChunkRows rows (each thread one column, rows in order), then the chunks in order.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkRows = 64;

template <typename T>
__global__ void rmsnorm_forward_kernel(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                                       const T* __restrict__ weight, double eps, int64_t n, int64_t d) {
  __shared__ double scratch[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* xi = x + row * d;
    T* oi = out + row * d;
    double ss = 0.0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
      const double v = to_float(xi[c]);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float r = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(d) + eps));
    if (threadIdx.x == 0) rstd[row] = r;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) oi[c] = from_float<T>(to_float(xi[c]) * r * to_float(weight[c]));
  }
}

// dx_c += r g_c w_c - x_c r^3 / d * sum_j(g_j w_j x_j)
template <typename T>
__global__ void rmsnorm_backward_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout, const T* __restrict__ x,
                                           const T* __restrict__ weight, const float* __restrict__ rstd, int64_t n,
                                           int64_t d) {
  __shared__ double scratch[32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* xi = x + row * d;
    const T* gi = dout + row * d;
    T* dxi = dx + row * d;
    const float r = rstd[row];
    double dot = 0.0;
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x)
      dot += static_cast<double>(to_float(gi[c]) * to_float(weight[c])) * static_cast<double>(to_float(xi[c]));
    dot = block_sum(dot, scratch);
    const float coef = static_cast<float>(static_cast<double>(r) * r * r * dot / static_cast<double>(d));
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x)
      dxi[c] = from_float<T>(to_float(dxi[c]) + (r * to_float(gi[c]) * to_float(weight[c]) - coef * to_float(xi[c])));
  }
}

// partial (chunks, d): partial[k][c] = sum over the rows of chunk k, in order, of g_c x_c r.
template <typename T>
__global__ void rmsnorm_dweight_partial_kernel(double* __restrict__ partial, const T* __restrict__ dout,
                                               const T* __restrict__ x, const float* __restrict__ rstd, int64_t n,
                                               int64_t d) {
  const int64_t chunk = blockIdx.x;
  const int64_t c = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= d) return;
  const int64_t begin = chunk * kChunkRows, end = begin + kChunkRows < n ? begin + kChunkRows : n;
  double acc = 0.0;
  for (int64_t row = begin; row < end; ++row)
    acc += static_cast<double>(to_float(dout[row * d + c]) * to_float(x[row * d + c]) * rstd[row]);
  partial[chunk * d + c] = acc;
}

template <typename G>
__global__ void rmsnorm_dweight_reduce_kernel(G* __restrict__ dweight, const double* __restrict__ partial,
                                              int64_t chunks, int64_t d) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= d) return;
  double acc = 0.0;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * d + c];
  dweight[c] = from_float<G>(static_cast<float>(static_cast<double>(to_float(dweight[c])) + acc));
}

unsigned row_blocks(int64_t n) { return static_cast<unsigned>(n < 65535 ? n : 65535); }

}  // namespace

void rmsnorm_forward(Tensor out, Tensor rstd, Tensor x, Tensor weight, double eps) {
  const int64_t d = x.dim(-1), n = x.numel() / d;
  dispatch_float(x.dtype, "rmsnorm_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(rmsnorm_forward_kernel<T>, row_blocks(n), kThreads, 0, static_cast<T*>(out.data),
           static_cast<float*>(rstd.data), static_cast<const T*>(x.data), static_cast<const T*>(weight.data), eps, n, d);
  });
}

void rmsnorm_backward(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) {
  const int64_t d = x.dim(-1), n = x.numel() / d;
  const int64_t chunks = (n + kChunkRows - 1) / kChunkRows;
  double* partial = static_cast<double*>(workspace(static_cast<size_t>(chunks * d) * sizeof(double)));
  dispatch_gradient(x.dtype, dweight.dtype, "rmsnorm_backward", [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    const T* g = static_cast<const T*>(dout.data);
    const T* xs = static_cast<const T*>(x.data);
    const float* r = static_cast<const float*>(rstd.data);
    launch(rmsnorm_backward_dx_kernel<T>, row_blocks(n), kThreads, 0, static_cast<T*>(dx.data), g, xs,
           static_cast<const T*>(weight.data), r, n, d);
    launch(rmsnorm_dweight_partial_kernel<T>, dim3(static_cast<unsigned>(chunks), blocks_for(d, kThreads)), kThreads, 0,
           partial, g, xs, r, n, d);
    launch(rmsnorm_dweight_reduce_kernel<G>, blocks_for(d, kThreads), kThreads, 0, static_cast<G*>(dweight.data),
           partial, chunks, d);
  });
}

}  // namespace l3c::ops::cuda
