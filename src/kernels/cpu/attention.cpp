// CPU causal grouped-query attention, flash-style.
//
// Forward: a task is one (batch, query head, tile of q_block query rows). It walks the keys 0..i1-1
// in tiles of k_block: S = Q K^T (a small GEMM), then per row an online softmax update (running max m,
// running sum l, rescaling the output accumulator when the max grows), then O += P V (a small GEMM).
// Only a q_block x k_block tile of scores exists at a time; there is never a T x T matrix. Each row
// keeps lse = m + log(l) for the backward. The softmax is still per query row (contiguous head_dim,
// vectorised through Eigen); tiling rows together only lets the two products run as small GEMMs,
// which is several times faster than one dot product per (query, key) pair.
//
// Backward (FlashAttention-2 order): a task is one (batch, kv head) and owns that kv head's dk and dv
// rows and the dq rows of every query head that reads it, so no two tasks write the same memory and
// no atomics are needed; each task's sums run in a fixed order, so results are deterministic. For each
// key tile it accumulates dK, dV over the query tiles at or after it, recomputing P = exp(S - lse):
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D) / sqrt(hd) with D_i = dO_i . O_i,
//   dQ += dS K,    dK += dS^T Q.
#include <omp.h>

// GCC 12 reports false "may be used uninitialized" warnings inside Eigen's AVX-512 kernels.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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

constexpr int64_t kDefaultQBlock = 64;
constexpr int64_t kDefaultKBlock = 64;

struct AttentionDims {
  int64_t batch, seq, heads, kv_heads, hd;
  int64_t group() const { return heads / kv_heads; }  // query heads per kv head
  int64_t q_stride() const { return heads * hd; }
  int64_t kv_stride() const { return kv_heads * hd; }
  // Offset of row t of head h in a (B, T, heads, hd) tensor.
  int64_t q_offset(int64_t b, int64_t t, int64_t h) const { return ((b * seq + t) * heads + h) * hd; }
  int64_t kv_offset(int64_t b, int64_t t, int64_t g) const { return ((b * seq + t) * kv_heads + g) * hd; }
};

AttentionDims dims_of(const Tensor& q, const Tensor& k) {
  return {q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
}

template <typename T>
void attention_forward_impl(Tensor out_t, Tensor lse_t, Tensor q_t, Tensor k_t, Tensor v_t,
                            AttentionTiles tiles) {
  const AttentionDims dim = dims_of(q_t, k_t);
  const int64_t q_block = tiles.q_block > 0 ? tiles.q_block : kDefaultQBlock;
  const int64_t k_block = tiles.k_block > 0 ? tiles.k_block : kDefaultKBlock;
  const int64_t q_tiles = (dim.seq + q_block - 1) / q_block;
  const int64_t tasks = dim.batch * dim.heads * q_tiles;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dim.hd)));
  const T* q = q_t.ptr<T>();
  const T* k = k_t.ptr<T>();
  const T* v = v_t.ptr<T>();
  T* out = out_t.ptr<T>();
  T* lse = lse_t.ptr<T>();

#pragma omp parallel if (tasks > 1 && dim.seq * dim.seq * dim.hd * dim.batch * dim.heads > (1 << 16))
  {
    RowMajor<T> scores(q_block, k_block);  // one tile of scores, then of probabilities
    RowMajor<T> acc(q_block, dim.hd);      // unnormalised output rows
    std::vector<T> row_max(q_block), row_sum(q_block);
    // Tiles of late rows see more keys: hand them out first so the threads finish together.
    // (Dynamic scheduling does not affect results: every task writes its own rows.)
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t tile = q_tiles - 1 - task % q_tiles;
      const int64_t b = task / q_tiles / dim.heads, h = task / q_tiles % dim.heads;
      const int64_t g = h / dim.group();
      const int64_t i0 = tile * q_block, i1 = std::min(dim.seq, i0 + q_block), nq = i1 - i0;
      ConstHeadRows<T> Q(q + dim.q_offset(b, i0, h), nq, dim.hd, Eigen::OuterStride<>(dim.q_stride()));
      auto O = acc.topRows(nq);
      start_online_softmax(O, row_max, row_sum);

      for (int64_t j0 = 0; j0 < i1; j0 += k_block) {
        const int64_t nk = std::min(i1, j0 + k_block) - j0;
        ConstHeadRows<T> K(k + dim.kv_offset(b, j0, g), nk, dim.hd, Eigen::OuterStride<>(dim.kv_stride()));
        ConstHeadRows<T> V(v + dim.kv_offset(b, j0, g), nk, dim.hd, Eigen::OuterStride<>(dim.kv_stride()));
        auto S = scores.topLeftCorner(nq, nk);
        S.noalias() = Q * K.transpose();  // (nq, nk) unscaled scores
        online_softmax_tile(S, O, row_max, row_sum, scale, [&](int64_t r) { return visible_keys(i0 + r, j0, nk); });
        O.noalias() += S * V;
      }

      HeadRows<T> Out(out + dim.q_offset(b, i0, h), nq, dim.hd, Eigen::OuterStride<>(dim.q_stride()));
      T* lse_row = lse + (b * dim.heads + h) * dim.seq + i0;
      for (int64_t r = 0; r < nq; ++r) {
        Out.row(r) = O.row(r) * (T(1) / row_sum[r]);
        lse_row[r] = row_max[r] + std::log(row_sum[r]);
      }
    }
  }
}

template <typename T>
void attention_backward_impl(Tensor dq_t, Tensor dk_t, Tensor dv_t, Tensor dout_t, Tensor q_t, Tensor k_t,
                             Tensor v_t, Tensor out_t, Tensor lse_t, AttentionTiles tiles) {
  const AttentionDims dim = dims_of(q_t, k_t);
  const int64_t q_block = tiles.q_block > 0 ? tiles.q_block : kDefaultQBlock;
  const int64_t k_block = tiles.k_block > 0 ? tiles.k_block : kDefaultKBlock;
  const int64_t tasks = dim.batch * dim.kv_heads;
  const int64_t group = dim.group();
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dim.hd)));
  const T* q = q_t.ptr<T>();
  const T* k = k_t.ptr<T>();
  const T* v = v_t.ptr<T>();
  const T* out = out_t.ptr<T>();
  const T* dout = dout_t.ptr<T>();
  const T* lse = lse_t.ptr<T>();
  T* dq = dq_t.ptr<T>();
  T* dk = dk_t.ptr<T>();
  T* dv = dv_t.ptr<T>();

#pragma omp parallel if (tasks > 1 && dim.seq * dim.seq * dim.hd * dim.batch * dim.heads > (1 << 15))
  {
    RowMajor<T> probs(q_block, k_block);  // P for one tile
    RowMajor<T> dprobs(q_block, k_block); // dP, then dS, for one tile
    RowMajor<T> dk_acc(k_block, dim.hd), dv_acc(k_block, dim.hd);
    std::vector<T> delta(group * dim.seq);  // D_i = dO_i . O_i for the task's query heads
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / dim.kv_heads, g = task % dim.kv_heads;
      for (int64_t hr = 0; hr < group; ++hr) {
        const int64_t h = g * group + hr;
        for (int64_t i = 0; i < dim.seq; ++i) {
          const T* o = out + dim.q_offset(b, i, h);
          const T* go = dout + dim.q_offset(b, i, h);
          T dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t c = 0; c < dim.hd; ++c) dot += o[c] * go[c];
          delta[hr * dim.seq + i] = dot;
          std::memset(dq + dim.q_offset(b, i, h), 0, sizeof(T) * dim.hd);
        }
      }

      for (int64_t j0 = 0; j0 < dim.seq; j0 += k_block) {
        const int64_t nk = std::min(dim.seq, j0 + k_block) - j0;
        ConstHeadRows<T> K(k + dim.kv_offset(b, j0, g), nk, dim.hd, Eigen::OuterStride<>(dim.kv_stride()));
        ConstHeadRows<T> V(v + dim.kv_offset(b, j0, g), nk, dim.hd, Eigen::OuterStride<>(dim.kv_stride()));
        auto dK = dk_acc.topRows(nk);
        auto dV = dv_acc.topRows(nk);
        dK.setZero();
        dV.setZero();
        for (int64_t hr = 0; hr < group; ++hr) {
          const int64_t h = g * group + hr;
          const T* lse_head = lse + (b * dim.heads + h) * dim.seq;
          const T* delta_head = delta.data() + hr * dim.seq;
          // Query tiles that see at least one key of this tile: those ending after j0.
          for (int64_t i0 = j0 / q_block * q_block; i0 < dim.seq; i0 += q_block) {
            const int64_t nq = std::min(dim.seq, i0 + q_block) - i0;
            const Eigen::OuterStride<> qs(dim.q_stride());
            ConstHeadRows<T> Q(q + dim.q_offset(b, i0, h), nq, dim.hd, qs);
            ConstHeadRows<T> dO(dout + dim.q_offset(b, i0, h), nq, dim.hd, qs);
            HeadRows<T> dQ(dq + dim.q_offset(b, i0, h), nq, dim.hd, qs);
            auto P = probs.topLeftCorner(nq, nk);
            auto dS = dprobs.topLeftCorner(nq, nk);
            P.noalias() = Q * K.transpose();
            for (int64_t r = 0; r < nq; ++r) {
              const int64_t visible = visible_keys(i0 + r, j0, nk);
              if (visible <= 0) {
                P.row(r).setZero();
                continue;
              }
              P.row(r).head(visible) = (P.row(r).head(visible).array() * scale - lse_head[i0 + r]).exp();
              P.row(r).tail(nk - visible).setZero();
            }
            dV.noalias() += P.transpose() * dO;
            dS.noalias() = dO * V.transpose();  // dP
            for (int64_t r = 0; r < nq; ++r)
              dS.row(r) = (P.row(r).array() * (dS.row(r).array() - delta_head[i0 + r])) * scale;
            dQ.noalias() += dS * K;
            dK.noalias() += dS.transpose() * Q;
          }
        }
        HeadRows<T>(dk + dim.kv_offset(b, j0, g), nk, dim.hd, Eigen::OuterStride<>(dim.kv_stride())) = dK;
        HeadRows<T>(dv + dim.kv_offset(b, j0, g), nk, dim.hd, Eigen::OuterStride<>(dim.kv_stride())) = dV;
      }
    }
  }
}

}  // namespace

void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, AttentionTiles tiles) {
  dispatch_float(q.dtype, "attention_forward", [&](auto tag) {
    attention_forward_impl<decltype(tag)>(out, lse, q, k, v, tiles);
  });
}

void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                        Tensor out, Tensor lse, AttentionTiles tiles) {
  dispatch_float(q.dtype, "attention_backward", [&](auto tag) {
    attention_backward_impl<decltype(tag)>(dq, dk, dv, dout, q, k, v, out, lse, tiles);
  });
}

}  // namespace l3c::ops::cpu
