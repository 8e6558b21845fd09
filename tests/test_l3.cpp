// Large Lookup Layers: the group-by-key primitive (sort, gather, scatter, concat / split), the L3 lookup
// op and layer against a naive per-position loop written here from MODEL.md, finite-difference gradient
// checks in f64 of the layer (every parameter and the input; tied K/V and residual variants) and of a
// whole model with L3 layers, the LZW allocation (a hand-worked example, a naive dictionary of token
// tuples, properties on Tiny Shakespeare) and the allocation file with its bad inputs.
#include <catch2/catch.hpp>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <unistd.h>

#include "data/allocation.h"
#include "data/shard.h"
#include "kernels/arena.h"
#include "kernels/ops.h"
#include "model/l3.h"
#include "model/llama.h"
#include "test_util.h"
#include "tiny_models.h"

using namespace l3c;
using namespace l3c::test;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

std::vector<int32_t> int_values(const Tensor& t) {
  const int32_t* p = t.ptr<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

TestTensor token_tensor(const std::vector<int32_t>& ids) {
  TestTensor t(DType::I32, {static_cast<int64_t>(ids.size())});
  for (size_t i = 0; i < ids.size(); ++i) t.ptr<int32_t>()[i] = ids[i];
  return t;
}

// ---- a small L3 layer set up for tests --------------------------------------------------------------------

struct LayerOptions {
  bool tie_kv = false;
  bool residual = false;
};

// V = 7 tokens; counts include 1 row (tokens 0, 4) and the cap k = 4 (tokens 1, 5); token 6 never
// occurs in the batch, so its rows must get no gradient.
const std::vector<int32_t> kCounts = {1, 4, 2, 3, 1, 4, 2};
const std::vector<int32_t> kTokens = {1, 3, 1, 0, 5, 2, 1, 4, 3, 3, 5, 1, 2, 0};  // N = 14

ModelConfig layer_model(const LayerOptions& o) {
  ModelConfig m = one_layer_config(7);
  m.l3.after_layers = {0};
  m.l3.v = std::accumulate(kCounts.begin(), kCounts.end(), 0);
  m.l3.k = 4;
  m.l3.d_emb = o.tie_kv ? 8 : 5;
  m.l3.d_up = 6;
  m.l3.tie_kv = o.tie_kv;
  m.l3.residual = o.residual;
  m.l3.init_std = 0.5;  // large enough that every gradient is far from zero
  return m;
}

struct LayerFixture {
  ModelConfig model;
  L3Layer layer;
  ParamRegistry registry;
  FlatBuffer params, grads;
  L3Rows rows;
  TestTensor tokens, order, group_offsets;
  L3Routing routing;
  Arena arena;
  int64_t N;

  LayerFixture(const LayerOptions& o, DType dtype)
      : model(layer_model(o)), layer(model, 0), arena(1 << 20, "test"), N(static_cast<int64_t>(kTokens.size())) {
    layer.register_params(registry);
    params = FlatBuffer(registry.total(), dtype);
    grads = FlatBuffer(registry.total(), dtype);
    init_params_with_gains(registry, params, 3, 0.3, 1.3);
    rows = L3Rows::from_counts(kCounts);
    tokens = token_tensor(kTokens);
    order = TestTensor(DType::I32, {N});
    group_offsets = TestTensor(DType::I32, {model.vocab_size + 1});
    ops::group_by_key(order, group_offsets, tokens);
    routing = {order, group_offsets};
  }

  // h' for input h (N, d), from the grouped implementation.
  std::vector<double> forward(const TestTensor& h) {
    arena.reset();
    L3Layer::Activations a = layer.allocate_activations(arena, N, params.dtype());
    TestTensor out = h.converted(params.dtype());
    layer.forward(layer.weights(params, registry), a, out, routing, rows);
    return out.values();
  }

  // Gradients of sum(h' * R) into grads (zeroed first unless keep) and returned for the input.
  std::vector<double> backward(const TestTensor& h, const TestTensor& R, bool keep = false) {
    arena.reset();
    if (!keep) ops::fill_zero(grads.all());
    L3Layer::Activations a = layer.allocate_activations(arena, N, params.dtype());
    L3Layer::Scratch s = layer.allocate_scratch(arena, N, params.dtype());
    TestTensor out = h.converted(params.dtype());
    const auto w = layer.weights(params, registry);
    layer.forward(w, a, out, routing, rows);
    TestTensor dh = R.converted(params.dtype());
    layer.backward(w, layer.weights(grads, registry), a, s, dh, routing, rows);
    return dh.values();
  }
};

// ---- the naive per-position reference (MODEL.md, one position at a time) -----------------------------

template <typename T>
struct NaiveL3 {
  int64_t d, d_emb, d_up;
  bool tie, residual;
  double eps;
  std::vector<T> g_in, w_k, w_v, w_up, g_out, w_mix;                   // weights
  std::vector<T> dg_in, dw_k, dw_v, dw_up, dg_out, dw_mix, dh, out;    // results

  NaiveL3(const LayerFixture& f) {
    const ModelConfig& m = f.model;
    d = m.d_model, d_emb = m.l3.d_emb, d_up = m.l3.d_up, tie = m.l3.tie_kv, residual = m.l3.residual;
    eps = m.norm_eps;
    auto get = [&](const std::string& suffix) {
      const auto values = to_double_vector(f.params.view(f.registry.find(f.layer.name(suffix))));
      return std::vector<T>(values.begin(), values.end());
    };
    g_in = get("norm_in.weight"), w_k = get("w_k"), w_v = tie ? w_k : get("w_v"), w_up = get("w_up.weight");
    g_out = get("norm_out.weight"), w_mix = get("w_mix.weight");
  }

  static T rms(const T* x, int64_t n, double eps) {
    T ss = 0;
    for (int64_t c = 0; c < n; ++c) ss += x[c] * x[c];
    return T(1) / std::sqrt(ss / T(n) + T(eps));
  }

  // Forward and backward of sum(h' * R) for every position, in position order.
  void run(const std::vector<T>& h, const std::vector<T>& R, const std::vector<int32_t>& tokens,
           const std::vector<int32_t>& counts) {
    std::vector<int32_t> offset(counts.size() + 1, 0);
    for (size_t u = 0; u < counts.size(); ++u) offset[u + 1] = offset[u] + counts[u];
    const auto N = static_cast<int64_t>(tokens.size());
    dg_in.assign(g_in.size(), 0), dw_k.assign(w_k.size(), 0), dw_v.assign(w_v.size(), 0);
    dw_up.assign(w_up.size(), 0), dg_out.assign(g_out.size(), 0), dw_mix.assign(w_mix.size(), 0);
    dh.assign(h.size(), 0), out.assign(h.size(), 0);
    const int64_t W = d_up + d;
    for (int64_t n = 0; n < N; ++n) {
      const T* hn = &h[n * d];
      const T* r = &R[n * d];
      const int64_t u = tokens[n], o = offset[u], rows = counts[u];
      // forward
      const T r1 = rms(hn, d, eps);
      std::vector<T> x(d), s(rows), a(rows), e(d_emb, 0), up(d_up, 0), z(d_up), zh(W);
      for (int64_t c = 0; c < d; ++c) x[c] = hn[c] * r1 * g_in[c];
      T smax = -1e300;
      for (int64_t j = 0; j < rows; ++j) {
        s[j] = 0;
        for (int64_t c = 0; c < d; ++c) s[j] += w_k[(o + j) * d + c] * x[c];
        smax = std::max(smax, s[j]);
      }
      T sum = 0;
      for (int64_t j = 0; j < rows; ++j) sum += (a[j] = std::exp(s[j] - smax));
      for (int64_t j = 0; j < rows; ++j) a[j] /= sum;
      for (int64_t j = 0; j < rows; ++j)
        for (int64_t c = 0; c < d_emb; ++c) e[c] += a[j] * w_v[(o + j) * d_emb + c];
      for (int64_t i = 0; i < d_up; ++i)
        for (int64_t c = 0; c < d_emb; ++c) up[i] += w_up[i * d_emb + c] * e[c];
      const T r2 = rms(up.data(), d_up, eps);
      for (int64_t i = 0; i < d_up; ++i) zh[i] = z[i] = up[i] * r2 * g_out[i];
      for (int64_t c = 0; c < d; ++c) zh[d_up + c] = hn[c];
      for (int64_t i = 0; i < d; ++i) {
        T acc = residual ? hn[i] : T(0);
        for (int64_t c = 0; c < W; ++c) acc += w_mix[i * W + c] * zh[c];
        out[n * d + i] = acc;
      }
      // backward
      std::vector<T> dzh(W, 0), dup(d_up), de(d_emb, 0), da(rows), dx(d, 0);
      for (int64_t i = 0; i < d; ++i)
        for (int64_t c = 0; c < W; ++c) {
          dzh[c] += w_mix[i * W + c] * r[i];
          dw_mix[i * W + c] += r[i] * zh[c];
        }
      T* dhn = &dh[n * d];
      for (int64_t c = 0; c < d; ++c) dhn[c] = dzh[d_up + c] + (residual ? r[c] : T(0));
      T dot = 0;
      for (int64_t i = 0; i < d_up; ++i) dot += dzh[i] * g_out[i] * up[i];
      for (int64_t i = 0; i < d_up; ++i) {
        dup[i] = r2 * dzh[i] * g_out[i] - up[i] * r2 * r2 * r2 / T(d_up) * dot;
        dg_out[i] += dzh[i] * up[i] * r2;
      }
      for (int64_t i = 0; i < d_up; ++i)
        for (int64_t c = 0; c < d_emb; ++c) {
          de[c] += w_up[i * d_emb + c] * dup[i];
          dw_up[i * d_emb + c] += dup[i] * e[c];
        }
      T adot = 0;
      for (int64_t j = 0; j < rows; ++j) {
        da[j] = 0;
        for (int64_t c = 0; c < d_emb; ++c) {
          da[j] += w_v[(o + j) * d_emb + c] * de[c];
          (tie ? dw_k : dw_v)[(o + j) * d_emb + c] += a[j] * de[c];
        }
        adot += a[j] * da[j];
      }
      for (int64_t j = 0; j < rows; ++j) {
        const T ds = a[j] * (da[j] - adot);
        for (int64_t c = 0; c < d; ++c) {
          dw_k[(o + j) * d + c] += ds * x[c];
          dx[c] += ds * w_k[(o + j) * d + c];
        }
      }
      T xdot = 0;
      for (int64_t c = 0; c < d; ++c) xdot += dx[c] * g_in[c] * hn[c];
      for (int64_t c = 0; c < d; ++c) {
        dhn[c] += r1 * dx[c] * g_in[c] - hn[c] * r1 * r1 * r1 / T(d) * xdot;
        dg_in[c] += dx[c] * hn[c] * r1;
      }
    }
  }
};

template <typename T>
std::vector<double> as_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

template <typename T>
void check_grouped_equals_naive(const LayerOptions& o, double tol) {
  const DType dtype = std::is_same_v<T, float> ? DType::F32 : DType::F64;
  LayerFixture f(o, dtype);
  TestTensor h(dtype, {f.N, 8}), R(dtype, {f.N, 8});
  random_fill(h, 11, 1.5);
  random_fill(R, 12);
  const std::vector<double> out = f.forward(h);
  const std::vector<double> dh = f.backward(h, R);

  NaiveL3<T> naive(f);
  const auto hv = h.values(), rv = R.values();
  naive.run(std::vector<T>(hv.begin(), hv.end()), std::vector<T>(rv.begin(), rv.end()), kTokens, kCounts);
  CHECK(norm_relative_error(out, as_double(naive.out)) < tol);
  CHECK(norm_relative_error(dh, as_double(naive.dh)) < tol);
  auto grad = [&](const std::string& suffix) {
    return to_double_vector(f.grads.view(f.registry.find(f.layer.name(suffix))));
  };
  INFO("tie_kv " << o.tie_kv << ", residual " << o.residual);
  CHECK(norm_relative_error(grad("norm_in.weight"), as_double(naive.dg_in)) < tol);
  CHECK(norm_relative_error(grad("w_k"), as_double(naive.dw_k)) < tol);
  if (!o.tie_kv) CHECK(norm_relative_error(grad("w_v"), as_double(naive.dw_v)) < tol);
  CHECK(norm_relative_error(grad("w_up.weight"), as_double(naive.dw_up)) < tol);
  CHECK(norm_relative_error(grad("norm_out.weight"), as_double(naive.dg_out)) < tol);
  CHECK(norm_relative_error(grad("w_mix.weight"), as_double(naive.dw_mix)) < tol);
}

void check_layer_gradients(const LayerOptions& o) {
  LayerFixture f(o, DType::F64);
  TestTensor h(DType::F64, {f.N, 8}), R(DType::F64, {f.N, 8});
  random_fill(h, 21, 1.5);
  random_fill(R, 22);
  const std::vector<double> dh = f.backward(h, R);
  auto objective = [&] {
    const std::vector<double> out = f.forward(h);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += out[i] * R[static_cast<int64_t>(i)];
    return s;
  };
  INFO("tie_kv " << o.tie_kv << ", residual " << o.residual);
  for (const ParamInfo& p : f.registry.params()) {
    const std::vector<double> numeric = numerical_gradient(f.params.view(p), objective, 1e-5);
    const std::vector<double> analytic = to_double_vector(f.grads.view(p));
    INFO(p.name << ": analytic norm " << norm2(analytic) << ", numeric norm " << norm2(numeric));
    CHECK(norm2(numeric) > 1e-6);
    CHECK(norm_relative_error(analytic, numeric) < 1e-7);
  }
  const std::vector<double> numeric = numerical_gradient(h, objective, 1e-5);
  INFO("input h: analytic norm " << norm2(dh) << ", numeric norm " << norm2(numeric));
  CHECK(norm_relative_error(dh, numeric) < 1e-7);
}

}  // namespace

// ---- group by key --------------------------------------------------------------------------------------

TEST_CASE("group_by_key is a stable counting sort with group offsets", "[l3][grouping]") {
  TestTensor keys(DType::I32, {200});
  random_tokens(keys, 9, 5);
  TestTensor order(DType::I32, {200}), offsets(DType::I32, {11});  // K = 10: key 9 present, none beyond
  ops::group_by_key(order, offsets, keys);
  std::vector<int32_t> expected(200);
  std::iota(expected.begin(), expected.end(), 0);
  const std::vector<int32_t> k = int_values(keys);
  std::stable_sort(expected.begin(), expected.end(), [&](int32_t a, int32_t b) { return k[a] < k[b]; });
  CHECK(int_values(order) == expected);
  const std::vector<int32_t> off = int_values(offsets);
  CHECK(off.front() == 0);
  CHECK(off.back() == 200);
  CHECK(off[10] == off[9]);  // keys are in [0, 9): group 9 is empty
  for (int32_t g = 0; g < 10; ++g)
    for (int32_t i = off[g]; i < off[g + 1]; ++i) CHECK(k[expected[i]] == g);

  // No positions: every group is empty.
  TestTensor none(DType::I32, {0}), none_order(DType::I32, {0}), none_offsets(DType::I32, {4});
  ops::group_by_key(none_order, none_offsets, none);
  CHECK(int_values(none_offsets) == std::vector<int32_t>{0, 0, 0, 0});
  // A key outside [0, K) is an internal error.
  TestTensor bad = token_tensor({0, 3});
  TestTensor bad_order(DType::I32, {2}), small(DType::I32, {3});
  CHECK_THROWS_AS(ops::group_by_key(bad_order, small, bad), InternalError);
}

TEST_CASE("gather and scatter rows are inverse permutations and each other's adjoint", "[l3][grouping]") {
  for (DType dtype : {DType::F32, DType::F64}) {
    TestTensor keys(DType::I32, {50}), order(DType::I32, {50}), offsets(DType::I32, {8});
    random_tokens(keys, 7, 9);
    ops::group_by_key(order, offsets, keys);
    TestTensor x(dtype, {50, 6}), g(dtype, {50, 6}), back(dtype, {50, 6}), y(dtype, {50, 6});
    random_fill(x, 1);
    random_fill(y, 2);
    ops::gather_rows(g, x, order);
    for (int64_t i = 0; i < 50; ++i)
      for (int64_t c = 0; c < 6; ++c) CHECK(g[i * 6 + c] == x[order.ptr<int32_t>()[i] * 6 + c]);
    ops::scatter_rows(back, g, order);
    CHECK(same_bits(back, x));
    // <gather(x), y> = <x, scatter(y)>: scatter is the backward of gather
    TestTensor sy(dtype, {50, 6});
    ops::scatter_rows(sy, y, order, /*accumulate=*/true);
    CHECK(dot(g, y) == Approx(dot(x, sy)).epsilon(1e-6));
    // accumulate adds, overwrite replaces
    const std::vector<double> once = sy.values();
    ops::scatter_rows(sy, y, order, /*accumulate=*/true);
    for (int64_t i = 0; i < 50 * 6; ++i) CHECK(sy[i] == 2 * once[i]);
    ops::scatter_rows(sy, y, order);
    CHECK(sy.values() == once);
  }
}

TEST_CASE("concat_last_dim and split_last_dim round-trip, with overwrite or accumulate", "[l3][grouping]") {
  TestTensor a(DType::F64, {3, 2}), b(DType::F64, {3, 4}), ab(DType::F64, {3, 6});
  random_fill(a, 1);
  random_fill(b, 2);
  ops::concat_last_dim(ab, a, b);
  CHECK(ab[0] == a[0]);
  CHECK(ab[2] == b[0]);
  CHECK(ab[6 + 1] == a[3]);
  CHECK(ab[6 + 5] == b[7]);
  TestTensor da(DType::F64, {3, 2}), db(DType::F64, {3, 4});
  ops::split_last_dim(da, db, ab);
  CHECK(same_bits(da, a));
  CHECK(same_bits(db, b));
  ops::split_last_dim(da, db, ab, false, true);
  CHECK(same_bits(da, a));
  CHECK(db[5] == 2 * b[5]);
}

// ---- the L3 layer --------------------------------------------------------------------------------------

TEST_CASE("the grouped L3 layer equals a naive per-position loop (f32 to 1e-6, f64 to 1e-12)", "[l3][layer]") {
  for (bool tie : {false, true})
    for (bool residual : {false, true}) {
      check_grouped_equals_naive<float>({tie, residual}, 1e-6);
      check_grouped_equals_naive<double>({tie, residual}, 1e-12);
    }
}

TEST_CASE("L3 layer gradients match finite differences for every parameter and the input (f64)",
          "[l3][layer][gradcheck]") {
  check_layer_gradients({false, false});
}

TEST_CASE("L3 layer gradients match finite differences with tied K/V (f64)", "[l3][layer][gradcheck]") {
  check_layer_gradients({true, false});
}

TEST_CASE("L3 layer gradients match finite differences with the residual form (f64)", "[l3][layer][gradcheck]") {
  check_layer_gradients({false, true});
  check_layer_gradients({true, true});
}

TEST_CASE("L3 gradients touch only the table rows of tokens in the batch, and probs are zero past n_u", "[l3][layer]") {
  LayerFixture f({}, DType::F64);
  TestTensor h(DType::F64, {f.N, 8}), R(DType::F64, {f.N, 8});
  random_fill(h, 31);
  random_fill(R, 32);
  for (int64_t i = 0; i < f.grads.numel(); ++i) set_value(f.grads.all(), i, 7.0);
  f.backward(h, R, /*keep=*/true);
  const Tensor dk = f.grads.view(f.registry.find(f.layer.name("w_k")));
  const Tensor dv = f.grads.view(f.registry.find(f.layer.name("w_v")));
  const int32_t first = f.rows.row_offsets[6], last = f.rows.row_offsets[7];  // token 6 is not in the batch
  for (int32_t u = 0; u < 7; ++u)
    for (int32_t row = f.rows.row_offsets[u]; row < f.rows.row_offsets[u + 1]; ++row) {
      const bool used = u != 6;
      // a softmax over a single row is constant: a token with one row gets no key gradient
      const bool key_gradient = used && kCounts[u] > 1;
      for (int64_t c = 0; c < 8; ++c) CHECK((get_value(dk, row * 8 + c) == 7.0) != key_gradient);
      for (int64_t c = 0; c < 5; ++c) CHECK((get_value(dv, row * 5 + c) == 7.0) != used);
    }
  CHECK(last - first == kCounts[6]);
  // probs: softmax rows sum to 1 over the token's n_u rows, zero past them
  f.arena.reset();
  L3Layer::Activations a = f.layer.allocate_activations(f.arena, f.N, DType::F64);
  TestTensor out = h;
  f.layer.forward(f.layer.weights(f.params, f.registry), a, out, f.routing, f.rows);
  for (int64_t i = 0; i < f.N; ++i) {
    const int32_t u = kTokens[f.order.ptr<int32_t>()[i]];
    double sum = 0;
    for (int64_t j = 0; j < 4; ++j) {
      const double p = get_value(a.probs, i * 4 + j);
      if (j >= kCounts[u]) CHECK(p == 0.0);
      sum += p;
    }
    CHECK(sum == Approx(1.0).epsilon(1e-12));
  }
}

// ---- a whole model with L3 layers -----------------------------------------------------------------------

namespace {
ModelConfig l3_model(bool tie_kv, bool residual) {
  ModelConfig m = tiny_model_config(2);
  m.l3.after_layers = {0, 1};
  m.l3.k = 3;
  m.l3.v = 26;
  m.l3.d_emb = tie_kv ? 8 : 4;
  m.l3.d_up = 6;
  m.l3.tie_kv = tie_kv;
  m.l3.residual = residual;
  m.l3.init_std = 0.3;
  return m;
}

std::vector<int32_t> model_counts(int64_t V, int64_t v, int64_t k) {
  std::vector<int32_t> counts(static_cast<size_t>(V), 1);
  int64_t total = V;
  for (int64_t u = 0; total < v; u = (u + 1) % V)
    if (counts[u] < k) ++counts[u], ++total;
  return counts;
}
}  // namespace

TEST_CASE("every gradient of a model with L3 layers matches finite differences (f64)", "[l3][model][gradcheck]") {
  for (bool tie : {false, true}) {
    const Llama model(l3_model(tie, !tie));
    Llama& mutable_model = const_cast<Llama&>(model);
    // different allocations per layer: layer 1 is the reverse of layer 0
    std::vector<int32_t> counts = model_counts(13, 26, 3);
    mutable_model.set_l3_allocation(0, counts, "test");
    std::reverse(counts.begin(), counts.end());
    mutable_model.set_l3_allocation(1, counts, "test");
    ModelGradCheck check(model);
    REQUIRE(std::isfinite(check.backward()));
    CHECK(check.arena.peak() == model.activation_bytes(ModelGradCheck::B, ModelGradCheck::T, DType::F64, true));
    for (const ParamInfo& p : model.registry().params()) {
      const std::vector<double> numeric = check.numeric(p), analytic = check.analytic(p);
      INFO("tie_kv " << tie << ": " << p.name << ": analytic norm " << norm2(analytic) << ", numeric norm "
                     << norm2(numeric));
      CHECK(norm_relative_error(analytic, numeric) < 1e-6);
    }
  }
}

TEST_CASE("a model with L3 layers names its parameters as MODEL.md and counts active parameters", "[l3][model]") {
  const Llama model(l3_model(false, false));
  const auto& r = model.registry();
  CHECK(r.find("model.l3.0.norm_in.weight").shape == std::vector<int64_t>{8});
  CHECK(r.find("model.l3.1.w_k").shape == std::vector<int64_t>{26, 8});
  CHECK(r.find("model.l3.1.w_v").shape == std::vector<int64_t>{26, 4});
  CHECK(r.find("model.l3.0.w_up.weight").shape == std::vector<int64_t>{6, 4});
  CHECK(r.find("model.l3.0.norm_out.weight").shape == std::vector<int64_t>{6});
  CHECK(r.find("model.l3.0.w_mix.weight").shape == std::vector<int64_t>{8, 6 + 8});
  CHECK_FALSE(r.contains("model.l3.0.alloc"));  // the allocation is not a parameter
  const Llama tied(l3_model(true, false));
  CHECK_FALSE(tied.registry().contains("model.l3.0.w_v"));
  // L3 parameters come after the dense ones: a dense model initialises its shared parameters identically.
  ModelConfig dense_config = l3_model(false, false);
  dense_config.l3 = {};
  const Llama dense(dense_config);
  for (const ParamInfo& p : dense.registry().params()) CHECK(r.find(p.name).offset == p.offset);
  // active = total - tables + k rows of each table; sparsity > 1
  const ModelCost cost = model.cost(5), dense_cost = dense.cost(5);
  const int64_t tables = 2 * 26 * (8 + 4), active_rows = 2 * 3 * (8 + 4);
  CHECK(cost.total_params == dense_cost.total_params + tables + 2 * (8 + 6 + 6 * 4 + 8 * 14));
  CHECK(cost.active_params == cost.total_params - tables + active_rows);
  CHECK(cost.matmul_params == dense_cost.matmul_params + active_rows + 2 * (6 * 4 + 8 * 14));
}

TEST_CASE("mix_init identity starts W_mix's h-part as the identity and draws its z-part as normal does",
          "[l3][model]") {
  ModelConfig config = l3_model(false, false);
  const Llama normal_model(config);
  config.l3.mix_init = MixInit::Identity;
  const Llama identity_model(config);
  const ParamInfo& p = identity_model.registry().find("model.l3.1.w_mix.weight");
  REQUIRE(p.offset == normal_model.registry().find("model.l3.1.w_mix.weight").offset);
  FlatBuffer normal_params(normal_model.registry().total(), DType::F32);
  FlatBuffer identity_params(identity_model.registry().total(), DType::F32);
  init_params(normal_model.registry(), normal_params, 7);
  init_params(identity_model.registry(), identity_params, 7);
  const int64_t d = 8, d_up = 6;
  const float* w = identity_params.ptr<float>() + p.offset;            // (d, d_up + d)
  const float* w_normal = normal_params.ptr<float>() + p.offset;
  int64_t z_part_nonzero = 0;
  for (int64_t r = 0; r < d; ++r)
    for (int64_t c = 0; c < d_up + d; ++c) {
      const float value = w[r * (d_up + d) + c];
      if (c >= d_up) {
        CHECK(value == (c - d_up == r ? 1.0f : 0.0f));
      } else {
        CHECK(value == w_normal[r * (d_up + d) + c]);  // the z-part: the same draws as mix_init normal
        z_part_nonzero += value != 0.0f;
      }
    }
  CHECK(z_part_nonzero == d * d_up);
  // Every other parameter is initialised exactly as with mix_init normal.
  for (const ParamInfo& q : identity_model.registry().params()) {
    if (q.name.find("w_mix") != std::string::npos) continue;
    for (int64_t i = 0; i < q.numel; ++i)
      REQUIRE(identity_params.ptr<float>()[q.offset + i] == normal_params.ptr<float>()[q.offset + i]);
  }
}

TEST_CASE("a model with L3 layers refuses to run without an allocation and rejects bad ones", "[l3][model]") {
  Llama model(l3_model(false, false));
  FlatBuffer params(model.registry().total(), DType::F32);
  TestTensor tokens(DType::I32, {1, 4}), targets(DType::I32, {1, 4});
  Arena arena(model.activation_bytes(1, 4, DType::F32, false), "test");
  CHECK_THROWS_WITH(model.forward_backward(params, nullptr, tokens, targets, 0.0, arena).cross_entropy,
                    Contains("L3 allocations must be set"));
  std::vector<int32_t> counts = model_counts(13, 26, 3);
  counts[4] = 0;
  counts[5] += 1;
  CHECK_THROWS_WITH(model.set_l3_allocation(0, counts, "alloc.safetensors"),
                    Contains("alloc.safetensors: token 4 owns 0 rows"));
  CHECK_THROWS_WITH(model.set_l3_allocation(0, model_counts(12, 26, 3), "x"), Contains("covers 12 token ids"));
  CHECK_THROWS_WITH(model.set_l3_allocation(0, model_counts(13, 25, 3), "x"), Contains("sum to 25 rows"));
  counts = model_counts(13, 26, 3);
  counts[0] = 4;
  counts[1] -= 1;
  CHECK_THROWS_WITH(model.set_l3_allocation(0, counts, "x"), Contains("token 0 owns 4 rows, more than model.l3.k = 3"));
}

// ---- the LZW allocation ----------------------------------------------------------------------------------

namespace {

// Algorithm 1 written literally with a dictionary of token tuples (std::map), no trie, no shortcuts:
// the independent reference for LzwDictionary + walk_allocation.
struct NaiveLzw {
  std::map<std::vector<uint32_t>, size_t> index;  // codeword -> insertion number
  std::vector<std::vector<uint32_t>> words;
  std::vector<int64_t> counts;

  explicit NaiveLzw(int64_t V) {
    for (uint32_t u = 0; u < V; ++u) insert({u}, 0);
  }
  void insert(const std::vector<uint32_t>& w, int64_t count) {
    if (index.count(w)) return;
    index[w] = words.size();
    words.push_back(w);
    counts.push_back(count);
  }
  void parse(const std::vector<uint32_t>& x) {
    const size_t n = x.size();
    size_t i = 0;
    while (i < n) {
      size_t j = i + 1;  // the largest j with x[i..j) in D
      for (size_t jj = n; jj > i; --jj)
        if (index.count(std::vector<uint32_t>(x.begin() + i, x.begin() + jj))) {
          j = jj;
          break;
        }
      ++counts[index[std::vector<uint32_t>(x.begin() + i, x.begin() + j)]];
      if (j < n) {
        insert(std::vector<uint32_t>(x.begin() + i, x.begin() + j + 1), 1);
        i = j + 1;
      } else {
        i = j;
      }
    }
  }
  std::vector<int32_t> allocate(int64_t V, int64_t v, int64_t k) const {
    std::vector<size_t> order(words.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return counts[a] > counts[b]; });
    std::vector<int32_t> n(static_cast<size_t>(V), 1);
    int64_t total = V;
    while (total < v)
      for (size_t e : order) {
        const uint32_t u = words[e].back();
        if (n[u] < k) ++n[u], ++total;
        if (total == v) break;
      }
    return n;
  }
};

std::vector<std::vector<uint32_t>> split_documents(const std::vector<uint32_t>& stream, int64_t eot) {
  std::vector<std::vector<uint32_t>> docs(1);
  for (uint32_t t : stream) {
    if (static_cast<int64_t>(t) == eot) docs.emplace_back();
    else docs.back().push_back(t);
  }
  return docs;
}

LzwDictionary dictionary_of(const std::vector<uint32_t>& stream, int64_t V, int64_t eot) {
  LzwDictionary d(V);
  for (uint32_t t : stream) {
    if (static_cast<int64_t>(t) == eot) d.end_document();
    else d.push(t);
  }
  d.end_document();
  return d;
}

// Zipf-like ids: token u drawn with probability proportional to 1 / (u + 1).
std::vector<uint32_t> zipf_stream(int64_t n, int64_t V, uint64_t seed) {
  std::vector<double> cdf(static_cast<size_t>(V));
  double total = 0;
  for (int64_t u = 0; u < V; ++u) cdf[u] = (total += 1.0 / static_cast<double>(u + 1));
  SplitMix64 rng(seed);
  std::vector<uint32_t> out(static_cast<size_t>(n));
  for (auto& t : out)
    t = static_cast<uint32_t>(std::lower_bound(cdf.begin(), cdf.end(), rng.uniform() * total) - cdf.begin());
  return out;
}

}  // namespace

TEST_CASE("LZW: a hand-worked example, codeword by codeword", "[l3][lzw]") {
  // V = 3 (a = 0, b = 1, c = 2), one document "a b a b a b a a a c":
  //   i=0: longest match "a"   (j=1): D[a] = 1,   insert "ab" (1),  i = 2
  //   i=2: longest match "ab"  (j=4): D[ab] = 2,  insert "aba" (1), i = 5
  //   i=5: longest match "b"   (j=6): D[b] = 1,   insert "ba" (1),  i = 7
  //   i=7: longest match "a"   (j=8): D[a] = 2,   insert "aa" (1),  i = 9
  //   i=9: longest match "c"   (j=10 = n): D[c] = 1, i = 10
  const std::vector<uint32_t> stream = {0, 1, 0, 1, 0, 1, 0, 0, 0, 2};
  const LzwDictionary d = dictionary_of(stream, 3, -1);
  REQUIRE(d.size() == 7);
  const std::vector<std::vector<uint32_t>> words = {{0}, {1}, {2}, {0, 1}, {0, 1, 0}, {1, 0}, {0, 0}};
  const std::vector<int64_t> counts = {2, 1, 1, 2, 1, 1, 1};
  for (int64_t e = 0; e < 7; ++e) {
    INFO("entry " << e);
    CHECK(d.codeword(e) == words[e]);
    CHECK(d.count(e) == counts[e]);
  }
  // Ordered by count, ties in insertion order: a(2) ab(2) b(1) c(1) aba(1) ba(1) aa(1); last tokens
  // a b b c a a a. The walk from n = (1, 1, 1), total 3:
  //   v = 7, k = 3: a -> (2,1,1), ab -> (2,2,1), b -> (2,3,1), c -> (2,3,2)            stop at 7
  CHECK(lzw_allocation(d, 7, 3) == std::vector<int32_t>{2, 3, 2});
  //   v = 8, k = 3: ... aba -> (3,3,2)                                                    stop at 8
  CHECK(lzw_allocation(d, 8, 3) == std::vector<int32_t>{3, 3, 2});
  //   v = 9 = V*k, k = 3: ba, aa are capped, the walk ends at 8; again: a, ab, b capped, c -> (3,3,3)
  CHECK(lzw_allocation(d, 9, 3) == std::vector<int32_t>{3, 3, 3});
  //   v = 10, k = 4: first walk -> (4,3,2) = 9 (aa capped at 4); second walk: a capped, ab -> (4,4,2)
  int64_t passes = 0;
  CHECK(lzw_allocation(d, 10, 4, &passes) == std::vector<int32_t>{4, 4, 2});
  CHECK(passes == 2);
  //   v = 6, k = 2: a -> (2,1,1), ab -> (2,2,1), b capped, c -> (2,2,2)
  CHECK(lzw_allocation(d, 6, 2) == std::vector<int32_t>{2, 2, 2});
  //   v = V: no walk
  CHECK(lzw_allocation(d, 3, 5) == std::vector<int32_t>{1, 1, 1});
}

TEST_CASE("LZW: documents split at end-of-text share one dictionary, and end-of-text is not parsed", "[l3][lzw]") {
  // V = 4, eot = 3: documents "a b", "a b a", "a b".
  //   doc 1: "a" (j=1): D[a] = 1, insert "ab" (1), i = 2 = n
  //   doc 2: "ab" (j=2): D[ab] = 2, insert "aba" (1), i = 3 = n
  //   doc 3: "ab" (j=2 = n): D[ab] = 3
  const std::vector<uint32_t> stream = {0, 1, 3, 0, 1, 0, 3, 0, 1};
  const LzwDictionary d = dictionary_of(stream, 4, 3);
  REQUIRE(d.size() == 6);
  CHECK(d.codeword(4) == std::vector<uint32_t>{0, 1});
  CHECK(d.codeword(5) == std::vector<uint32_t>{0, 1, 0});
  const std::vector<int64_t> counts = {1, 0, 0, 0, 3, 1};
  for (int64_t e = 0; e < 6; ++e) CHECK(d.count(e) == counts[e]);
  // Order: ab(3) a(1) aba(1) b(0) c(0) eot(0), last tokens b a a b c eot; from (1,1,1,1), total 4:
  //   ab -> (1,2,1,1), a -> (2,2,1,1), aba -> (3,2,1,1)                                  stop at 7
  CHECK(lzw_allocation(d, 7, 3) == std::vector<int32_t>{3, 2, 1, 1});
}

TEST_CASE("LZW: the hashed trie and the whole-pass walk equal Algorithm 1 on token tuples", "[l3][lzw]") {
  const int64_t V = 40, eot = 0, k = 6;
  std::vector<uint32_t> stream = zipf_stream(6000, V, 3);
  for (size_t i = 97; i < stream.size(); i += 131) stream[i] = eot;  // documents of ~130 tokens
  NaiveLzw naive(V);
  for (const auto& doc : split_documents(stream, eot)) naive.parse(doc);
  const LzwDictionary d = dictionary_of(stream, V, eot);
  REQUIRE(d.size() == static_cast<int64_t>(naive.words.size()));
  for (int64_t e = 0; e < d.size(); ++e) {
    REQUIRE(d.codeword(e) == naive.words[e]);
    REQUIRE(d.count(e) == naive.counts[e]);
  }
  for (int64_t v : {V, V + 1, V + 17, 3 * V, V * k - 5, V * k - 1, V * k}) {
    INFO("v = " << v);
    const std::vector<int32_t> rows = lzw_allocation(d, v, k);
    CHECK(rows == naive.allocate(V, v, k));
    CHECK(std::accumulate(rows.begin(), rows.end(), int64_t{0}) == v);
  }
}

TEST_CASE("uniform and unigram allocations", "[l3][lzw]") {
  // uniform: floor(v / V) each, one more for the first v mod V ids
  CHECK(uniform_allocation(3, 10, 4) == std::vector<int32_t>{4, 3, 3});
  CHECK(uniform_allocation(4, 4, 1) == std::vector<int32_t>{1, 1, 1, 1});
  CHECK(uniform_allocation(3, 12, 4) == std::vector<int32_t>{4, 4, 4});
  // unigram: the walk over single-token counts (descending, ties by id); each pass gives every token
  // below k one row, in frequency order: counts (5, 9, 0, 9) -> order 1, 3, 0, 2
  CHECK(unigram_allocation({5, 9, 0, 9}, 6, 3) == std::vector<int32_t>{1, 2, 1, 2});
  CHECK(unigram_allocation({5, 9, 0, 9}, 7, 3) == std::vector<int32_t>{2, 2, 1, 2});
  CHECK(unigram_allocation({5, 9, 0, 9}, 10, 3) == std::vector<int32_t>{2, 3, 2, 3});
  // v a multiple of V: the walk ends after whole passes, and unigram is uniform whatever the counts (the CPU
  // study's v = 32 x 8192, docs/results.md)
  CHECK(unigram_allocation({5, 9, 0, 9}, 8, 3) == uniform_allocation(4, 8, 3));
  CHECK(unigram_allocation({1, 1000, 7, 0}, 12, 5) == uniform_allocation(4, 12, 5));
  // sizes outside V <= v <= V*k are refused
  CHECK_THROWS_WITH(uniform_allocation(4, 3, 2), Contains("v = 3 is smaller than the vocabulary size 4"));
  CHECK_THROWS_WITH(uniform_allocation(4, 9, 2), Contains("v = 9 is larger than vocabulary size * k = 4 * 2 = 8"));
  CHECK_THROWS_WITH(uniform_allocation(4, 4, 0), Contains("k must be >= 1, got 0"));
}

TEST_CASE("LZW on Tiny Shakespeare: sum v, counts in [1, k], frequent bytes get more rows", "[l3][lzw]") {
  // Only 65 distinct bytes occur: v = 8 V leaves them about 29 rows each on average, below the cap.
  const fs::path path = fs::path(L3C_SOURCE_DIR) / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt";
  REQUIRE(fs::exists(path));
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<uint32_t> stream(text.begin(), text.end());
  for (auto& t : stream) t &= 0xFF;
  const int64_t V = 256, v = 2048, k = 64;
  const LzwDictionary d = dictionary_of(stream, V, -1);
  const std::vector<int32_t> rows = lzw_allocation(d, v, k);
  CHECK(std::accumulate(rows.begin(), rows.end(), int64_t{0}) == v);
  CHECK(*std::min_element(rows.begin(), rows.end()) >= 1);
  CHECK(*std::max_element(rows.begin(), rows.end()) <= k);
  CHECK(lzw_allocation(dictionary_of(stream, V, -1), v, k) == rows);  // deterministic

  // Frequent tokens get more: by byte frequency, each quartile of the bytes that occur gets at least
  // as many rows on average as the next, and the most frequent byte (space) is at the cap.
  std::vector<int64_t> freq(V, 0);
  for (uint32_t t : stream) ++freq[t];
  std::vector<int32_t> present;
  for (int32_t u = 0; u < V; ++u)
    if (freq[u] > 0) present.push_back(u);
  std::stable_sort(present.begin(), present.end(), [&](int32_t a, int32_t b) { return freq[a] > freq[b]; });
  const size_t q = present.size() / 4;
  std::vector<double> mean(4, 0.0);
  for (size_t i = 0; i < 4 * q; ++i) mean[i / q] += rows[present[i]] / static_cast<double>(q);
  INFO("mean rows by frequency quartile: " << mean[0] << " " << mean[1] << " " << mean[2] << " " << mean[3]);
  CHECK(mean[0] > mean[1]);
  CHECK(mean[1] > mean[2]);
  CHECK(mean[2] >= mean[3]);
  CHECK(rows[' '] == k);
}

TEST_CASE("an allocation from shards reads them as one stream split at end-of-text", "[l3][lzw]") {
  const fs::path dir = fresh_dir("shards");
  const int64_t V = 30, eot = 29;
  std::vector<uint32_t> stream = zipf_stream(3000, V, 7);
  for (size_t i = 50; i < stream.size(); i += 211) stream[i] = static_cast<uint32_t>(eot);
  write_shard((dir / "train_000000.bin").string(), std::vector<uint32_t>(stream.begin(), stream.begin() + 1234));
  write_shard((dir / "train_000001.bin").string(), std::vector<uint32_t>(stream.begin() + 1234, stream.end()));
  AllocationRequest request;
  request.data = {(dir / "train_*.bin").string()};
  request.vocab_size = V;
  request.v = 200;
  request.k = 12;
  request.eot = eot;
  const Allocation a = compute_allocation(request);
  CHECK(a.counts == lzw_allocation(dictionary_of(stream, V, eot), 200, 12));
  REQUIRE(a.corpus);
  CHECK(a.corpus->tokens == 3000);
  CHECK(a.corpus->tokens_parsed == 3000 - static_cast<int64_t>(std::count(stream.begin(), stream.end(), eot)));
  CHECK(a.corpus->codewords == dictionary_of(stream, V, eot).size());
  CHECK(a.corpus->shards.size() == 2);
  // The summary: sizes, corpus, most rows first, histogram bins summing to V.
  const auto summary = allocation_summary(a, 3);
  CHECK(summary["rows_allocated"] == 200);
  CHECK(summary["most_rows"].size() == 3);
  CHECK(summary["most_rows"][0]["rows"].get<int>() >= summary["most_rows"][1]["rows"].get<int>());
  int64_t binned = 0;
  for (const auto& bin : summary["histogram"]) binned += bin["tokens"].get<int64_t>();
  CHECK(binned == V);

  request.method = AllocationMethod::Unigram;
  std::vector<int64_t> token_counts(V, 0);
  for (uint32_t t : stream)
    if (t != eot) ++token_counts[t];
  CHECK(compute_allocation(request).counts == unigram_allocation(token_counts, 200, 12));

  // A token id outside the vocabulary names the shard and the position.
  request.vocab_size = 20;
  request.v = 100;
  request.eot = -1;
  CHECK_THROWS_WITH(compute_allocation(request), Contains("train_000000.bin: token id") &&
                                                     Contains("out of range for the vocabulary size 20"));

  // The manifest beside the shards gives the vocabulary size and the end-of-text id.
  std::ofstream(dir / "manifest.json") << R"({"tokenizer": {"vocab_size": 30, "eot_id": 29}})";
  const auto manifest = read_manifest_tokenizer((dir / "train_*.bin").string(), "--data");
  REQUIRE(manifest);
  CHECK(manifest->vocab_size == 30);
  CHECK(manifest->eot_id == std::optional<int64_t>(29));
  ModelConfig model;
  model.vocab_size = 30;
  model.l3.after_layers = {0};
  model.l3.v = 200;
  model.l3.k = 12;
  model.l3.allocation.data = (dir / "train_*.bin").string();
  CHECK(allocation_for_model(model).counts == a.counts);
  model.vocab_size = 31;
  model.l3.v = 201;
  CHECK_THROWS_WITH(allocation_for_model(model), Contains("vocabulary of 30, but model.vocab_size is 31"));
}

TEST_CASE("allocation files round-trip, and a wrong vocabulary, sum, zero count, truncation or corruption is refused",
          "[l3][lzw]") {
  const fs::path dir = fresh_dir("files");
  const std::string path = (dir / "alloc.safetensors").string();
  Allocation a;
  a.method = AllocationMethod::Lzw;
  a.v = 20;
  a.k = 5;
  a.counts = {5, 1, 3, 2, 4, 1, 1, 3};
  write_allocation_file(path, a);
  const Allocation back = read_allocation_file(path, 8, 20, 5);
  CHECK(back.counts == a.counts);
  CHECK(back.method == AllocationMethod::Lzw);

  CHECK_THROWS_WITH(read_allocation_file(path, 9, 20, 5),
                    Contains(path) && Contains("covers 8 token ids but the vocabulary has 9"));
  CHECK_THROWS_WITH(read_allocation_file(path, 8, 21, 5), Contains("the counts sum to 20 rows but model.l3.v is 21"));
  CHECK_THROWS_WITH(read_allocation_file(path, 8, 20, 4), Contains("token 0 owns 5 rows, more than model.l3.k = 4"));
  Allocation zero = a;
  zero.counts = {5, 0, 4, 2, 4, 1, 1, 3};
  write_allocation_file(path, zero);
  CHECK_THROWS_WITH(read_allocation_file(path, 8, 20, 5), Contains("token 1 owns 0 rows"));

  write_allocation_file(path, a);
  const auto size = fs::file_size(path);
  {  // a changed count: the checksum no longer matches
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size - 4));
    const int32_t four = 4;  // the last count was 3
    f.write(reinterpret_cast<const char*>(&four), 4);
  }
  CHECK_THROWS_WITH(read_allocation_file(path, 8, 20, 5), Contains("corrupted allocation file"));
  write_allocation_file(path, a);
  fs::resize_file(path, size - 6);
  CHECK_THROWS_WITH(read_allocation_file(path, 8, 20, 5), Contains("truncated"));
  CHECK_THROWS_WITH(read_allocation_file((dir / "none.safetensors").string(), 8, 20, 5),
                    Contains("no such allocation file"));
}

// ---- benchmark (hidden: run with `test_l3 "[.benchmark]"`) ----------------------------------------------

TEST_CASE("benchmark: L3 layer forward+backward vs one dense decoder block of the same width", "[.benchmark]") {
  // The tiny configs' widths (d_model 256, 8 heads / 4 kv, ffn 688; L3 v 4096, k 128, d_emb 128, d_up 256),
  // micro-batch 8 x 256 of Tiny Shakespeare bytes. A block's cost is the difference between models that
  // differ by that block only, so embedding and classifier cancel out.
  const fs::path path = fs::path(L3C_SOURCE_DIR) / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt";
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const int64_t B = 8, T = 256, k = std::getenv("L3_K") ? std::atoi(std::getenv("L3_K")) : 128;
  const int64_t v = std::getenv("L3_V") ? std::atoi(std::getenv("L3_V")) : 4096;
  TestTensor tokens(DType::I32, {B, T}), targets(DType::I32, {B, T});
  for (int64_t i = 0; i < B * T; ++i) {
    tokens.ptr<int32_t>()[i] = static_cast<uint8_t>(text[1000 + i]);
    targets.ptr<int32_t>()[i] = static_cast<uint8_t>(text[1001 + i]);
  }
  std::vector<uint32_t> stream(text.begin(), text.end());
  for (auto& t : stream) t &= 0xFF;
  const std::vector<int32_t> counts = lzw_allocation(dictionary_of(stream, 256, -1), v, k);
  auto base = [] { return model_of_sizes(256, 256, 1, 8, 4, 688); };
  auto time_model = [&](const ModelConfig& m) {
    Llama model(m);
    if (m.l3.enabled()) model.set_l3_allocations(counts, "bench");
    FlatBuffer params(model.registry().total(), DType::F32), grads(model.registry().total(), DType::F32);
    init_params(model.registry(), params, 1);
    Arena arena(model.activation_bytes(B, T, DType::F32, true), "bench");
    std::vector<double> seconds;
    for (int rep = 0; rep < 12; ++rep) {
      arena.reset();
      const auto start = std::chrono::steady_clock::now();
      model.forward_backward(params, &grads, tokens, targets, 1.0 / (B * T), arena).cross_entropy;
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(seconds.begin(), seconds.end());
    return seconds[seconds.size() / 4];  // lower quartile: robust to other load on the machine
  };
  ModelConfig one = base(), two = base(), with_l3 = base();
  two.n_layers = 2;
  with_l3.l3.after_layers = {0};
  with_l3.l3.v = v;
  with_l3.l3.k = k;
  with_l3.l3.d_emb = 128;
  with_l3.l3.d_up = 256;
  const double t1 = time_model(one), t2 = time_model(two), t3 = time_model(with_l3);
  WARN("threads " << omp_get_max_threads() << ": one dense block " << (t2 - t1) * 1e3 << " ms, one L3 layer (k "
                  << k << ") " << (t3 - t1) * 1e3 << " ms, ratio " << (t3 - t1) / (t2 - t1) << " (model of 1 block "
                  << t1 * 1e3 << " ms)");
}
