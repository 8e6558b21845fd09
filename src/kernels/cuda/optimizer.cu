// CUDA AdamW over a flat range of elements, one thread per element, f32 arithmetic in PyTorch's order. In mixed
// precision the f32 master weight is updated and the bf16 parameter receives its rounded copy.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;

struct AdamWConstants {
  float beta1, beta2, step_size, inv_sqrt_bias2, eps, decay;
};

// theta: master (f32) when given, else param. param receives theta in its own dtype.
template <typename P, typename G>
__global__ void adamw_kernel(P* __restrict__ param, const G* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, float* __restrict__ master, AdamWConstants k, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(grad[i]);
    const float w = (master ? master[i] : to_float(param[i])) * k.decay;
    const float mi = k.beta1 * m[i] + (1.0f - k.beta1) * g;
    const float vi = k.beta2 * v[i] + (1.0f - k.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float updated = w - k.step_size * mi / (sqrtf(vi) * k.inv_sqrt_bias2 + k.eps);
    if (master) master[i] = updated;
    param[i] = from_float<P>(updated);
  }
}

}  // namespace

void adamw_update(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor master, const AdamWStep& s) {
  const AdamWConstants k{static_cast<float>(s.beta1), static_cast<float>(s.beta2), static_cast<float>(s.lr / s.bias1),
                         static_cast<float>(1.0 / std::sqrt(s.bias2)), static_cast<float>(s.eps),
                         static_cast<float>(1.0 - s.lr * s.weight_decay)};
  const int64_t n = param.numel();
  float* master_data = master.empty() ? nullptr : static_cast<float*>(master.data);
  dispatch_gradient(param.dtype, grad.dtype, "adamw_update", [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    launch(adamw_kernel<T, G>, capped_blocks(n, kThreads), kThreads, 0, static_cast<T*>(param.data),
           static_cast<const G*>(grad.data), static_cast<float*>(m.data), static_cast<float*>(v.data), master_data, k, n);
  });
}

}  // namespace l3c::ops::cuda
