// CPU group-by-key: the stable counting sort of positions by key, the row gather / scatter that
// permute activations into grouped order and back, and the column concat / split of the L3 mixer.
// The sort is serial and O(N + K); the row moves are memory-bound and split over rows.
#include <omp.h>

#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

constexpr int64_t kParallelMin = 1 << 15;  // elements; below this one thread is faster

template <typename T>
void gather_impl(T* out, const T* x, const int32_t* index, int64_t m, int64_t d) {
  // out (M, d) = x (N, d)[index (M)]
#pragma omp parallel for schedule(static) if (m * d > kParallelMin)
  for (int64_t i = 0; i < m; ++i) std::memcpy(out + i * d, x + static_cast<int64_t>(index[i]) * d, sizeof(T) * d);
}

// dst (width) = / += src (width).
template <typename T>
void copy_or_add_row(T* dst, const T* src, int64_t width, bool accumulate) {
  if (accumulate) {
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) dst[c] += src[c];
  } else {
    std::memcpy(dst, src, sizeof(T) * width);
  }
}

template <typename T>
void scatter_impl(T* out, const T* x, const int32_t* index, int64_t m, int64_t d, bool accumulate) {
  // out (N, d)[index (M)] = / += x (M, d); index is injective, so rows never collide.
#pragma omp parallel for schedule(static) if (m * d > kParallelMin)
  for (int64_t i = 0; i < m; ++i) copy_or_add_row(out + static_cast<int64_t>(index[i]) * d, x + i * d, d, accumulate);
}

template <typename T>
void concat_impl(T* out, const T* a, const T* b, int64_t n, int64_t da, int64_t db) {
  const int64_t w = da + db;
#pragma omp parallel for schedule(static) if (n * w > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * w, a + i * da, sizeof(T) * da);
    std::memcpy(out + i * w + da, b + i * db, sizeof(T) * db);
  }
}

template <typename T>
void split_impl(T* da, T* db, const T* dout, int64_t n, int64_t wa, int64_t wb, bool acc_a, bool acc_b) {
  const int64_t w = wa + wb;
#pragma omp parallel for schedule(static) if (n * w > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    copy_or_add_row(da + i * wa, dout + i * w, wa, acc_a);
    copy_or_add_row(db + i * wb, dout + i * w + wa, wb, acc_b);
  }
}

}  // namespace

void group_by_key(Tensor order, Tensor offsets, Tensor keys) {
  const int64_t n = keys.numel(), groups = offsets.numel() - 1;
  const int32_t* key = keys.numel() > 0 ? keys.ptr<int32_t>() : nullptr;
  int32_t* off = offsets.ptr<int32_t>();
  // Counts, then an exclusive prefix sum: off[k] is where group k starts.
  std::memset(off, 0, sizeof(int32_t) * static_cast<size_t>(groups + 1));
  for (int64_t i = 0; i < n; ++i) {
    L3C_CHECK(key[i] >= 0 && key[i] < groups, "ops::group_by_key: key {} at position {} is outside [0, {})", key[i],
              i, groups);
    ++off[key[i] + 1];
  }
  for (int64_t k = 0; k < groups; ++k) off[k + 1] += off[k];
  if (n == 0) return;
  // Placement in position order keeps the sort stable; `next` walks each group's slots.
  int32_t* out = order.ptr<int32_t>();
  std::vector<int32_t> next(off, off + groups);
  for (int64_t i = 0; i < n; ++i) out[next[key[i]]++] = static_cast<int32_t>(i);
}

void gather_rows(Tensor out, Tensor x, Tensor index) {
  dispatch_float(out.dtype, "gather_rows", [&](auto tag) {
    using T = decltype(tag);
    const int64_t d = out.dim(-1);
    gather_impl(out.ptr<T>(), x.ptr<T>(), index.ptr<int32_t>(), index.numel(), d);
  });
}

void scatter_rows(Tensor out, Tensor x, Tensor index, bool accumulate) {
  dispatch_float(out.dtype, "scatter_rows", [&](auto tag) {
    using T = decltype(tag);
    const int64_t d = out.dim(-1);
    scatter_impl(out.ptr<T>(), x.ptr<T>(), index.ptr<int32_t>(), index.numel(), d, accumulate);
  });
}

void concat_last_dim(Tensor out, Tensor x_a, Tensor x_b) {
  dispatch_float(out.dtype, "concat_last_dim", [&](auto tag) {
    using T = decltype(tag);
    const int64_t da = x_a.dim(-1), db = x_b.dim(-1);
    concat_impl(out.ptr<T>(), x_a.ptr<T>(), x_b.ptr<T>(), out.numel() / (da + db), da, db);
  });
}

void split_last_dim(Tensor dx_a, Tensor dx_b, Tensor dout, bool accumulate_a, bool accumulate_b) {
  dispatch_float(dout.dtype, "split_last_dim", [&](auto tag) {
    using T = decltype(tag);
    const int64_t wa = dx_a.dim(-1), wb = dx_b.dim(-1);
    split_impl(dx_a.ptr<T>(), dx_b.ptr<T>(), dout.ptr<T>(), dout.numel() / (wa + wb), wa, wb, accumulate_a,
               accumulate_b);
  });
}

}  // namespace l3c::ops::cpu
