// The gate of a training step's update (ops::update_gate), shared by the CPU op (kernels/cpu/optimizer.cpp) and the
// CUDA kernel (kernels/cuda/optimizer.cu) so that both give the bits of the host's clip_grad_norm_ arithmetic.
#pragma once
#include <cmath>

#include "kernels/host_device.h"

namespace l3c::ops {

// From the step's loss sum and gradient sum of squares: gate[0], the clipping factor max_norm / (norm + 1e-6) where
// it is below 1, else 1 (1 when max_norm is 0); gate[1], 1 when both sums are finite, else 0.
L3C_HOST_DEVICE inline void update_gate_values(double* gate, double loss_sum, double grad_squares, double max_norm) {
  const double norm = std::sqrt(grad_squares);
  const double clip = max_norm > 0.0 ? max_norm / (norm + 1e-6) : 1.0;
  gate[0] = clip < 1.0 ? clip : 1.0;
  gate[1] = std::isfinite(loss_sum) && std::isfinite(norm) ? 1.0 : 0.0;
}

}  // namespace l3c::ops
