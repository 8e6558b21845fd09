// CPU token embedding: a row gather forward, a deterministic scatter-add backward.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

// Elements below which one thread is faster: the gather and the scatter are memory-bound, and the
// scatter's threads share the rows they write (different columns).
constexpr int64_t kParallelMin = 1 << 15;
constexpr int64_t kScatterParallelMin = 1 << 20;

template <typename T>
void embedding_forward_impl(T* out, const T* table, const int32_t* tokens, int64_t n, int64_t d) {
  // out (N, d) = table (V, d)[tokens (N)]
#pragma omp parallel for schedule(static) if (n * d > kParallelMin)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * d, table + static_cast<int64_t>(tokens[i]) * d, sizeof(T) * d);
}

template <typename T>
void embedding_backward_impl(T* dtable, const T* dout, const int32_t* tokens, int64_t n, int64_t d) {
  // dtable (V, d) += scatter of dout (N, d). Threads own disjoint column ranges and walk all positions
  // in order, so repeated tokens add up in position order whatever the thread count.
#pragma omp parallel if (n * d > kScatterParallelMin)
  {
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    constexpr int64_t kAlign = 16;  // columns per vector-friendly unit
    const int64_t units = (d + kAlign - 1) / kAlign;
    const int64_t per_thread = (units + threads - 1) / threads;
    const int64_t c0 = std::min(d, thread * per_thread * kAlign);
    const int64_t c1 = std::min(d, (thread + 1) * per_thread * kAlign);
    if (c0 < c1) {
      for (int64_t i = 0; i < n; ++i) {
        T* dst = dtable + static_cast<int64_t>(tokens[i]) * d;
        const T* src = dout + i * d;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
      }
    }
  }
}

}  // namespace

void embedding_forward(Tensor out, Tensor table, Tensor tokens) {
  dispatch_float(out.dtype, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    embedding_forward_impl(out.ptr<T>(), table.ptr<T>(), tokens.ptr<int32_t>(), tokens.numel(), table.dim(1));
  });
}

void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens) {
  dispatch_float(dtable.dtype, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    embedding_backward_impl(dtable.ptr<T>(), dout.ptr<T>(), tokens.ptr<int32_t>(), tokens.numel(),
                            dtable.dim(1));
  });
}

}  // namespace l3c::ops::cpu
