// CPU fused classifier: logits = x W^T, per-row cross-entropy, and (optionally) its backward, one
// block of rows at a time so that only (block rows, V) logits ever exist:
//   logits_blk = x_blk W^T                       (GEMM, Eigen's threads)
//   per row (OpenMP, static): max, sum of exp (in double), loss = lse - logit[target],
//                             dlogits = (softmax - onehot) * grad_scale, written over the logits
//   dx_blk = dlogits W;  dW += dlogits^T x_blk   (GEMMs; blocks are added to dW in block order)
// The logits scratch is kept per thread between calls (it is the size of one block) so that a step
// does not fault fresh pages in for every call.
#include <omp.h>

// GCC 12 reports false "may be used uninitialized" warnings inside Eigen's AVX-512 kernels.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

constexpr int64_t kScratchBytes = int64_t{32} << 20;  // default logits block: about 32 MiB
constexpr int64_t kMinBlockRows = 64, kMaxBlockRows = 256;

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Aligned like the arena (Eigen's aligned allocator: 64 bytes with AVX-512): Eigen peels an unaligned head
// of a row with scalar code (std::exp instead of its vectorised exp, another summation order), so with a
// plain std::vector the results would depend on where the heap happened to place it, and two processes
// (a run and its resumption) could differ in the last bit.
template <typename T>
std::vector<T, Eigen::aligned_allocator<T>>& logits_scratch() {
  thread_local std::vector<T, Eigen::aligned_allocator<T>> scratch;
  return scratch;
}

template <typename T>
void classifier_impl(Tensor losses_t, Tensor dx_t, Tensor dW_t, Tensor x_t, Tensor W_t, Tensor targets_t,
                     double grad_scale, int64_t block_rows) {
  const int64_t vocab = W_t.dim(0), d = W_t.dim(1), n = x_t.numel() / d;
  const int32_t* targets = targets_t.ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    L3C_CHECK(targets[i] >= 0 && targets[i] < vocab,
              "ops::classifier_forward_backward: targets[{}] = {} is outside the vocabulary [0, {})", i,
              targets[i], vocab);
  if (block_rows <= 0)
    block_rows = std::clamp<int64_t>(kScratchBytes / (vocab * static_cast<int64_t>(sizeof(T))), kMinBlockRows,
                                     kMaxBlockRows);
  block_rows = std::min(block_rows, n);
  const bool backward = !dx_t.empty() || !dW_t.empty();
  const T* x = x_t.ptr<T>();
  T* losses = losses_t.ptr<T>();
  Eigen::Map<const RowMajor<T>> W(W_t.ptr<T>(), vocab, d);  // (V, d)

  auto& scratch = logits_scratch<T>();
  if (static_cast<int64_t>(scratch.size()) < block_rows * vocab) {
    scratch.clear();
    scratch.shrink_to_fit();
    scratch.resize(block_rows * vocab);
  }

  for (int64_t r0 = 0; r0 < n; r0 += block_rows) {
    const int64_t rows = std::min(n, r0 + block_rows) - r0;
    Eigen::Map<const RowMajor<T>> X(x + r0 * d, rows, d);         // (rows, d)
    Eigen::Map<RowMajor<T>> logits(scratch.data(), rows, vocab);  // (rows, V)
    logits.noalias() = X * W.transpose();

#pragma omp parallel for schedule(static) if (rows * vocab > (1 << 14))
    for (int64_t r = 0; r < rows; ++r) {
      T* z = scratch.data() + r * vocab;
      const int32_t target = targets[r0 + r];
      const T target_logit = z[target];
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> row(z, vocab);
      const T max = row.maxCoeff();
      row = (row - max).exp();
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < vocab; ++c) sum += static_cast<double>(z[c]);
      const double lse = static_cast<double>(max) + std::log(sum);
      losses[r0 + r] = static_cast<T>(lse - static_cast<double>(target_logit));
      if (backward) {
        row *= static_cast<T>(grad_scale / sum);  // softmax * grad_scale
        z[target] -= static_cast<T>(grad_scale);
      }
    }

    if (!backward) continue;
    if (!dx_t.empty()) {
      Eigen::Map<RowMajor<T>> dX(dx_t.ptr<T>() + r0 * d, rows, d);  // (rows, d)
      dX.noalias() = logits * W;
    }
    if (!dW_t.empty()) {
      Eigen::Map<RowMajor<T>> dW(dW_t.ptr<T>(), vocab, d);         // (V, d)
      dW.noalias() += logits.transpose() * X;
    }
  }
}

}  // namespace

void classifier_forward_backward(Tensor losses, Tensor dx, Tensor dW, Tensor x, Tensor W, Tensor targets,
                                 double grad_scale, int64_t block_rows) {
  dispatch_float(x.dtype, "classifier_forward_backward", [&](auto tag) {
    classifier_impl<decltype(tag)>(losses, dx, dW, x, W, targets, grad_scale, block_rows);
  });
}

}  // namespace l3c::ops::cpu
