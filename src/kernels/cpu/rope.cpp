// CPU rotary position embedding, rotate-half pairing (Hugging Face Llama): for i < hd/2 the pair
// (x[i], x[i + hd/2]) at position t turns by t * theta^(-2i/hd). Angles, cosines and sines are
// computed in double, then rounded once to the tensor's type; the last table for (hd, theta) is kept per
// thread, since every layer asks for the same one, and serves any call that needs no more positions (an entry
// does not depend on the table's length). rope_forward_at (inference) rotates row b from position start[b] on.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

template <typename T>
struct RopeTable {
  int64_t positions = -1, head_dim = -1;
  double theta = 0.0;
  std::vector<T> cos, sin;  // (T, hd/2)
};

template <typename T>
const RopeTable<T>& rope_table(int64_t positions, int64_t head_dim, double theta) {
  thread_local RopeTable<T> table;
  if (table.positions >= positions && table.head_dim == head_dim && table.theta == theta) return table;
  const int64_t half = head_dim / 2;
  table.cos.resize(positions * half);
  table.sin.resize(positions * half);
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    for (int64_t t = 0; t < positions; ++t) {
      const double angle = static_cast<double>(t) * inv_freq;
      table.cos[t * half + i] = static_cast<T>(std::cos(angle));
      table.sin[t * half + i] = static_cast<T>(std::sin(angle));
    }
  }
  table.positions = positions;
  table.head_dim = head_dim;
  table.theta = theta;
  return table;
}

// direction +1: forward rotation; -1: the inverse rotation (the backward, rotation matrices being
// orthogonal: the gradient turns by the opposite angle).
// start: (B) i32 first position of each batch row, or null (every row starts at 0).
template <typename T>
void rope_impl(Tensor x, double theta, T direction, const int32_t* start = nullptr) {
  const int64_t batch = x.dim(0), positions = x.dim(1), heads = x.dim(2), hd = x.dim(3), half = hd / 2;
  int64_t table_positions = positions;
  if (start != nullptr) {
    int64_t last = 0;
    for (int64_t b = 0; b < batch; ++b) last = std::max<int64_t>(last, start[b] + positions);
    // Decoding asks for one more position per step: grow the table in powers of two, not one row at a time.
    table_positions = 64;
    while (table_positions < last) table_positions *= 2;
  }
  const RopeTable<T>& table = rope_table<T>(table_positions, hd, theta);
  const T* cos_table = table.cos.data();
  const T* sin_table = table.sin.data();
  T* data = x.ptr<T>();
#pragma omp parallel for schedule(static) if (batch * positions * heads * hd > (1 << 14))
  for (int64_t bt = 0; bt < batch * positions; ++bt) {
    const int64_t t = bt % positions + (start != nullptr ? start[bt / positions] : 0);
    const T* c = cos_table + t * half;
    const T* s = sin_table + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      T* lo = data + (bt * heads + h) * hd;  // x[i]
      T* hi = lo + half;                     // x[i + hd/2]
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const T a = lo[i], b = hi[i], sn = direction * s[i];
        lo[i] = a * c[i] - b * sn;
        hi[i] = b * c[i] + a * sn;
      }
    }
  }
}

}  // namespace

void rope_forward(Tensor x, double theta) {
  dispatch_float(x.dtype, "rope_forward", [&](auto tag) {
    using T = decltype(tag);
    rope_impl<T>(x, theta, T(1));
  });
}

void rope_forward_at(Tensor x, double theta, Tensor start) {
  dispatch_float(x.dtype, "rope_forward_at", [&](auto tag) {
    using T = decltype(tag);
    rope_impl<T>(x, theta, T(1), start.ptr<int32_t>());
  });
}

void rope_backward(Tensor dx, double theta) {
  dispatch_float(dx.dtype, "rope_backward", [&](auto tag) {
    using T = decltype(tag);
    rope_impl<T>(dx, theta, T(-1));
  });
}

}  // namespace l3c::ops::cpu
