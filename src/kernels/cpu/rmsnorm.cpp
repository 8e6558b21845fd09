// CPU RMSNorm over the last dimension: out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
// Row sums of squares accumulate in double. The backward's weight gradient sums over rows: each
// thread sums a fixed contiguous range of rows, and the per-thread partials are added in thread order.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 14;  // elements; below this one thread is faster

template <typename T>
void rmsnorm_forward_impl(T* out, T* rstd, const T* x, const T* weight, double eps, int64_t n, int64_t d) {
#pragma omp parallel for schedule(static) if (n * d > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    T* oi = out + i * d;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < d; ++c) ss += static_cast<double>(xi[c]) * static_cast<double>(xi[c]);
    const T r = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(d) + eps));
    rstd[i] = r;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) oi[c] = xi[c] * r * weight[c];
  }
}

template <typename T>
void rmsnorm_backward_impl(T* dx, T* dweight, const T* dout, const T* x, const T* weight, const T* rstd,
                           int64_t n, int64_t d) {
  // dx_j += r * dout_j * w_j - x_j * r^3 / d * sum_c(dout_c * w_c * x_c)
  // dweight_j += sum_rows dout_j * x_j * r
  int threads_used = 1;
  std::vector<std::vector<double>> partial(omp_get_max_threads());
#pragma omp parallel if (n * d > kParallelMin)
  {
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
#pragma omp single
    threads_used = static_cast<int>(threads);
    std::vector<double>& dw = partial[thread];
    dw.assign(d, 0.0);
    const int64_t i0 = n * thread / threads, i1 = n * (thread + 1) / threads;
    for (int64_t i = i0; i < i1; ++i) {
      const T* xi = x + i * d;
      const T* gi = dout + i * d;
      T* dxi = dx + i * d;
      const T r = rstd[i];
      double dot = 0.0;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(gi[c] * weight[c]) * static_cast<double>(xi[c]);
      const T coef = static_cast<T>(static_cast<double>(r) * r * r * dot / static_cast<double>(d));
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) {
        dxi[c] += r * gi[c] * weight[c] - coef * xi[c];
        dw[c] += static_cast<double>(gi[c] * xi[c] * r);
      }
    }
  }
  for (int t = 0; t < threads_used; ++t)
    for (int64_t c = 0; c < d; ++c) dweight[c] += static_cast<T>(partial[t][c]);
}

}  // namespace

void rmsnorm_forward(Tensor out, Tensor rstd, Tensor x, Tensor weight, double eps) {
  dispatch_float(x.dtype, "rmsnorm_forward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t d = x.dim(-1);
    rmsnorm_forward_impl(out.ptr<T>(), rstd.ptr<T>(), x.ptr<T>(), weight.ptr<T>(), eps, x.numel() / d, d);
  });
}

void rmsnorm_backward(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) {
  dispatch_float(x.dtype, "rmsnorm_backward", [&](auto tag) {
    using T = decltype(tag);
    const int64_t d = x.dim(-1);
    rmsnorm_backward_impl(dx.ptr<T>(), dweight.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), weight.ptr<T>(),
                          rstd.ptr<T>(), x.numel() / d, d);
  });
}

}  // namespace l3c::ops::cpu
