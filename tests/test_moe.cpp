// Mixture-of-Experts: the router, routing statistics, pair, grouped-product and combine ops against naive loops
// written here from MODEL.md; the router's backward (with the load-balancing and z-loss terms) and the whole
// MoE layer by finite differences in f64 on inputs whose top-k choice is far from a tie; the grouped
// layer against a naive per-token loop over experts; the load-balancing loss of an evenly routed batch;
// a model mixing dense, MoE and L3 layers by finite differences; parameter names and active counts;
// the config's bad inputs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "core/config.h"
#include "kernels/arena.h"
#include "kernels/ops.h"
#include "model/llama.h"
#include "model/moe.h"
#include "test_util.h"
#include "tiny_models.h"

using namespace l3c;
using namespace l3c::test;
using Catch::Matchers::Contains;

namespace {

double silu(double x) { return x / (1.0 + std::exp(-x)); }

// Softmax, top-k (descending probability, ties to the lower index) and weights of one router row.
struct NaiveRoute {
  std::vector<double> probs;
  double lse = 0.0;
  std::vector<int> experts;
  std::vector<double> weights;
};

NaiveRoute naive_route(const std::vector<double>& logits, int64_t top_k, bool normalize) {
  NaiveRoute r;
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (double x : logits) sum += std::exp(x - max_logit);
  r.lse = max_logit + std::log(sum);
  for (double x : logits) r.probs.push_back(std::exp(x - r.lse));
  std::vector<int> index(logits.size());
  std::iota(index.begin(), index.end(), 0);
  std::stable_sort(index.begin(), index.end(), [&](int a, int b) { return r.probs[a] > r.probs[b]; });
  double chosen = 0.0;
  for (int64_t s = 0; s < top_k; ++s) chosen += r.probs[index[s]];
  for (int64_t s = 0; s < top_k; ++s) {
    r.experts.push_back(index[s]);
    r.weights.push_back(normalize ? r.probs[index[s]] / chosen : r.probs[index[s]]);
  }
  return r;
}

std::vector<double> row(const Tensor& t, int64_t n) {
  const int64_t d = t.dim(-1);
  std::vector<double> out(static_cast<size_t>(d));
  for (int64_t c = 0; c < d; ++c) out[c] = get_value(t, n * d + c);
  return out;
}

// y = W x for W (rows, cols) stored at element offset `base` of t.
std::vector<double> matvec(const Tensor& t, int64_t base, int64_t rows, int64_t cols, const std::vector<double>& x) {
  std::vector<double> y(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) y[r] += get_value(t, base + r * cols + c) * x[c];
  return y;
}

// The smallest gap between the top_k-th and the next probability over the rows of logits (N, E):
// finite differences are only valid when no perturbation can change the chosen experts.
double smallest_topk_margin(const Tensor& logits, int64_t top_k) {
  double margin = 1.0;
  const int64_t N = logits.numel() / logits.dim(-1);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> p = naive_route(row(logits, n), top_k, true).probs;
    std::sort(p.begin(), p.end(), std::greater<>());
    margin = std::min(margin, p[top_k - 1] - p[top_k]);
  }
  return margin;
}

}  // namespace

// ---- ops ----------------------------------------------------------------------------------------------

TEST_CASE("moe_router_forward: softmax, top-k with ties to the lower index, renormalised weights", "[moe][ops]") {
  const int64_t N = 5, E = 6;
  for (int64_t top_k : {1, 2, 3}) {
    for (bool normalize : {true, false}) {
      TestTensor logits(DType::F64, {N, E});
      random_fill(logits, 3 + top_k, 1.5);
      // row 1: a three-way tie at the top; row 2: every expert equal
      for (int64_t e = 0; e < E; ++e) logits.set(1 * E + e, e == 1 || e == 3 || e == 4 ? 2.0 : -1.0 * e);
      for (int64_t e = 0; e < E; ++e) logits.set(2 * E + e, 0.25);
      TestTensor probs(DType::F64, {N, E}), lse(DType::F64, {N}), experts(DType::I32, {N, top_k}),
          weights(DType::F64, {N, top_k});
      ops::moe_router_forward(probs, lse, experts, weights, logits, normalize);
      for (int64_t n = 0; n < N; ++n) {
        const NaiveRoute r = naive_route(row(logits, n), top_k, normalize);
        CHECK(std::abs(lse[n] - r.lse) < 1e-12);
        CHECK(max_abs_error(row(probs, n), r.probs) < 1e-14);
        for (int64_t s = 0; s < top_k; ++s) {
          CHECK(experts.ptr<int32_t>()[n * top_k + s] == r.experts[s]);
          CHECK(std::abs(weights[n * top_k + s] - r.weights[s]) < 1e-14);
        }
      }
      // the ties: row 1 picks experts 1, 3, 4 in index order; row 2 picks 0, 1, 2
      for (int64_t s = 0; s < top_k; ++s) {
        CHECK(experts.ptr<int32_t>()[1 * top_k + s] == std::vector<int>{1, 3, 4}[s]);
        CHECK(experts.ptr<int32_t>()[2 * top_k + s] == s);
      }
    }
  }
}

TEST_CASE("moe_router_backward matches finite differences, with the load-balancing and z-loss terms (f64)",
          "[moe][ops][gradcheck]") {
  const int64_t N = 7, E = 5, top_k = 2;
  for (bool normalize : {true, false}) {
    TestTensor logits(DType::F64, {N, E}), dweights(DType::F64, {N, top_k}), bias(DType::F64, {E});
    random_fill(logits, 24, 1.0);
    random_fill(dweights, 22);
    random_fill(bias, 23);
    REQUIRE(smallest_topk_margin(logits, top_k) > 1e-3);
    const double z_scale = 0.37;
    TestTensor probs(DType::F64, {N, E}), lse(DType::F64, {N}), experts(DType::I32, {N, top_k}),
        weights(DType::F64, {N, top_k});
    auto objective = [&] {
      ops::moe_router_forward(probs, lse, experts, weights, logits, normalize);
      double j = dot(weights, dweights) + z_scale * ops::sum_squares(lse);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t e = 0; e < E; ++e) j += bias[e] * probs[n * E + e];
      return j;
    };
    const std::vector<double> numeric = numerical_gradient(logits, objective, 1e-6);
    objective();
    TestTensor dlogits(DType::F64, {N, E});
    ops::moe_router_backward(dlogits, dweights, probs, lse, experts, weights, bias, z_scale, normalize);
    INFO("normalize " << normalize);
    CHECK(norm_relative_error(dlogits.values(), numeric) < 1e-8);
  }
}

TEST_CASE("moe_routing_stats and moe_balance_bias give the layer's statistics from probs, lse and offsets",
          "[moe][ops]") {
  // 3 tokens, 3 experts, top_k 2: expert 0 receives 3 pairs, expert 1 none, expert 2 three.
  const TestTensor probs = TestTensor::from_values(DType::F64, {3, 3}, {0.5, 0.2, 0.3, 0.6, 0.1, 0.3, 1.0, 0.0, 0.0});
  const TestTensor lse = TestTensor::from_values(DType::F64, {3}, {1.0, -2.0, 0.5});
  const TestTensor offsets = TestTensor::from_values(DType::I32, {4}, {0, 3, 3, 6});
  TestTensor stats(DType::F64, {ops::kMoeStatistics});
  ops::moe_routing_stats(stats, probs, lse, offsets);
  const double P0 = (0.5 + 0.6 + 1.0) / 3, P2 = (0.3 + 0.3 + 0.0) / 3;
  CHECK(stats[0] == Approx(0.5 * P0 + 0.5 * P2).epsilon(1e-14));          // sum_e f_e P_e, f = (1/2, 0, 1/2)
  CHECK(stats[1] == Approx((1.0 + 4.0 + 0.25) / 3).epsilon(1e-14));       // mean lse^2
  CHECK(stats[2] == 1.0);                                                  // 3 of 3 tokens reach expert 0
  CHECK(stats[3] == 0.0);                                                  // none reaches expert 1
  auto h = [](double p) { return p > 0.0 ? -p * std::log(p) : 0.0; };     // 0 log 0 = 0: a one-hot row has none
  CHECK(stats[4] == Approx((h(0.5) + h(0.2) + h(0.3) + h(0.6) + h(0.1) + h(0.3)) / 3).epsilon(1e-14));
  TestTensor bias(DType::F64, {3});
  ops::moe_balance_bias(bias, offsets, 0.25);
  CHECK(bias.values() == std::vector<double>{0.75, 0.0, 0.75});
  // no token: all zero
  TestTensor none_probs(DType::F64, {0, 3}), none_lse(DType::F64, {0});
  const TestTensor none_offsets = TestTensor::from_values(DType::I32, {4}, {0, 0, 0, 0});
  ops::moe_routing_stats(stats, none_probs, none_lse, none_offsets);
  CHECK(stats.values() == std::vector<double>(ops::kMoeStatistics, 0.0));
  // bad shapes
  TestTensor short_stats(DType::F64, {3});
  CHECK_THROWS_WITH(ops::moe_routing_stats(short_stats, probs, lse, offsets),
                    Contains("moe_routing_stats") && Contains("stats (3) (5)"));
  CHECK_THROWS_WITH(ops::moe_balance_bias(bias, TestTensor(DType::I32, {3}), 1.0),
                    Contains("moe_balance_bias") && Contains("offsets (3) (E + 1)"));
}

TEST_CASE("moe_pair_indices inverts the expert order and names each row's token", "[moe][ops]") {
  // 4 tokens x top_k 2; experts per pair
  const std::vector<int32_t> pair_experts = {2, 0, 1, 2, 0, 2, 1, 0};
  TestTensor keys(DType::I32, {8}), order(DType::I32, {8}), offsets(DType::I32, {4});
  for (int i = 0; i < 8; ++i) keys.ptr<int32_t>()[i] = pair_experts[i];
  ops::group_by_key(order, offsets, keys);
  TestTensor token_of_row(DType::I32, {8}), row_of_pair(DType::I32, {8});
  ops::moe_pair_indices(token_of_row, row_of_pair, order, 2);
  for (int i = 0; i < 8; ++i) {
    const int32_t pair = order.ptr<int32_t>()[i];
    CHECK(token_of_row.ptr<int32_t>()[i] == pair / 2);
    CHECK(row_of_pair.ptr<int32_t>()[pair] == i);
  }
  // expert 0's rows come first and keep token order: pairs 1, 4, 7
  CHECK(std::vector<int32_t>(order.ptr<int32_t>(), order.ptr<int32_t>() + 3) == std::vector<int32_t>{1, 4, 7});
}

TEST_CASE("grouped_matmul forward and backward equal per-group products, with empty groups", "[moe][ops]") {
  const int64_t M = 9, I = 5, O = 4, E = 4;
  // groups of 3, 0, 6, 0 rows: experts 1 and 3 receive no rows
  TestTensor offsets = TestTensor::from_values(DType::I32, {E + 1}, {0, 3, 3, 9, 9});
  for (DType dtype : {DType::F64, DType::F32}) {
    TestTensor x(dtype, {M, I}), w(dtype, {E, O, I}), dout(dtype, {M, O});
    random_fill(x, 31);
    random_fill(w, 32);
    random_fill(dout, 33);
    TestTensor out(dtype, {M, O});
    ops::grouped_matmul_forward(out, x, w, offsets);
    TestTensor dx(dtype, {M, I}), dw(dtype, {E, O, I});
    random_fill(dw, 34);  // dw accumulates
    const std::vector<double> dw_before = dw.values();
    ops::grouped_matmul_backward(dx, dw, dout, x, w, offsets);
    std::vector<double> want_out(M * O, 0.0), want_dx(M * I, 0.0), want_dw = dw_before;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t m = static_cast<int64_t>(offsets[e]); m < offsets[e + 1]; ++m)
        for (int64_t o = 0; o < O; ++o)
          for (int64_t i = 0; i < I; ++i) {
            const double wv = w[(e * O + o) * I + i];
            want_out[m * O + o] += x[m * I + i] * wv;
            want_dx[m * I + i] += dout[m * O + o] * wv;
            want_dw[(e * O + o) * I + i] += dout[m * O + o] * x[m * I + i];
          }
    const double tol = dtype == DType::F64 ? 1e-13 : 1e-4;  // f32: sums of 5 products with cancellation
    CHECK(max_relative_error(out.values(), want_out) < tol);
    CHECK(max_relative_error(dx.values(), want_dx) < tol);
    CHECK(max_relative_error(dw.values(), want_dw) < tol);
    // the experts that received no rows keep their gradient as it was
    for (int64_t e : {1, 3})
      for (int64_t i = 0; i < O * I; ++i) CHECK(dw[e * O * I + i] == dw_before[e * O * I + i]);
  }
}

TEST_CASE("moe_combine forward and backward equal the weighted per-token sums", "[moe][ops]") {
  const int64_t N = 4, top_k = 3, d = 5, M = N * top_k;
  std::vector<double> perm_values(M);
  std::iota(perm_values.begin(), perm_values.end(), 0.0);
  std::reverse(perm_values.begin(), perm_values.end());
  std::swap(perm_values[2], perm_values[7]);
  TestTensor row_of_pair = TestTensor::from_values(DType::I32, {M}, perm_values);
  TestTensor rows(DType::F64, {M, d}), weights(DType::F64, {N, top_k}), dout(DType::F64, {N, d});
  random_fill(rows, 41);
  random_fill(weights, 42);
  random_fill(dout, 43);
  TestTensor out(DType::F64, {N, d});
  random_fill(out, 44);
  const std::vector<double> before = out.values();
  ops::moe_combine_forward(out, rows, weights, row_of_pair, /*accumulate=*/true);
  TestTensor unweighted(DType::F64, {N, d});
  ops::moe_combine_forward(unweighted, rows, Tensor(), row_of_pair);
  TestTensor drows(DType::F64, {M, d}), dweights(DType::F64, {N, top_k});
  ops::moe_combine_backward(drows, dweights, dout, rows, weights, row_of_pair);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < d; ++c) {
      double sum = 0.0, plain = 0.0;
      for (int64_t s = 0; s < top_k; ++s) {
        const int64_t r = static_cast<int64_t>(row_of_pair[n * top_k + s]);
        sum += weights[n * top_k + s] * rows[r * d + c];
        plain += rows[r * d + c];
        CHECK(std::abs(drows[r * d + c] - weights[n * top_k + s] * dout[n * d + c]) < 1e-14);
      }
      CHECK(std::abs(out[n * d + c] - (before[n * d + c] + sum)) < 1e-13);
      CHECK(std::abs(unweighted[n * d + c] - plain) < 1e-13);
    }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t s = 0; s < top_k; ++s) {
      const int64_t r = static_cast<int64_t>(row_of_pair[n * top_k + s]);
      double want = 0.0;
      for (int64_t c = 0; c < d; ++c) want += dout[n * d + c] * rows[r * d + c];
      CHECK(std::abs(dweights[n * top_k + s] - want) < 1e-13);
    }
}

// ---- the MoE layer --------------------------------------------------------------------------------------

namespace {

ModelConfig moe_layer_model(int64_t shared_hidden, bool normalize) {
  ModelConfig m = one_layer_config(11);
  m.moe = {.layers = {.layers = {0}}, .experts = 4, .top_k = 2, .expert_hidden = 6,
           .shared_expert_hidden = shared_hidden, .normalize_topk = normalize, .aux_loss = 0.05, .z_loss = 0.02,
           .init_std = 0.5};
  return m;
}

// One MoE layer with its own parameter buffers and arena.
struct LayerFixture {
  ModelConfig config;
  MoeLayer layer;
  ParamRegistry registry;
  FlatBuffer params, grads;
  Arena arena;

  LayerFixture(const ModelConfig& c, int64_t N, DType dtype)
      : config(c), layer(c, 0), registry(make_registry(layer)), params(registry.total(), dtype),
        grads(registry.total(), dtype), arena(bytes(layer, N, dtype), "test") {
    init_params(registry, params, 5);
  }
  static ParamRegistry make_registry(const MoeLayer& layer) {
    ParamRegistry r;
    layer.register_params(r);
    return r;
  }
  static size_t bytes(const MoeLayer& layer, int64_t N, DType dtype) {
    Arena measuring;
    layer.allocate_activations(measuring, N, dtype);
    layer.allocate_scratch(measuring, N, dtype);
    return measuring.peak();
  }
};

}  // namespace

TEST_CASE("the grouped MoE layer equals a naive per-token loop over experts", "[moe][layer]") {
  for (int64_t shared : {0, 5}) {
    for (bool normalize : {true, false}) {
      const int64_t N = 13, d = 8, E = 4, F = 6, top_k = 2;
      LayerFixture f(moe_layer_model(shared, normalize), N, DType::F64);
      const MoeLayer::Weights w = f.layer.weights(f.params, f.registry);
      MoeLayer::Activations a = f.layer.allocate_activations(f.arena, N, DType::F64);
      TestTensor x(DType::F64, {N, d}), out(DType::F64, {N, d});
      random_fill(x, 51);
      random_fill(out, 52);
      const std::vector<double> before = out.values();
      f.layer.forward(w, a, x, out);
      const MoeLayerStats stats = f.layer.statistics(a);

      std::vector<double> loads(E, 0.0), probs_mean(E, 0.0);
      double z = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const std::vector<double> xn = row(x, n);
        const NaiveRoute r = naive_route(matvec(w.router, 0, E, d, xn), top_k, normalize);
        std::vector<double> y(d, 0.0);
        for (int64_t s = 0; s < top_k; ++s) {
          const int64_t e = r.experts[s];
          loads[e] += 1.0 / N;
          const std::vector<double> g = matvec(w.w1, e * F * d, F, d, xn), u = matvec(w.w3, e * F * d, F, d, xn);
          std::vector<double> act(F);
          for (int64_t h = 0; h < F; ++h) act[h] = silu(g[h]) * u[h];
          const std::vector<double> down = matvec(w.w2, e * d * F, d, F, act);
          for (int64_t c = 0; c < d; ++c) y[c] += r.weights[s] * down[c];
        }
        if (shared > 0) {
          const std::vector<double> g = matvec(w.shared_gate, 0, shared, d, xn), u = matvec(w.shared_up, 0, shared, d, xn);
          std::vector<double> act(shared);
          for (int64_t h = 0; h < shared; ++h) act[h] = silu(g[h]) * u[h];
          const std::vector<double> down = matvec(w.shared_down, 0, d, shared, act);
          for (int64_t c = 0; c < d; ++c) y[c] += down[c];
        }
        for (int64_t c = 0; c < d; ++c) CHECK(std::abs(out[n * d + c] - (before[n * d + c] + y[c])) < 1e-12);
        for (int64_t e = 0; e < E; ++e) probs_mean[e] += r.probs[e] / N;
        z += r.lse * r.lse / N;
      }
      double balance = 0.0;
      for (int64_t e = 0; e < E; ++e) balance += loads[e] / top_k * probs_mean[e];
      CHECK(stats.load_balance_loss == Approx(0.05 * E * balance).epsilon(1e-12));
      CHECK(stats.z_loss == Approx(0.02 * z).epsilon(1e-12));
      CHECK(stats.load_max == Approx(*std::max_element(loads.begin(), loads.end())));
      CHECK(stats.load_min == Approx(*std::min_element(loads.begin(), loads.end())));
      CHECK(stats.router_entropy > 0.0);
      CHECK(stats.router_entropy <= std::log(static_cast<double>(E)) + 1e-12);
    }
  }
}

TEST_CASE("the load-balancing loss equals alpha when the router spreads tokens evenly", "[moe][layer]") {
  // 8 tokens, 4 experts, top_k 1: token n is routed to expert n % 4 by a router that reads one
  // coordinate of the input per expert.
  ModelConfig config = moe_layer_model(0, true);
  config.moe.top_k = 1;
  const int64_t N = 8, d = 8, E = 4;
  LayerFixture f(config, N, DType::F64);
  MoeLayer::Weights w = f.layer.weights(f.params, f.registry);
  for (int64_t i = 0; i < E * d; ++i) set_value(w.router, i, 0.0);
  for (int64_t e = 0; e < E; ++e) set_value(w.router, e * d + e, 3.0);
  TestTensor x(DType::F64, {N, d}), out(DType::F64, {N, d});
  for (int64_t n = 0; n < N; ++n) x.set(n * d + n % E, 1.0 + 0.1 * n);  // uneven confidence, even counts
  MoeLayer::Activations a = f.layer.allocate_activations(f.arena, N, DType::F64);
  f.layer.forward(w, a, x, out);
  const MoeLayerStats stats = f.layer.statistics(a);
  CHECK(stats.load_balance_loss == Approx(config.moe.aux_loss).epsilon(1e-12));
  CHECK(stats.load_max == Approx(0.25));
  CHECK(stats.load_min == Approx(0.25));
  // top_k 2 with every expert reached by the same number of pairs: still alpha
  config.moe.top_k = 2;
  LayerFixture f2(config, N, DType::F64);
  MoeLayer::Weights w2 = f2.layer.weights(f2.params, f2.registry);
  for (int64_t i = 0; i < E * d; ++i) set_value(w2.router, i, 0.0);
  for (int64_t e = 0; e < E; ++e) {
    set_value(w2.router, e * d + e, 3.0);
    set_value(w2.router, e * d + (e + 3) % E, 1.0);  // second choice: the previous expert
  }
  MoeLayer::Activations a2 = f2.layer.allocate_activations(f2.arena, N, DType::F64);
  f2.layer.forward(w2, a2, x, out);
  const MoeLayerStats stats2 = f2.layer.statistics(a2);
  CHECK(stats2.load_balance_loss == Approx(config.moe.aux_loss).epsilon(1e-12));
  CHECK(stats2.load_max == Approx(0.5));
}

TEST_CASE("every gradient of the MoE layer matches finite differences (f64)", "[moe][layer][gradcheck]") {
  for (int64_t shared : {0, 5}) {
    for (bool normalize : {true, false}) {
      const int64_t N = 11, d = 8, E = 4;
      LayerFixture f(moe_layer_model(shared, normalize), N, DType::F64);
      const MoeLayer::Weights w = f.layer.weights(f.params, f.registry), g = f.layer.weights(f.grads, f.registry);
      TestTensor x(DType::F64, {N, d}), out(DType::F64, {N, d}), probe(DType::F64, {N, d});
      random_fill(x, 61);
      random_fill(probe, 62);
      // J = sum(probe * out) + load-balancing + z-loss, with aux_scale = 1
      auto objective = [&] {
        f.arena.reset();
        MoeLayer::Activations a = f.layer.allocate_activations(f.arena, N, DType::F64);
        ops::fill_zero(out);
        f.layer.forward(w, a, x, out);
        const MoeLayerStats stats = f.layer.statistics(a);
        return dot(out, probe) + stats.load_balance_loss + stats.z_loss;
      };
      // no routing decision may be within reach of the finite-difference step
      {
        f.arena.reset();
        MoeLayer::Activations a = f.layer.allocate_activations(f.arena, N, DType::F64);
        f.layer.forward(w, a, x, out);
        REQUIRE(smallest_topk_margin(a.logits, 2) > 1e-4);
      }
      f.arena.reset();
      MoeLayer::Activations a = f.layer.allocate_activations(f.arena, N, DType::F64);
      ops::fill_zero(out);
      f.layer.forward(w, a, x, out);
      MoeLayer::Scratch s = f.layer.allocate_scratch(f.arena, N, DType::F64);
      TestTensor dx(DType::F64, {N, d});
      f.layer.backward(w, g, a, s, x, probe, dx, 1.0);
      INFO("shared " << shared << ", normalize " << normalize);
      CHECK(norm_relative_error(dx.values(), numerical_gradient(x, objective, 1e-6)) < 1e-7);
      for (const ParamInfo& p : f.registry.params()) {
        INFO(p.name);
        CHECK(norm_relative_error(to_double_vector(f.grads.view(p)),
                                  numerical_gradient(f.params.view(p), objective, 1e-6)) < 1e-7);
      }
      (void)E;
    }
  }
}

// ---- whole models ----------------------------------------------------------------------------------------

namespace {
// Three layers: MoE, dense, MoE with a shared expert and an L3 layer after layer 1 (a mixed model).
ModelConfig mixed_model(bool with_l3) {
  ModelConfig m = tiny_model_config(3);
  m.moe = {.layers = {.layers = {0, 2}}, .experts = 4, .top_k = 2, .expert_hidden = 6, .shared_expert_hidden = 4,
           .aux_loss = 0.05, .z_loss = 0.01, .init_std = 0.3};
  if (with_l3) {
    m.l3.after_layers = {1};
    m.l3.k = 3;
    m.l3.v = 26;
    m.l3.d_emb = 4;
    m.l3.d_up = 6;
    m.l3.init_std = 0.3;
  }
  return m;
}
}  // namespace

TEST_CASE("every gradient of a model mixing dense, MoE and L3 layers matches finite differences (f64)",
          "[moe][model][gradcheck]") {
  Llama model(mixed_model(true));
  std::vector<int32_t> counts(13, 2);  // 26 rows: two per token
  model.set_l3_allocations(counts, "test");
  FlatBuffer params(model.registry().total(), DType::F64), grads(model.registry().total(), DType::F64);
  init_params(model.registry(), params, 17);
  const int64_t B = 2, T = 5, N = B * T;
  TestTensor tokens(DType::I32, {B, T}), targets(DType::I32, {B, T});
  random_tokens(tokens, 13, 71);
  random_tokens(targets, 13, 72);
  Arena arena(model.activation_bytes(B, T, DType::F64, true), "test");
  // grad_scale 1 differentiates sum(CE) + N * aux
  auto objective = [&] {
    arena.reset();
    const LossReport r = model.forward_backward(params, nullptr, tokens, targets, 0.0, arena);
    return (r.cross_entropy + r.aux_loss) * N;
  };
  arena.reset();
  const LossReport report = model.forward_backward(params, &grads, tokens, targets, 1.0, arena);
  REQUIRE(report.moe.size() == 2);
  CHECK(report.moe[0].layer == 0);
  CHECK(report.moe[1].layer == 2);
  CHECK(report.aux_loss == Approx(report.moe[0].load_balance_loss + report.moe[0].z_loss +
                                  report.moe[1].load_balance_loss + report.moe[1].z_loss));
  CHECK(report.aux_loss > 0.0);
  CHECK(arena.peak() == model.activation_bytes(B, T, DType::F64, true));
  for (const ParamInfo& p : model.registry().params()) {
    const std::vector<double> numeric = numerical_gradient(params.view(p), objective, 1e-5);
    INFO(p.name);
    CHECK(norm_relative_error(to_double_vector(grads.view(p)), numeric) < 1e-6);
  }
}

TEST_CASE("an MoE model names its parameters as Mixtral does and counts top_k experts as active", "[moe][model]") {
  const Llama model(mixed_model(false));
  const auto& r = model.registry();
  CHECK(r.find("model.layers.0.block_sparse_moe.gate.weight").shape == std::vector<int64_t>{4, 8});
  CHECK(r.find("model.layers.0.block_sparse_moe.experts.3.w1.weight").shape == std::vector<int64_t>{6, 8});
  CHECK(r.find("model.layers.2.block_sparse_moe.experts.0.w2.weight").shape == std::vector<int64_t>{8, 6});
  CHECK(r.find("model.layers.2.block_sparse_moe.experts.1.w3.weight").shape == std::vector<int64_t>{6, 8});
  CHECK(r.find("model.layers.0.block_sparse_moe.shared_expert.down_proj.weight").shape == std::vector<int64_t>{8, 4});
  CHECK(r.contains("model.layers.1.mlp.gate_proj.weight"));
  CHECK_FALSE(r.contains("model.layers.0.mlp.gate_proj.weight"));
  // experts of one projection are adjacent in the flat buffer (the grouped products read them as one tensor)
  for (const char* projection : {"w1", "w2", "w3"})
    for (int e = 1; e < 4; ++e) {
      const ParamInfo& prev = r.find(fmt::format("model.layers.0.block_sparse_moe.experts.{}.{}.weight", e - 1, projection));
      CHECK(r.find(fmt::format("model.layers.0.block_sparse_moe.experts.{}.{}.weight", e, projection)).offset ==
            prev.offset + prev.numel);
    }
  const ModelCost cost = model.cost(5);
  const int64_t experts_total = 2 * 4 * 3 * 6 * 8, experts_active = 2 * 2 * 3 * 6 * 8;
  CHECK(cost.active_params == cost.total_params - experts_total + experts_active);
  // a dense model whose FFNs are as large as top_k experts plus the shared expert has the same active count
  ModelConfig dense = mixed_model(false);
  dense.moe = {};
  const Llama dense_model(dense);
  const int64_t router_and_shared = 2 * (4 * 8 + 3 * 4 * 8), dense_ffns = 2 * 3 * 12 * 8;
  CHECK(cost.active_params - dense_model.cost(5).active_params == experts_active + router_and_shared - dense_ffns);
}

TEST_CASE("model.moe bad inputs each give one clear error", "[moe][config]") {
  auto base = [] {
    return nlohmann::json{{"model", {{"vocab_size", 16}, {"d_model", 8}, {"n_layers", 2}, {"n_heads", 2},
                                     {"ffn_hidden", 16},
                                     {"moe", {{"layers", "all"}, {"experts", 4}, {"top_k", 2}, {"expert_hidden", 8}}}}},
                          {"data", {{"train", "x.bin"}, {"seq_len", 8}}},
                          {"train", {{"steps", 1}}}};
  };
  const Config good = config_from_json(base());
  CHECK(good.model.moe.layers.all);
  CHECK(good.model.is_moe_layer(1));
  CHECK(good.model.moe.init_std == good.model.init_std);
  CHECK(config_to_json(good)["model"]["moe"]["layers"] == "all");
  nlohmann::json in_bf16 = base();  // MoE layers train in bf16 on the GPU like the rest of the model
  in_bf16["train"]["precision"] = "bf16";
  CHECK(config_from_json(in_bf16).train.precision == Precision::Bf16);
  auto error_of = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = base();
    j["model"]["moe"][key] = value;
    try {
      config_from_json(j);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(error_of("top_k", 5), Contains("model.moe.top_k (5) must be <= model.moe.experts (4)"));
  CHECK_THAT(error_of("experts", 0), Contains("model.moe.experts: must be >= 1, got 0"));
  CHECK_THAT(error_of("layers", nlohmann::json::array({0, 2})),
             Contains("model.moe.layers: layer 2 does not exist (model.n_layers = 2"));
  CHECK_THAT(error_of("layers", nlohmann::json::array({1, 0})), Contains("model.moe.layers: must be strictly increasing"));
  CHECK_THAT(error_of("layers", "some"), Contains("model.moe.layers: expected \"all\" or a list of layer indices"));
  CHECK_THAT(error_of("layers", nlohmann::json::array()), Contains("model.moe.layers: must not be empty"));
  CHECK_THAT(error_of("aux_loss", -0.1), Contains("model.moe.aux_loss: must be >= 0, got -0.1"));
  CHECK_THAT(error_of("z_loss", -1), Contains("model.moe.z_loss: must be >= 0, got -1"));
  CHECK_THAT(error_of("expert_hidden", 0), Contains("model.moe.expert_hidden: must be >= 1"));
  CHECK_THAT(error_of("capacity", 1.25), Contains("model.moe.capacity: unknown key"));
  nlohmann::json missing = base();
  missing["model"]["moe"].erase("experts");
  CHECK_THROWS_WITH(config_from_json(missing), Contains("model.moe.experts: required"));
}
