// CPU elementwise ops: zero, copy, residual add, scale, sum of squares.
// Work is split into fixed chunks of elements; the sum of squares adds its per-chunk partials in
// chunk order, so it is the same for every thread count.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {

void unsupported_dtype(const char* op, DType dtype) {
  L3C_CHECK(false, "ops::{}: the CPU backend supports f32 and f64, got {}", op, dtype_name(dtype));
  __builtin_unreachable();
}

namespace {

constexpr int64_t kChunk = 1 << 15;          // elements per chunk of work
constexpr int64_t kParallelMin = 1 << 16;    // below this, one thread is faster

int64_t chunks_of(int64_t n) { return (n + kChunk - 1) / kChunk; }

template <typename T>
void add_impl(T* y, const T* x, int64_t n) {
  const int64_t chunks = chunks_of(n);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
#pragma omp simd
    for (int64_t i = c * kChunk; i < end; ++i) y[i] += x[i];
  }
}

template <typename T>
void scale_impl(T* y, T s, int64_t n) {
  const int64_t chunks = chunks_of(n);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
#pragma omp simd
    for (int64_t i = c * kChunk; i < end; ++i) y[i] *= s;
  }
}

template <typename T>
double sum_squares_impl(const T* x, int64_t n) {
  const int64_t chunks = chunks_of(n);
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = c * kChunk; i < end; ++i) acc += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    partial[c] = acc;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace

void fill_zero(Tensor t) {
  auto* bytes = static_cast<std::byte*>(t.data);
  const int64_t n = static_cast<int64_t>(t.bytes());
  const int64_t chunk_bytes = kChunk * 8;
  const int64_t chunks = (n + chunk_bytes - 1) / chunk_bytes;
#pragma omp parallel for schedule(static) if (n > 8 * kParallelMin)
  for (int64_t c = 0; c < chunks; ++c)
    std::memset(bytes + c * chunk_bytes, 0, std::min(chunk_bytes, n - c * chunk_bytes));
}

void copy(Tensor dst, Tensor src) {
  if (dst.data == src.data) return;
  auto* out = static_cast<std::byte*>(dst.data);
  const auto* in = static_cast<const std::byte*>(src.data);
  const int64_t n = static_cast<int64_t>(dst.bytes());
  const int64_t chunk_bytes = kChunk * 8;
  const int64_t chunks = (n + chunk_bytes - 1) / chunk_bytes;
#pragma omp parallel for schedule(static) if (n > 8 * kParallelMin)
  for (int64_t c = 0; c < chunks; ++c)
    std::memcpy(out + c * chunk_bytes, in + c * chunk_bytes, std::min(chunk_bytes, n - c * chunk_bytes));
}

void add_inplace(Tensor y, Tensor x) {
  dispatch_float(y.dtype, "add_inplace", [&](auto tag) {
    using T = decltype(tag);
    add_impl(y.ptr<T>(), x.ptr<T>(), y.numel());
  });
}

void scale_inplace(Tensor y, double s) {
  dispatch_float(y.dtype, "scale_inplace", [&](auto tag) {
    using T = decltype(tag);
    scale_impl(y.ptr<T>(), static_cast<T>(s), y.numel());
  });
}

double sum_squares(Tensor x) {
  return dispatch_float(x.dtype, "sum_squares", [&](auto tag) {
    using T = decltype(tag);
    return sum_squares_impl(x.ptr<T>(), x.numel());
  });
}

void add_mean(Tensor sum, Tensor values) {
  const int64_t n = values.numel();
  const double total = dispatch_float(values.dtype, "add_mean", [&](auto tag) {
    using T = decltype(tag);
    const T* v = values.ptr<T>();
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(v[i]);
    return acc;
  });
  sum.ptr<double>()[0] += total / static_cast<double>(n);
}

void add_to_sums(Tensor sums, Tensor values) {
  double* s = sums.ptr<double>();
  dispatch_float(values.dtype, "add_to_sums", [&](auto tag) {
    using T = decltype(tag);
    const T* v = values.ptr<T>();
    for (int64_t i = 0; i < values.numel(); ++i) s[i] += static_cast<double>(v[i]);
  });
}

}  // namespace l3c::ops::cpu
