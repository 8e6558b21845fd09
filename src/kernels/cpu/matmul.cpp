// CPU matrix products in the nn.Linear layout, on Eigen maps of row-major buffers. Eigen's GEMM
// splits the output among OpenMP threads (never the reduction dimension), so results are
// deterministic for a fixed thread count. A product of few rows (decoding: one row per sequence; a prefill chunk)
// is split here by blocks of output columns, one single-threaded Eigen product per thread: Eigen runs a
// matrix-vector product on one thread, and its parallel GEMM synchronises its threads once per panel, which costs
// much more than the work of a few rows when the cores are shared.
// GCC 12 reports false "may be used uninitialized" warnings inside Eigen's AVX-512 kernels.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int64_t kFewRows = 128;         // at most this many rows: split the output columns among threads
constexpr int64_t kSplitMinWork = 1 << 18;  // multiply-adds below which one thread is faster (a parallel region
                                            // costs microseconds, more on a busy machine)

template <typename T>
void matmul_forward_impl(Tensor out, Tensor x, Tensor w, bool accumulate) {
  const int64_t m = w.dim(0), k = w.dim(1), n = x.numel() / k;
  const int threads = omp_get_max_threads();
  if (n <= kFewRows && threads > 1 && n * m * k >= kSplitMinWork && !omp_in_parallel()) {
    const int64_t block = (m + threads - 1) / threads;
    Eigen::Map<RowMajor<T>, 0, Eigen::OuterStride<>> O(out.ptr<T>(), n, m, Eigen::OuterStride<>(m));
    Eigen::Map<const RowMajor<T>> X(x.ptr<T>(), n, k);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; ++t) {
      const int64_t c0 = std::min(m, t * block), c1 = std::min(m, c0 + block);
      if (c1 <= c0) continue;
      Eigen::Map<const RowMajor<T>> W(w.ptr<T>() + c0 * k, c1 - c0, k);  // (c1 - c0, K)
      auto O_block = O.middleCols(c0, c1 - c0);
      if (accumulate)
        O_block.noalias() += X * W.transpose();
      else
        O_block.noalias() = X * W.transpose();
    }
    return;
  }
  Eigen::Map<RowMajor<T>> O(out.ptr<T>(), n, m);          // (N, M)
  Eigen::Map<const RowMajor<T>> X(x.ptr<T>(), n, k);      // (N, K)
  Eigen::Map<const RowMajor<T>> W(w.ptr<T>(), m, k);      // (M, K)
  if (accumulate)
    O.noalias() += X * W.transpose();
  else
    O.noalias() = X * W.transpose();
}

template <typename T>
void matmul_backward_impl(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, bool accumulate_dx) {
  const int64_t m = w.dim(0), k = w.dim(1), n = x.numel() / k;
  Eigen::Map<const RowMajor<T>> dO(dout.ptr<T>(), n, m);  // (N, M)
  if (!dx.empty()) {
    Eigen::Map<RowMajor<T>> dX(dx.ptr<T>(), n, k);        // (N, K)
    Eigen::Map<const RowMajor<T>> W(w.ptr<T>(), m, k);    // (M, K)
    if (accumulate_dx)
      dX.noalias() += dO * W;
    else
      dX.noalias() = dO * W;
  }
  if (!dw.empty()) {
    Eigen::Map<RowMajor<T>> dW(dw.ptr<T>(), m, k);        // (M, K)
    Eigen::Map<const RowMajor<T>> X(x.ptr<T>(), n, k);    // (N, K)
    dW.noalias() += dO.transpose() * X;
  }
}

}  // namespace

void matmul_forward(Tensor out, Tensor x, Tensor w, bool accumulate) {
  dispatch_float(x.dtype, "matmul_forward", [&](auto tag) {
    matmul_forward_impl<decltype(tag)>(out, x, w, accumulate);
  });
}

void matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, bool accumulate_dx) {
  dispatch_float(x.dtype, "matmul_backward", [&](auto tag) {
    matmul_backward_impl<decltype(tag)>(dx, dw, dout, x, w, accumulate_dx);
  });
}

}  // namespace l3c::ops::cpu
