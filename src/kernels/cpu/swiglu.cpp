// CPU SwiGLU activation: out = silu(gate) * up with silu(g) = g * sigmoid(g) = g / (1 + exp(-g)).
// Elementwise over fixed chunks; exp through Eigen's vectorised array functions.
// GCC 12 reports false "may be used uninitialized" warnings inside Eigen's AVX-512 kernels.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#include <algorithm>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

constexpr int64_t kChunk = 1024;             // elements per step (fits the fixed-size scratch)
constexpr int64_t kParallelMin = 1 << 14;

template <typename T>
using Vec = Eigen::Array<T, Eigen::Dynamic, 1>;
template <typename T>
using VecMap = Eigen::Map<Vec<T>>;
template <typename T>
using ConstVecMap = Eigen::Map<const Vec<T>>;

template <typename T>
void swiglu_forward_impl(T* out, const T* gate, const T* up, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    ConstVecMap<T> g(gate + begin, len), u(up + begin, len);
    VecMap<T>(out + begin, len) = g / (T(1) + (-g).exp()) * u;
  }
}

template <typename T>
void swiglu_backward_impl(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  // d out / d gate = up * s * (1 + g * (1 - s)) with s = sigmoid(g);  d out / d up = g * s.
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    T sigmoid[kChunk];
    ConstVecMap<T> g(gate + begin, len);
    VecMap<T>(sigmoid, len) = T(1) / (T(1) + (-g).exp());
    const T* gi = gate + begin;
    const T* ui = up + begin;
    const T* go = dout + begin;
    T* dg = dgate + begin;
    T* du = dup + begin;
    // Each element's inputs are read before its outputs are written, so dgate or dup may alias
    // dout, gate or up.
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const T s = sigmoid[i], go_s = go[i] * s, x = gi[i];
      const T dgate_i = go_s * ui[i] * (T(1) + x * (T(1) - s));
      const T dup_i = go_s * x;
      dg[i] = dgate_i;
      du[i] = dup_i;
    }
  }
}

}  // namespace

void swiglu_forward(Tensor out, Tensor gate, Tensor up) {
  dispatch_float(gate.dtype, "swiglu_forward", [&](auto tag) {
    using T = decltype(tag);
    swiglu_forward_impl(out.ptr<T>(), gate.ptr<T>(), up.ptr<T>(), gate.numel());
  });
}

void swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
  dispatch_float(gate.dtype, "swiglu_backward", [&](auto tag) {
    using T = decltype(tag);
    swiglu_backward_impl(dgate.ptr<T>(), dup.ptr<T>(), dout.ptr<T>(), gate.ptr<T>(), up.ptr<T>(), gate.numel());
  });
}

}  // namespace l3c::ops::cpu
