// CPU Mixture-of-Experts ops: the router (softmax, top-k, renormalisation) and its backward with the
// auxiliary losses, the layer's routing statistics, the (token, slot) pair bookkeeping, the grouped expert
// products and the weighted combine back into token order. Every row / token is independent, so the work is split over rows and
// each output element is written by one thread in a fixed order: results do not depend on scheduling.
// GCC 12 reports false "may be used uninitialized" warnings inside Eigen's AVX-512 kernels.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/router_top_k.h"

namespace l3c::ops::cpu {
namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int64_t kParallelMin = 1 << 14;  // elements; below this one thread is faster

template <typename T>
void router_forward_impl(Tensor probs, Tensor lse, Tensor experts, Tensor weights, Tensor logits, bool normalize) {
  const int64_t n_rows = logits.numel() / logits.dim(-1), E = logits.dim(-1), k = experts.dim(-1);
  const T* r = logits.ptr<T>();
  T* p = probs.ptr<T>();
  T* row_lse = lse.ptr<T>();
  int32_t* chosen = experts.ptr<int32_t>();
  T* w = weights.ptr<T>();
#pragma omp parallel for schedule(static) if (n_rows * E > kParallelMin)
  for (int64_t n = 0; n < n_rows; ++n) {
    const T* rn = r + n * E;
    T* pn = p + n * E;
    double max_logit = rn[0];
    for (int64_t e = 1; e < E; ++e) max_logit = std::max<double>(max_logit, rn[e]);
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(rn[e]) - max_logit);
    const double log_sum = max_logit + std::log(sum);
    row_lse[n] = static_cast<T>(log_sum);
    for (int64_t e = 0; e < E; ++e) pn[e] = static_cast<T>(std::exp(static_cast<double>(rn[e]) - log_sum));
    router_top_k(chosen + n * k, w + n * k, pn, E, k, normalize);
  }
}

template <typename T>
void router_backward_impl(Tensor dlogits, Tensor dweights, Tensor probs, Tensor lse, Tensor experts, Tensor weights,
                          Tensor probs_bias, double z_scale, bool normalize) {
  const int64_t n_rows = probs.numel() / probs.dim(-1), E = probs.dim(-1), k = experts.dim(-1);
  const T* p = probs.ptr<T>();
  const T* row_lse = lse.ptr<T>();
  const T* dw = dweights.ptr<T>();
  const T* w = weights.ptr<T>();
  const T* bias = probs_bias.empty() ? nullptr : probs_bias.ptr<T>();
  const int32_t* chosen = experts.ptr<int32_t>();
  T* dr = dlogits.ptr<T>();
#pragma omp parallel
  {
    std::vector<double> dp(static_cast<size_t>(E));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < n_rows; ++n) {
      const T* pn = p + n * E;
      const T* dwn = dw + n * k;
      const T* wn = w + n * k;
      const int32_t* cn = chosen + n * k;
      for (int64_t e = 0; e < E; ++e) dp[e] = bias ? static_cast<double>(bias[e]) : 0.0;
      // Through the top-k weights: w_j = p_j / S (S = sum of the chosen p) when normalised, so
      // dL/dp_j = (dw_j - sum_i dw_i w_i) / S; else w_j = p_j.
      if (normalize) {
        double chosen_sum = 0.0, weighted = 0.0;
        for (int64_t s = 0; s < k; ++s) {
          chosen_sum += static_cast<double>(pn[cn[s]]);
          weighted += static_cast<double>(dwn[s]) * static_cast<double>(wn[s]);
        }
        for (int64_t s = 0; s < k; ++s) dp[cn[s]] += (static_cast<double>(dwn[s]) - weighted) / chosen_sum;
      } else {
        for (int64_t s = 0; s < k; ++s) dp[cn[s]] += static_cast<double>(dwn[s]);
      }
      // Softmax backward, plus the z-loss: d(lse^2)/dr_e = 2 lse p_e.
      double p_dot_dp = 0.0;
      for (int64_t e = 0; e < E; ++e) p_dot_dp += static_cast<double>(pn[e]) * dp[e];
      const double z = 2.0 * z_scale * static_cast<double>(row_lse[n]);
      T* drn = dr + n * E;
      for (int64_t e = 0; e < E; ++e)
        drn[e] = static_cast<T>(static_cast<double>(pn[e]) * (dp[e] - p_dot_dp + z));
    }
  }
}

// The kMoeStatistics values of ops.h, in double, rows in order (N is small next to the layer's products).
template <typename T>
void routing_stats_impl(Tensor stats, Tensor probs, Tensor lse, Tensor offsets) {
  const int64_t E = probs.dim(-1), n_rows = probs.numel() / E;
  const T* p = probs.ptr<T>();
  const T* l = lse.ptr<T>();
  const int32_t* off = offsets.ptr<int32_t>();
  std::vector<double> mass(static_cast<size_t>(E), 0.0);
  double entropy = 0.0, lse_squares = 0.0;
  for (int64_t n = 0; n < n_rows; ++n) {
    for (int64_t e = 0; e < E; ++e) {
      const double pe = static_cast<double>(p[n * E + e]);
      mass[e] += pe;
      if (pe > 0.0) entropy -= pe * std::log(pe);
    }
    lse_squares += static_cast<double>(l[n]) * static_cast<double>(l[n]);
  }
  const double tokens = static_cast<double>(n_rows), pairs = static_cast<double>(off[E] - off[0]);
  double balance = 0.0, most = 0.0, least = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    const double rows = static_cast<double>(off[e + 1] - off[e]);
    if (pairs > 0.0) balance += rows / pairs * (mass[e] / tokens);
    most = e == 0 ? rows : std::max(most, rows);
    least = e == 0 ? rows : std::min(least, rows);
  }
  T* out = stats.ptr<T>();
  out[0] = static_cast<T>(balance);
  out[1] = static_cast<T>(lse_squares / tokens);
  out[2] = static_cast<T>(most / tokens);
  out[3] = static_cast<T>(least / tokens);
  out[4] = static_cast<T>(entropy / tokens);
}

template <typename T>
void balance_bias_impl(Tensor probs_bias, Tensor offsets, double scale) {
  const int32_t* off = offsets.ptr<int32_t>();
  T* bias = probs_bias.ptr<T>();
  for (int64_t e = 0; e < probs_bias.numel(); ++e)
    bias[e] = static_cast<T>(scale * static_cast<double>(off[e + 1] - off[e]));
}

template <typename T>
void grouped_matmul_forward_impl(Tensor out, Tensor x, Tensor w, Tensor offsets) {
  const int64_t E = w.dim(0), O = w.dim(1), I = w.dim(2);
  const int32_t* off = offsets.ptr<int32_t>();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = off[e], rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    Eigen::Map<RowMajor<T>> Y(out.ptr<T>() + begin * O, rows, O);          // (rows, O)
    Eigen::Map<const RowMajor<T>> X(x.ptr<T>() + begin * I, rows, I);      // (rows, I)
    Eigen::Map<const RowMajor<T>> W(w.ptr<T>() + e * O * I, O, I);         // (O, I)
    Y.noalias() = X * W.transpose();
  }
}

template <typename T>
void grouped_matmul_backward_impl(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                                  bool accumulate_dx) {
  const int64_t E = w.dim(0), O = w.dim(1), I = w.dim(2);
  const int32_t* off = offsets.ptr<int32_t>();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = off[e], rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    Eigen::Map<const RowMajor<T>> dY(dout.ptr<T>() + begin * O, rows, O);  // (rows, O)
    if (!dx.empty()) {
      Eigen::Map<RowMajor<T>> dX(dx.ptr<T>() + begin * I, rows, I);        // (rows, I)
      Eigen::Map<const RowMajor<T>> W(w.ptr<T>() + e * O * I, O, I);       // (O, I)
      if (accumulate_dx)
        dX.noalias() += dY * W;
      else
        dX.noalias() = dY * W;
    }
    if (!dw.empty()) {
      Eigen::Map<RowMajor<T>> dW(dw.ptr<T>() + e * O * I, O, I);           // (O, I)
      Eigen::Map<const RowMajor<T>> X(x.ptr<T>() + begin * I, rows, I);    // (rows, I)
      dW.noalias() += dY.transpose() * X;
    }
  }
}

template <typename T>
void combine_forward_impl(Tensor out, Tensor rows, Tensor weights, Tensor row_of_pair, bool accumulate) {
  const int64_t d = out.dim(-1), n_tokens = out.numel() / d, k = row_of_pair.numel() / std::max<int64_t>(n_tokens, 1);
  const T* r = rows.ptr<T>();
  const T* w = weights.empty() ? nullptr : weights.ptr<T>();
  const int32_t* where = row_of_pair.ptr<int32_t>();
  T* o = out.ptr<T>();
#pragma omp parallel for schedule(static) if (n_tokens * d * k > kParallelMin)
  for (int64_t n = 0; n < n_tokens; ++n) {
    T* on = o + n * d;
    if (!accumulate) std::fill(on, on + d, T(0));
    // Slots add in order 0..k-1: the sum is the same on any thread count.
    for (int64_t s = 0; s < k; ++s) {
      const T* src = r + static_cast<int64_t>(where[n * k + s]) * d;
      const T scale = w ? w[n * k + s] : T(1);
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) on[c] += scale * src[c];
    }
  }
}

template <typename T>
void combine_backward_impl(Tensor drows, Tensor dweights, Tensor dout, Tensor rows, Tensor weights,
                           Tensor row_of_pair) {
  const int64_t d = dout.dim(-1), n_tokens = dout.numel() / d, k = row_of_pair.numel() / std::max<int64_t>(n_tokens, 1);
  const T* dy = dout.ptr<T>();
  const T* r = rows.ptr<T>();
  const T* w = weights.empty() ? nullptr : weights.ptr<T>();
  T* dw = dweights.empty() ? nullptr : dweights.ptr<T>();
  const int32_t* where = row_of_pair.ptr<int32_t>();
  T* dr = drows.ptr<T>();
#pragma omp parallel for schedule(static) if (n_tokens * d * k > kParallelMin)
  for (int64_t n = 0; n < n_tokens; ++n) {
    const T* dyn = dy + n * d;
    for (int64_t s = 0; s < k; ++s) {
      const int64_t row = where[n * k + s];
      const T scale = w ? w[n * k + s] : T(1);
      T* drr = dr + row * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) drr[c] = scale * dyn[c];
      if (dw) {
        const T* rr = r + row * d;
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(dyn[c]) * static_cast<double>(rr[c]);
        dw[n * k + s] = static_cast<T>(dot);
      }
    }
  }
}

}  // namespace

void moe_router_forward(Tensor probs, Tensor lse, Tensor experts, Tensor weights, Tensor logits, bool normalize) {
  dispatch_float(logits.dtype, "moe_router_forward", [&](auto tag) {
    router_forward_impl<decltype(tag)>(probs, lse, experts, weights, logits, normalize);
  });
}

void moe_router_backward(Tensor dlogits, Tensor dweights, Tensor probs, Tensor lse, Tensor experts, Tensor weights,
                         Tensor probs_bias, double z_scale, bool normalize) {
  dispatch_float(probs.dtype, "moe_router_backward", [&](auto tag) {
    router_backward_impl<decltype(tag)>(dlogits, dweights, probs, lse, experts, weights, probs_bias, z_scale,
                                        normalize);
  });
}

void moe_routing_stats(Tensor stats, Tensor probs, Tensor lse, Tensor offsets) {
  dispatch_float(probs.dtype, "moe_routing_stats",
                 [&](auto tag) { routing_stats_impl<decltype(tag)>(stats, probs, lse, offsets); });
}

void moe_balance_bias(Tensor probs_bias, Tensor offsets, double scale) {
  dispatch_float(probs_bias.dtype, "moe_balance_bias",
                 [&](auto tag) { balance_bias_impl<decltype(tag)>(probs_bias, offsets, scale); });
}

void moe_pair_indices(Tensor token_of_row, Tensor row_of_pair, Tensor order, int64_t top_k) {
  const int64_t m = order.numel();
  const int32_t* o = order.ptr<int32_t>();
  int32_t* token = token_of_row.ptr<int32_t>();
  int32_t* where = row_of_pair.ptr<int32_t>();
#pragma omp parallel for schedule(static) if (m > kParallelMin)
  for (int64_t i = 0; i < m; ++i) {
    token[i] = static_cast<int32_t>(o[i] / top_k);
    where[o[i]] = static_cast<int32_t>(i);
  }
}

void grouped_matmul_forward(Tensor out, Tensor x, Tensor w, Tensor offsets) {
  dispatch_float(x.dtype, "grouped_matmul_forward", [&](auto tag) {
    grouped_matmul_forward_impl<decltype(tag)>(out, x, w, offsets);
  });
}

void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets,
                             bool accumulate_dx) {
  dispatch_float(x.dtype, "grouped_matmul_backward", [&](auto tag) {
    grouped_matmul_backward_impl<decltype(tag)>(dx, dw, dout, x, w, offsets, accumulate_dx);
  });
}

void moe_combine_forward(Tensor out, Tensor rows, Tensor weights, Tensor row_of_pair, bool accumulate) {
  dispatch_float(out.dtype, "moe_combine_forward", [&](auto tag) {
    combine_forward_impl<decltype(tag)>(out, rows, weights, row_of_pair, accumulate);
  });
}

void moe_combine_backward(Tensor drows, Tensor dweights, Tensor dout, Tensor rows, Tensor weights,
                          Tensor row_of_pair) {
  dispatch_float(dout.dtype, "moe_combine_backward", [&](auto tag) {
    combine_backward_impl<decltype(tag)>(drows, dweights, dout, rows, weights, row_of_pair);
  });
}

}  // namespace l3c::ops::cpu
