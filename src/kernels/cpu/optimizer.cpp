// CPU AdamW update over a flat range of elements (PyTorch order: decoupled decay, moments, bias-corrected
// step), elementwise and vectorised; and dtype conversion between f32, f64 and bf16.
#include <cmath>
#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/update_gate.h"

namespace l3c::ops::cpu {
namespace {

// k: the step's constants (ops::adamw_constants); clip: the factor the gradients enter with (the update gate's).
template <typename T>
void adamw_impl(T* __restrict w, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t n,
                const AdamWConstants<T>& k, T clip) {
  const T b1 = k.beta1, b2 = k.beta2, step_size = k.step_size, inv_sqrt_bias2 = k.inv_sqrt_bias2, eps = k.eps,
          decay = k.decay;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T wi = w[i] * decay;
    const T gi = g[i] * clip;
    const T mi = b1 * m[i] + (T(1) - b1) * gi;
    const T vi = b2 * v[i] + (T(1) - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = wi - step_size * mi / (std::sqrt(vi) * inv_sqrt_bias2 + eps);
  }
}

double load(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::F32: return static_cast<const float*>(t.data)[i];
    case DType::F64: return static_cast<const double*>(t.data)[i];
    case DType::BF16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(t.data)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    }
    case DType::I32: return static_cast<const int32_t*>(t.data)[i];
  }
  return 0.0;
}

void store(const Tensor& t, int64_t i, double value) {
  switch (t.dtype) {
    case DType::F32: static_cast<float*>(t.data)[i] = static_cast<float>(value); return;
    case DType::F64: static_cast<double*>(t.data)[i] = value; return;
    case DType::BF16: {  // round to nearest even; NaN stays NaN
      const float f = static_cast<float>(value);
      uint32_t bits;
      std::memcpy(&bits, &f, sizeof bits);
      if ((bits & 0x7FFFFFFFu) > 0x7F800000u) bits |= 0x00400000u;
      else bits += 0x7FFFu + ((bits >> 16) & 1u);
      static_cast<uint16_t*>(t.data)[i] = static_cast<uint16_t>(bits >> 16);
      return;
    }
    case DType::I32: static_cast<int32_t*>(t.data)[i] = static_cast<int32_t>(value); return;
  }
}

}  // namespace

void adamw_update(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor constants, Tensor gate) {
  const double* g = gate.empty() ? nullptr : gate.ptr<double>();
  if (g != nullptr && g[1] == 0.0) return;
  dispatch_float(param.dtype, "adamw_update", [&](auto tag) {
    using T = decltype(tag);
    AdamWConstants<T> k;
    std::memcpy(&k, constants.ptr<T>(), sizeof k);
    adamw_impl(param.ptr<T>(), grad.ptr<T>(), m.ptr<T>(), v.ptr<T>(), param.numel(), k,
               static_cast<T>(g != nullptr ? g[0] : 1.0));
  });
}

void update_gate(Tensor gate, Tensor loss_sum, Tensor grad_squares, double max_norm) {
  update_gate_values(gate.ptr<double>(), *loss_sum.ptr<double>(), *grad_squares.ptr<double>(), max_norm);
}

void convert(Tensor dst, Tensor src) {
  if (dst.dtype == src.dtype) return copy(dst, src);
  const int64_t n = dst.numel();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) store(dst, i, load(src, i));
}

}  // namespace l3c::ops::cpu
