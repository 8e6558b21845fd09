// CPU L3 lookup attention (MODEL.md "Large Lookup Layer"): rows arrive grouped by token, so every
// token's block of rows X_u (m, d) meets the same table rows K_u (n_u, d), V_u (n_u, d_emb):
//   forward   P = softmax_rows(X_u K_u^T) (m, n_u),  E = P V_u (m, d_emb)
//   backward  dP = dE V_u^T,  dS = P * (dP - rowsum(P * dP)),  dX = dS K_u,
//             dK_u += dS^T X_u,  dV_u += P^T dE
// i.e. a grouped matrix product with a row softmax in between. Groups are independent: each writes its
// own output rows and its own table-gradient rows, so groups run in parallel (largest first, dynamic
// schedule for balance) and the result is the same whatever the schedule.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // false positives inside Eigen's kernels (GCC 12)
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace l3c::ops::cpu {
namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using Block = Eigen::Map<RowMajor<T>, 0, Eigen::OuterStride<>>;  // rows with a stride (probs: width k)
template <typename T>
using ConstBlock = Eigen::Map<const RowMajor<T>, 0, Eigen::OuterStride<>>;

// The non-empty groups, most work first (ties by token id, so the list is deterministic), and the
// largest m * n_u (for per-thread scratch). Checks every group's row count against the probs width
// here, outside the parallel region (an exception must not leave an OpenMP region).
struct WorkList {
  std::vector<int32_t> groups;
  int64_t max_block = 0;
};

WorkList make_work_list(const int32_t* group_offsets, const int32_t* row_offsets, int64_t num_groups,
                        int64_t width) {
  WorkList w;
  for (int64_t u = 0; u < num_groups; ++u) {
    const int64_t m = group_offsets[u + 1] - group_offsets[u], n = row_offsets[u + 1] - row_offsets[u];
    L3C_CHECK(m >= 0 && n >= 1 && n <= width, "ops::l3_lookup: token {} has {} rows and {} positions; rows must be "
              "in [1, {}] (the probs width)", u, n, m, width);
    if (m == 0) continue;
    w.groups.push_back(static_cast<int32_t>(u));
    w.max_block = std::max(w.max_block, m * n);
  }
  auto cost = [&](int32_t u) {
    return static_cast<int64_t>(group_offsets[u + 1] - group_offsets[u]) * (row_offsets[u + 1] - row_offsets[u]);
  };
  std::stable_sort(w.groups.begin(), w.groups.end(), [&](int32_t a, int32_t b) { return cost(a) > cost(b); });
  return w;
}

// Row-wise softmax of the (m, n) block in place; the padding columns [n, width) are set to 0.
template <typename T>
void softmax_rows(T* p, int64_t m, int64_t n, int64_t width) {
  for (int64_t i = 0; i < m; ++i) {
    T* row = p + i * width;
    T max_score = row[0];
    for (int64_t j = 1; j < n; ++j) max_score = std::max(max_score, row[j]);
    T sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      row[j] = std::exp(row[j] - max_score);
      sum += row[j];
    }
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    for (int64_t j = n; j < width; ++j) row[j] = 0;
  }
}

// A token's group: its positions g0 .. g0 + m - 1 and its table rows r0 .. r0 + n - 1.
struct Group {
  int64_t g0, m, r0, n;
};

// What the forward and the backward share: the shapes, the offsets, the work list, and the inputs' rows.
template <typename T>
struct LookupInputs {
  using ConstMap = Eigen::Map<const RowMajor<T>>;

  int64_t d, d_emb, width;
  const int32_t* go;
  const int32_t* ro;
  WorkList work;
  const T* X;
  const T* K;
  const T* V;

  LookupInputs(Tensor x, Tensor w_k, Tensor w_v, Tensor probs, Tensor group_offsets, Tensor row_offsets)
      : d(x.dim(-1)), d_emb(w_v.dim(1)), width(probs.dim(-1)), go(group_offsets.ptr<int32_t>()),
        ro(row_offsets.ptr<int32_t>()), work(make_work_list(go, ro, group_offsets.numel() - 1, width)),
        X(x.ptr<T>()), K(w_k.ptr<T>()), V(w_v.ptr<T>()) {}

  int64_t tasks() const { return static_cast<int64_t>(work.groups.size()); }
  // The group of task t (largest first).
  Group group(int64_t t) const {
    const int64_t u = work.groups[t];
    return {go[u], go[u + 1] - go[u], ro[u], ro[u + 1] - ro[u]};
  }
  ConstMap x_rows(int64_t g0, int64_t m) const { return ConstMap(X + g0 * d, m, d); }          // (m, d)
  ConstMap k_rows(int64_t r0, int64_t n) const { return ConstMap(K + r0 * d, n, d); }          // (n, d)
  ConstMap v_rows(int64_t r0, int64_t n) const { return ConstMap(V + r0 * d_emb, n, d_emb); }  // (n, d_emb)
};

template <typename T>
void forward_impl(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                  Tensor row_offsets) {
  const LookupInputs<T> in(x, w_k, w_v, probs, group_offsets, row_offsets);
  const int64_t d_emb = in.d_emb, width = in.width, tasks = in.tasks();
  T* P = probs.ptr<T>();
  T* E = out.ptr<T>();
#pragma omp parallel for schedule(dynamic, 1) if (x.numel() > (1 << 14))
  for (int64_t t = 0; t < tasks; ++t) {
    const auto [g0, m, r0, n] = in.group(t);
    Block<T> Pu(P + g0 * width, m, n, Eigen::OuterStride<>(width));  // (m, n) inside (m, width)
    Eigen::Map<RowMajor<T>> Eu(E + g0 * d_emb, m, d_emb);          // (m, d_emb)
    Pu.noalias() = in.x_rows(g0, m) * in.k_rows(r0, n).transpose();
    softmax_rows(P + g0 * width, m, n, width);
    Eu.noalias() = Pu * in.v_rows(r0, n);
  }
}

template <typename T>
void backward_impl(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v, Tensor probs,
                   Tensor group_offsets, Tensor row_offsets) {
  const LookupInputs<T> in(x, w_k, w_v, probs, group_offsets, row_offsets);
  const int64_t d = in.d, d_emb = in.d_emb, width = in.width, tasks = in.tasks();
  const T* P = probs.ptr<T>();
  const T* dE = dout.ptr<T>();
  T* dX = dx.ptr<T>();
  T* dK = dw_k.ptr<T>();
  T* dV = dw_v.ptr<T>();
#pragma omp parallel if (x.numel() > (1 << 14))
  {
    // dP, then dS, of one group; aligned so that Eigen's code path does not depend on the heap (classifier.cpp)
    std::vector<T, Eigen::aligned_allocator<T>> scratch(static_cast<size_t>(in.work.max_block));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const auto [g0, m, r0, n] = in.group(t);
      const auto Xu = in.x_rows(g0, m), Ku = in.k_rows(r0, n), Vu = in.v_rows(r0, n);
      ConstBlock<T> Pu(P + g0 * width, m, n, Eigen::OuterStride<>(width));  // (m, n)
      Eigen::Map<const RowMajor<T>> dEu(dE + g0 * d_emb, m, d_emb);   // (m, d_emb)
      Eigen::Map<RowMajor<T>> dXu(dX + g0 * d, m, d);                 // (m, d)
      Eigen::Map<RowMajor<T>> dKu(dK + r0 * d, n, d);                 // (n, d)
      Eigen::Map<RowMajor<T>> dVu(dV + r0 * d_emb, n, d_emb);         // (n, d_emb)
      Eigen::Map<RowMajor<T>> dS(scratch.data(), m, n);               // (m, n)
      dS.noalias() = dEu * Vu.transpose();  // dP
      // softmax backward: dS = P * (dP - sum_j P_j dP_j), row by row
      for (int64_t i = 0; i < m; ++i) {
        T* ds = scratch.data() + i * n;
        const T* p = P + (g0 + i) * width;
        T dot = 0;
        for (int64_t j = 0; j < n; ++j) dot += p[j] * ds[j];
        for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - dot);
      }
      dVu.noalias() += Pu.transpose() * dEu;  // before dK: with tied tables both add into the same rows
      dKu.noalias() += dS.transpose() * Xu;
      dXu.noalias() = dS * Ku;
    }
  }
}

}  // namespace

void l3_lookup_forward(Tensor out, Tensor probs, Tensor x, Tensor w_k, Tensor w_v, Tensor group_offsets,
                       Tensor row_offsets) {
  dispatch_float(x.dtype, "l3_lookup_forward", [&](auto tag) {
    forward_impl<decltype(tag)>(out, probs, x, w_k, w_v, group_offsets, row_offsets);
  });
}

void l3_lookup_backward(Tensor dx, Tensor dw_k, Tensor dw_v, Tensor dout, Tensor x, Tensor w_k, Tensor w_v,
                        Tensor probs, Tensor group_offsets, Tensor row_offsets) {
  dispatch_float(x.dtype, "l3_lookup_backward", [&](auto tag) {
    backward_impl<decltype(tag)>(dx, dw_k, dw_v, dout, x, w_k, w_v, probs, group_offsets, row_offsets);
  });
}

}  // namespace l3c::ops::cpu
