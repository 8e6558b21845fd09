// CUDA SwiGLU activation: out = silu(gate) * up with silu(g) = g / (1 + exp(-g)); one thread per element.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void swiglu_forward_kernel(T* __restrict__ out, const T* __restrict__ gate, const T* __restrict__ up,
                                      int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.0f + expf(-g)) * to_float(up[i]));
  }
}

// d out / d gate = up * s * (1 + g * (1 - s)) with s = sigmoid(g);  d out / d up = g * s. Each element's inputs
// are read before its outputs are written, so dgate or dup may alias dout, gate or up (as on the CPU).
template <typename T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]), u = to_float(up[i]), go = to_float(dout[i]);
    const float s = 1.0f / (1.0f + expf(-g));
    const float go_s = go * s;
    const float dgate_i = go_s * u * (1.0f + g * (1.0f - s));
    const float dup_i = go_s * g;
    dgate[i] = from_float<T>(dgate_i);
    dup[i] = from_float<T>(dup_i);
  }
}

}  // namespace

void swiglu_forward(Tensor out, Tensor gate, Tensor up) {
  const int64_t n = gate.numel();
  dispatch_float(gate.dtype, "swiglu_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(swiglu_forward_kernel<T>, capped_blocks(n, kThreads), kThreads, 0, static_cast<T*>(out.data),
           static_cast<const T*>(gate.data), static_cast<const T*>(up.data), n);
  });
}

void swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
  const int64_t n = gate.numel();
  dispatch_float(gate.dtype, "swiglu_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(swiglu_backward_kernel<T>, capped_blocks(n, kThreads), kThreads, 0, static_cast<T*>(dgate.data),
           static_cast<T*>(dup.data), static_cast<const T*>(dout.data), static_cast<const T*>(gate.data),
           static_cast<const T*>(up.data), n);
  });
}

}  // namespace l3c::ops::cuda
