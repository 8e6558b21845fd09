// CPU ops of the inference session: writing new keys and values into the KV cache, and causal grouped-query
// attention of a few new query rows per sequence against the cache (the forward of attention.cpp with the
// queries shifted to positions start[b] ..). A task is one (batch row, query head, tile of query rows); it walks
// the cached keys in tiles (S = Q K^T, an online softmax per row, O += P V), so only a tile of scores exists at
// a time. Every task writes its own output rows: the result does not depend on the schedule.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // false positives inside Eigen's kernels (GCC 12)
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/attention_tile.h"
#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

constexpr int64_t kQBlock = 64;
constexpr int64_t kKBlock = 128;

template <typename T>
void attention_cached_impl(Tensor out_t, Tensor q_t, Tensor k_t, Tensor v_t, const int32_t* slots,
                           const int32_t* start) {
  const int64_t batch = q_t.dim(0), seq = q_t.dim(1), heads = q_t.dim(2), hd = q_t.dim(3);
  const int64_t max_positions = k_t.dim(1), kv_heads = k_t.dim(2), group = heads / kv_heads;
  const int64_t q_tiles = (seq + kQBlock - 1) / kQBlock, tasks = batch * heads * q_tiles;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const T* q = q_t.ptr<T>();
  const T* k = k_t.ptr<T>();
  const T* v = v_t.ptr<T>();
  T* out = out_t.ptr<T>();
  const int64_t q_stride = heads * hd, kv_stride = kv_heads * hd;
  int64_t work = 0;  // scores computed, to leave tiny calls on one thread
  for (int64_t b = 0; b < batch; ++b) work += (start[b] + seq) * seq;

#pragma omp parallel if (tasks > 1 && work * heads * hd > (1 << 15))
  {
    RowMajor<T> scores(kQBlock, kKBlock), acc(kQBlock, hd);
    std::vector<T> row_max(kQBlock), row_sum(kQBlock);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t tile = task % q_tiles, h = task / q_tiles % heads, b = task / q_tiles / heads;
      const int64_t g = h / group, first = start[b];
      const int64_t i0 = tile * kQBlock, i1 = std::min(seq, i0 + kQBlock), nq = i1 - i0;
      const int64_t keys = first + i1;  // the last row of the tile sees positions 0 .. first + i1 - 1
      const T* k_slot = k + static_cast<int64_t>(slots[b]) * max_positions * kv_stride + g * hd;
      const T* v_slot = v + static_cast<int64_t>(slots[b]) * max_positions * kv_stride + g * hd;
      ConstHeadRows<T> Q(q + ((b * seq + i0) * heads + h) * hd, nq, hd, Eigen::OuterStride<>(q_stride));
      auto O = acc.topRows(nq);
      start_online_softmax(O, row_max, row_sum);
      for (int64_t j0 = 0; j0 < keys; j0 += kKBlock) {
        const int64_t nk = std::min(keys, j0 + kKBlock) - j0;
        ConstHeadRows<T> K(k_slot + j0 * kv_stride, nk, hd, Eigen::OuterStride<>(kv_stride));
        ConstHeadRows<T> V(v_slot + j0 * kv_stride, nk, hd, Eigen::OuterStride<>(kv_stride));
        auto S = scores.topLeftCorner(nq, nk);
        S.noalias() = Q * K.transpose();
        // row r is the query at position first + i0 + r: it sees the keys at positions up to its own
        online_softmax_tile(S, O, row_max, row_sum, scale,
                            [&](int64_t r) { return visible_keys(first + i0 + r, j0, nk); });
        O.noalias() += S * V;
      }
      HeadRows<T> Out(out + ((b * seq + i0) * heads + h) * hd, nq, hd, Eigen::OuterStride<>(q_stride));
      for (int64_t r = 0; r < nq; ++r) Out.row(r) = O.row(r) * (T(1) / row_sum[r]);
    }
  }
}

}  // namespace

void kv_cache_write(Tensor cache, Tensor x, Tensor slots, Tensor start) {
  const int64_t batch = x.dim(0), seq = x.dim(1), row_bytes = x.dim(2) * x.dim(3) * dtype_size(x.dtype);
  const int64_t max_positions = cache.dim(1);
  const int32_t* slot = slots.ptr<int32_t>();
  const int32_t* first = start.ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b)
    std::memcpy(static_cast<std::byte*>(cache.data) + (slot[b] * max_positions + first[b]) * row_bytes,
                static_cast<const std::byte*>(x.data) + b * seq * row_bytes, static_cast<size_t>(seq * row_bytes));
}

void attention_cached(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor start) {
  dispatch_float(q.dtype, "attention_cached", [&](auto tag) {
    attention_cached_impl<decltype(tag)>(out, q, k_cache, v_cache, slots.ptr<int32_t>(), start.ptr<int32_t>());
  });
}

}  // namespace l3c::ops::cpu
