// What the CPU attention of training (attention.cpp) and of the inference session (attention_cached.cpp) share:
// Eigen maps of one head's rows inside a (B, T, heads, hd) tensor, and the online softmax over one tile of keys.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace l3c::ops::cpu {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// Rows of one head inside a (B, T, heads, hd) tensor: consecutive positions are heads*hd apart.
template <typename T>
using HeadRows = Eigen::Map<RowMajor<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using ConstHeadRows = Eigen::Map<const RowMajor<T>, 0, Eigen::OuterStride<>>;

// Number of keys of the tile [j0, j0 + nk) that query position i may see (keys <= i); may be <= 0.
inline int64_t visible_keys(int64_t i, int64_t j0, int64_t nk) { return std::min(nk, i - j0 + 1); }

// The online softmax's state before a query tile's first key tile: no max yet (-inf), an empty sum, a zero
// output accumulator.
template <typename T, typename Accumulator>
void start_online_softmax(Accumulator& O, std::vector<T>& row_max, std::vector<T>& row_sum) {
  O.setZero();
  std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<T>::infinity());
  std::fill(row_sum.begin(), row_sum.end(), T(0));
}

// One tile of keys of the online softmax. S (nq, nk) holds the tile's unscaled scores Q K^T; query row r sees
// the first visible(r) keys of the tile (none when <= 0). Per row: the running max m is raised to the tile's
// scaled max, the running sum l and the output accumulator O (nq, hd) are rescaled to it, and S becomes the
// unnormalised probabilities exp(scale S - m) of the visible keys, zeros elsewhere (ready for O += S V).
template <typename T, typename Scores, typename Accumulator, typename Visible>
void online_softmax_tile(Scores& S, Accumulator& O, std::vector<T>& row_max, std::vector<T>& row_sum, T scale,
                         Visible visible) {
  const int64_t nq = S.rows(), nk = S.cols();
  for (int64_t r = 0; r < nq; ++r) {
    const int64_t seen = visible(r);
    if (seen <= 0) {  // the whole tile is in this row's future
      S.row(r).setZero();
      continue;
    }
    auto row = S.row(r).head(seen);
    const T tile_max = row.maxCoeff() * scale;
    const T new_max = std::max(row_max[r], tile_max);
    const T rescale = std::exp(row_max[r] - new_max);  // 0 on the first tile (max was -inf)
    row = (row.array() * scale - new_max).exp();
    S.row(r).tail(nk - seen).setZero();
    row_sum[r] = row_sum[r] * rescale + row.sum();
    if (rescale != T(1)) O.row(r) *= rescale;
    row_max[r] = new_max;
  }
}

}  // namespace l3c::ops::cpu
