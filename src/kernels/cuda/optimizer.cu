// CUDA AdamW over a flat range of elements, one thread per element, f32 arithmetic in PyTorch's order. In mixed
// precision the f32 master weight is updated and the bf16 parameter receives its rounded copy. The step's update
// gate (clipping factor, finite or not) is computed and read on the device: the host queues the update without
// waiting for the gradient norm. The step's constants (learning rate, bias corrections) are read from device memory
// too, so that the update's launches are the same from step to step.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/update_gate.h"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;

// theta: master (f32) when given, else param. param receives theta in its own dtype. constants: the step's, which
// the host writes to device memory before the update (the launch's arguments are the same every step). gate: null,
// or the update gate (ops::update_gate): a closed gate leaves everything as it is; else the gradient enters scaled
// by gate[0] and rounded to G, the bits of scaling it in place first.
template <typename P, typename G>
__global__ void adamw_kernel(P* __restrict__ param, const G* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, float* __restrict__ master, const double* __restrict__ gate,
                             const AdamWConstants<float>* __restrict__ constants, int64_t n) {
  if (gate != nullptr && gate[1] == 0.0) return;
  const float clip = gate != nullptr ? static_cast<float>(gate[0]) : 1.0f;
  const AdamWConstants<float> k = *constants;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(from_float<G>(to_float(grad[i]) * clip));
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

__global__ void update_gate_kernel(double* __restrict__ gate, const double* __restrict__ loss_sum,
                                   const double* __restrict__ grad_squares, double max_norm) {
  if (blockIdx.x == 0 && threadIdx.x == 0) update_gate_values(gate, *loss_sum, *grad_squares, max_norm);
}

}  // namespace

void update_gate(Tensor gate, Tensor loss_sum, Tensor grad_squares, double max_norm) {
  launch(update_gate_kernel, 1, 1, 0, static_cast<double*>(gate.data), static_cast<const double*>(loss_sum.data),
         static_cast<const double*>(grad_squares.data), max_norm);
}

void adamw_update(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor master, Tensor constants, Tensor gate) {
  const int64_t n = param.numel();
  float* master_data = master.empty() ? nullptr : static_cast<float*>(master.data);
  dispatch_gradient(param.dtype, grad.dtype, "adamw_update", [&](auto tag, auto grad_tag) {
    using T = typename decltype(tag)::type;
    using G = typename decltype(grad_tag)::type;
    launch(adamw_kernel<T, G>, capped_blocks(n, kThreads), kThreads, 0, static_cast<T*>(param.data),
           static_cast<const G*>(grad.data), static_cast<float*>(m.data), static_cast<float*>(v.data), master_data,
           gate.empty() ? nullptr : static_cast<const double*>(gate.data),
           static_cast<const AdamWConstants<float>*>(constants.data), n);
  });
}

}  // namespace l3c::ops::cuda
