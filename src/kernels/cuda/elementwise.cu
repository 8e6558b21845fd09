// CUDA elementwise ops: zero, copies (on the device, across devices, with dtype conversion), residual add,
// scale, and the sum of squares behind the global gradient norm (two passes with fixed partitions, in double).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void add_kernel(T* __restrict__ y, const T* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(to_float(y[i]) + to_float(x[i]));
}

template <typename T>
__global__ void scale_kernel(T* __restrict__ y, float s, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(to_float(y[i]) * s);
}

template <typename Out, typename In>
__global__ void convert_kernel(Out* __restrict__ out, const In* __restrict__ in, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<Out>(to_float(in[i]));
}

// Pass 1: block b sums x^2 over the elements i = b*blockDim + t + k*(gridDim*blockDim), in double, and writes
// partial[b]. The grid is fixed (kPartialBlocks), so the partition and the tree are the same on every GPU.
const int kSumBlocks = kPartialBlocks;
template <typename T>
__global__ void sum_squares_partial(double* __restrict__ partial, const T* __restrict__ x, int64_t n) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = to_float(x[i]);
    acc += v * v;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2: one block adds the partials (thread t takes t, t + blockDim, ...; then the block tree).
__global__ void sum_partials(double* __restrict__ result, const double* __restrict__ partial, int count) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) *result = acc;
}

// One thread adds the values in index order in double, as the host does (the same bits), then adds the mean.
__global__ void add_mean_kernel(double* __restrict__ sum, const float* __restrict__ values, int64_t n) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(values[i]);
  *sum += acc / static_cast<double>(n);
}

__global__ void add_to_sums_kernel(double* __restrict__ sums, const float* __restrict__ values, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    sums[i] += static_cast<double>(values[i]);
}

// The two passes of the sum of squares of x into *result (device memory outside the workspace's first
// kSumBlocks doubles, where the partials go).
void launch_sum_squares(double* result, Tensor x) {
  const int64_t n = x.numel();
  Carve sizes(nullptr);
  sizes.take<double>(kSumBlocks);
  Carve carve(workspace(sizes.bytes()));
  double* partial = carve.take<double>(kSumBlocks);
  dispatch_float(x.dtype, "sum_squares", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(sum_squares_partial<T>, kSumBlocks, kThreads, 0, partial, static_cast<const T*>(x.data), n);
  });
  launch(sum_partials, 1, kThreads, 0, result, partial, kSumBlocks);
}

}  // namespace

void fill_zero(Tensor t) {
  L3C_RECORD_QUEUED("memset", t.data, t.bytes());
  L3C_CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.bytes(), stream()));
}

void copy(Tensor dst, Tensor src) {
  if (dst.data == src.data) return;
  L3C_RECORD_QUEUED("copy", dst.data, src.data, dst.bytes());
  L3C_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, dst.bytes(), cudaMemcpyDeviceToDevice, stream()));
}

void copy_between(Tensor dst, Tensor src) {
  // cudaMemcpy orders itself after the queued work and returns when the copy is complete.
  count_host_synchronization();
  L3C_CUDA_CHECK(cudaMemcpy(dst.data, src.data, dst.bytes(), cudaMemcpyDefault));
}

void convert(Tensor dst, Tensor src) {
  if (dst.dtype == src.dtype) return copy(dst, src);
  const int64_t n = dst.numel();
  dispatch_float(dst.dtype, "convert", [&](auto out_tag) {
    using Out = typename decltype(out_tag)::type;
    dispatch_float(src.dtype, "convert", [&](auto in_tag) {
      using In = typename decltype(in_tag)::type;
      launch(convert_kernel<Out, In>, capped_blocks(n, kThreads), kThreads, 0, static_cast<Out*>(dst.data),
             static_cast<const In*>(src.data), n);
    });
  });
}

void add_inplace(Tensor y, Tensor x) {
  const int64_t n = y.numel();
  dispatch_float(y.dtype, "add_inplace", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(add_kernel<T>, capped_blocks(n, kThreads), kThreads, 0, static_cast<T*>(y.data),
           static_cast<const T*>(x.data), n);
  });
}

void scale_inplace(Tensor y, double s) {
  const int64_t n = y.numel();
  dispatch_float(y.dtype, "scale_inplace", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(scale_kernel<T>, capped_blocks(n, kThreads), kThreads, 0, static_cast<T*>(y.data), static_cast<float>(s), n);
  });
}

double sum_squares(Tensor x) {
  Carve sizes(nullptr);
  sizes.take<double>(kSumBlocks);
  sizes.take<double>(1);
  Carve carve(workspace(sizes.bytes()));
  carve.take<double>(kSumBlocks);  // the partials, where launch_sum_squares puts them
  double* result = carve.take<double>(1);
  launch_sum_squares(result, x);
  double host = 0.0;
  count_host_synchronization();
  L3C_CUDA_CHECK(cudaMemcpy(&host, result, sizeof host, cudaMemcpyDeviceToHost));
  return host;
}

void sum_squares_into(Tensor out, Tensor x) {
  if (x.numel() == 0) return fill_zero(out);
  launch_sum_squares(static_cast<double*>(out.data), x);
}

void add_to_sums(Tensor sums, Tensor values) {
  const int64_t n = sums.numel();
  launch(add_to_sums_kernel, capped_blocks(n, kThreads), kThreads, 0, static_cast<double*>(sums.data),
         static_cast<const float*>(values.data), n);
}

void add_mean(Tensor sum, Tensor values) {
  launch(add_mean_kernel, 1, 1, 0, static_cast<double*>(sum.data), static_cast<const float*>(values.data),
         values.numel());
}

}  // namespace l3c::ops::cuda
