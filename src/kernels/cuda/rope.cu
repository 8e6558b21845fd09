// CUDA rotary position embedding, rotate-half pairing: for i < hd/2 the pair (x[i], x[i + hd/2]) at position t
// turns by t * theta^(-2i/hd). The (T, hd/2) cosine and sine table is computed in double (as the CPU does) into
// the workspace, rounded once to f32, then one thread rotates one pair.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace l3c::ops::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rope_table_kernel(float* __restrict__ cos_table, float* __restrict__ sin_table, int64_t positions,
                                  int64_t head_dim, double theta) {
  const int64_t half = head_dim / 2;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < positions * half;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / half, i = e % half;
    const double angle = rope_angle(t, i, head_dim, theta);
    cos_table[e] = static_cast<float>(cos(angle));
    sin_table[e] = static_cast<float>(sin(angle));
  }
}

// x (B, T, heads, hd); direction +1 rotates, -1 applies the inverse rotation (the backward).
template <typename T>
__global__ void rope_kernel(T* __restrict__ x, const float* __restrict__ cos_table, const float* __restrict__ sin_table,
                            int64_t batch, int64_t positions, int64_t heads, int64_t head_dim, float direction) {
  const int64_t half = head_dim / 2;
  rotate_pairs(x, batch, positions, heads, head_dim, [&](int64_t, int64_t t, int64_t i) {
    return RopeTurn{cos_table[t * half + i], direction * sin_table[t * half + i]};
  });
}

void rope(Tensor x, double theta, float direction, const char* op) {
  const int64_t batch = x.dim(0), positions = x.dim(1), heads = x.dim(2), head_dim = x.dim(3), half = head_dim / 2;
  float* cos_table = static_cast<float*>(workspace(static_cast<size_t>(2 * positions * half) * sizeof(float)));
  float* sin_table = cos_table + positions * half;
  launch(rope_table_kernel, capped_blocks(positions * half, kThreads), kThreads, 0, cos_table, sin_table, positions,
         head_dim, theta);
  dispatch_float(x.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch(rope_kernel<T>, capped_blocks(x.numel() / 2, kThreads), kThreads, 0, static_cast<T*>(x.data), cos_table,
           sin_table, batch, positions, heads, head_dim, direction);
  });
}

}  // namespace

void rope_forward(Tensor x, double theta) { rope(x, theta, 1.0f, "rope_forward"); }
void rope_backward(Tensor dx, double theta) { rope(dx, theta, -1.0f, "rope_backward"); }

}  // namespace l3c::ops::cuda
