// Tests of the op contract (kernels/ops.h) on the CPU backend: every op against a naive reference
// written plainly here (in double, from the same inputs), in f32 (to ~1e-5) and f64 (to ~1e-12);
// every backward against central finite differences in f64 of the objective sum(out * R) with a
// fixed random R; overwrite / accumulate semantics; edge shapes; determinism; error messages.
#include <omp.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "test_util.h"

using namespace l3c;
using namespace l3c::test;
using Catch::Matchers::Contains;

namespace {

constexpr DType kFloatTypes[] = {DType::F32, DType::F64};

// How close an op must be to the double-precision naive reference, relative to the reference's norm.
double tolerance(DType dtype) { return dtype == DType::F32 ? 1e-5 : 1e-12; }
// How close an analytic gradient must be to central differences (f64, step 1e-6).
constexpr double kGradTolerance = 1e-6;

TestTensor randn(DType dtype, std::initializer_list<int64_t> shape, uint64_t seed, double scale = 1.0) {
  TestTensor t(dtype, shape);
  random_fill(t, seed, scale);
  return t;
}

TestTensor tokens(std::initializer_list<int64_t> shape, int64_t vocab, uint64_t seed) {
  TestTensor t(DType::I32, shape);
  random_tokens(t, vocab, seed);
  return t;
}

std::vector<double> scaled(std::vector<double> v, double s) {
  for (double& x : v) x *= s;
  return v;
}

std::vector<double> added(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// The gradients of a two-input op against central differences in f64: after forward(out, a, b) has run once,
// backward(da, db, dout = R, a, b) must give the gradients of sum(out * R) with respect to a and b.
template <typename Forward, typename Backward>
void check_input_gradients(const TestTensor& a, const TestTensor& b, const TestTensor& R, Forward forward,
                           Backward backward) {
  TestTensor out = TestTensor::zeros_like(R);
  auto objective = [&] {
    forward(out, a, b);
    return dot(out, R);
  };
  objective();  // what the backward reads of the forward (rmsnorm's rstd)
  TestTensor da = TestTensor::zeros_like(a), db = TestTensor::zeros_like(b);
  backward(da, db, R, a, b);
  CHECK(norm_relative_error(da.values(), numerical_gradient(a, objective)) < kGradTolerance);
  CHECK(norm_relative_error(db.values(), numerical_gradient(b, objective)) < kGradTolerance);
}

// ---- naive references -------------------------------------------------------------------------------

std::vector<double> matmul_reference(const std::vector<double>& x, const std::vector<double>& w, int64_t n,
                                     int64_t k, int64_t m) {
  std::vector<double> out(n * m, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j)
      for (int64_t c = 0; c < k; ++c) out[i * m + j] += x[i * k + c] * w[j * k + c];
  return out;
}

struct RmsNormReference {
  std::vector<double> out, rstd;
};
RmsNormReference rmsnorm_reference(const std::vector<double>& x, const std::vector<double>& w, int64_t n,
                                   int64_t d, double eps) {
  RmsNormReference ref{std::vector<double>(n * d), std::vector<double>(n)};
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += x[i * d + c] * x[i * d + c];
    const double r = 1.0 / std::sqrt(ss / d + eps);
    ref.rstd[i] = r;
    for (int64_t c = 0; c < d; ++c) ref.out[i * d + c] = x[i * d + c] * r * w[c];
  }
  return ref;
}

struct RmsNormGrads {
  std::vector<double> dx, dw;
};
RmsNormGrads rmsnorm_backward_reference(const std::vector<double>& dout, const std::vector<double>& x,
                                        const std::vector<double>& w, int64_t n, int64_t d, double eps) {
  RmsNormGrads g{std::vector<double>(n * d, 0.0), std::vector<double>(d, 0.0)};
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += x[i * d + c] * x[i * d + c];
    const double r = 1.0 / std::sqrt(ss / d + eps);
    double dot = 0;
    for (int64_t c = 0; c < d; ++c) dot += dout[i * d + c] * w[c] * x[i * d + c];
    for (int64_t c = 0; c < d; ++c) {
      g.dx[i * d + c] = r * dout[i * d + c] * w[c] - r * r * r / d * dot * x[i * d + c];
      g.dw[c] += dout[i * d + c] * x[i * d + c] * r;
    }
  }
  return g;
}

// direction +1: rope_forward; -1: the inverse rotation (rope_backward).
std::vector<double> rope_reference(std::vector<double> x, int64_t batch, int64_t seq, int64_t heads,
                                   int64_t hd, double theta, double direction) {
  const int64_t half = hd / 2;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double angle = t * std::pow(theta, -2.0 * i / hd);
          const double c = std::cos(angle), s = direction * std::sin(angle);
          double* row = &x[((b * seq + t) * heads + h) * hd];
          const double x1 = row[i], x2 = row[i + half];
          row[i] = x1 * c - x2 * s;
          row[i + half] = x2 * c + x1 * s;
        }
  return x;
}

// Applies `rope` (ops::rope_forward, direction +1, or ops::rope_backward, -1) at `theta` in place to x (B, T, nh, hd)
// and checks it against rope_reference; returns x's values from before.
template <typename Rope>
std::vector<double> check_rope(const TestTensor& x, Rope rope, double theta, double direction) {
  const Tensor& t = x.tensor();
  const std::vector<double> before = x.values();
  rope(x, theta);
  CHECK(norm_relative_error(x.values(), rope_reference(before, t.dim(0), t.dim(1), t.dim(2), t.dim(3), theta,
                                                       direction)) < tolerance(t.dtype));
  return before;
}

struct AttentionShape {
  int64_t batch, seq, heads, kv_heads, hd;
};
struct AttentionReference {
  std::vector<double> out, lse, dq, dk, dv;
};
// Explicit (T, T) scores and softmax per (batch, head); with dout, also the explicit backward.
AttentionReference attention_reference(const std::vector<double>& q, const std::vector<double>& k,
                                       const std::vector<double>& v, const std::vector<double>& dout,
                                       AttentionShape s) {
  const int64_t T = s.seq, H = s.heads, Hkv = s.kv_heads, hd = s.hd;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  auto qi = [&](int64_t b, int64_t t, int64_t h, int64_t c) { return ((b * T + t) * H + h) * hd + c; };
  auto ki = [&](int64_t b, int64_t t, int64_t g, int64_t c) { return ((b * T + t) * Hkv + g) * hd + c; };
  AttentionReference ref{std::vector<double>(q.size(), 0.0), std::vector<double>(s.batch * H * T),
                         std::vector<double>(q.size(), 0.0), std::vector<double>(k.size(), 0.0),
                         std::vector<double>(k.size(), 0.0)};
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / Hkv);
      std::vector<double> P(T * T, 0.0);  // P[i][j], zero above the diagonal
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> score(i + 1);
        double max = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < hd; ++c) dot += q[qi(b, i, h, c)] * k[ki(b, j, g, c)];
          score[j] = dot * scale;
          max = std::max(max, score[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(score[j] - max);
        const double lse = max + std::log(sum);
        ref.lse[(b * H + h) * T + i] = lse;
        for (int64_t j = 0; j <= i; ++j) {
          P[i * T + j] = std::exp(score[j] - lse);
          for (int64_t c = 0; c < hd; ++c) ref.out[qi(b, i, h, c)] += P[i * T + j] * v[ki(b, j, g, c)];
        }
      }
      if (dout.empty()) continue;
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> dP(T, 0.0);
        double delta = 0;
        for (int64_t j = 0; j <= i; ++j) {
          for (int64_t c = 0; c < hd; ++c) dP[j] += dout[qi(b, i, h, c)] * v[ki(b, j, g, c)];
          delta += P[i * T + j] * dP[j];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double dS = P[i * T + j] * (dP[j] - delta);
          for (int64_t c = 0; c < hd; ++c) {
            ref.dq[qi(b, i, h, c)] += scale * dS * k[ki(b, j, g, c)];
            ref.dk[ki(b, j, g, c)] += scale * dS * q[qi(b, i, h, c)];
            ref.dv[ki(b, j, g, c)] += P[i * T + j] * dout[qi(b, i, h, c)];
          }
        }
      }
    }
  return ref;
}

struct ClassifierReference {
  std::vector<double> losses, dx, dW;
};
// Full (N, V) logits, log-softmax and cross-entropy; dlogits = (softmax - onehot) * grad_scale.
ClassifierReference classifier_reference(const std::vector<double>& x, const std::vector<double>& W,
                                         const std::vector<double>& targets, int64_t n, int64_t d,
                                         int64_t vocab, double grad_scale) {
  const std::vector<double> logits = matmul_reference(x, W, n, d, vocab);  // (N, V)
  ClassifierReference ref{std::vector<double>(n), std::vector<double>(n * d, 0.0),
                          std::vector<double>(vocab * d, 0.0)};
  for (int64_t i = 0; i < n; ++i) {
    const double* z = &logits[i * vocab];
    const auto t = static_cast<int64_t>(targets[i]);
    double max = z[0];
    for (int64_t c = 0; c < vocab; ++c) max = std::max(max, z[c]);
    double sum = 0;
    for (int64_t c = 0; c < vocab; ++c) sum += std::exp(z[c] - max);
    const double lse = max + std::log(sum);
    ref.losses[i] = lse - z[t];
    for (int64_t c = 0; c < vocab; ++c) {
      const double dlogit = (std::exp(z[c] - lse) - (c == t ? 1.0 : 0.0)) * grad_scale;
      for (int64_t e = 0; e < d; ++e) {
        ref.dx[i * d + e] += dlogit * W[c * d + e];
        ref.dW[c * d + e] += dlogit * x[i * d + e];
      }
    }
  }
  return ref;
}

}  // namespace

// =====================================================================================================
// elementwise
// =====================================================================================================

TEST_CASE("fill_zero, copy, add_inplace and scale_inplace match plain loops in f32 and f64", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t n = 70001;  // more than one chunk of work, not a multiple of one
    TestTensor x = randn(dtype, {n}, 1), y = randn(dtype, {n}, 2);
    const std::vector<double> xv = x.values(), yv = y.values();

    TestTensor c(dtype, {n});
    ops::copy(c, x);
    CHECK(c.values() == xv);

    ops::add_inplace(y, x);
    std::vector<double> expect(n);
    for (int64_t i = 0; i < n; ++i) expect[i] = dtype == DType::F32 ? double(float(xv[i]) + float(yv[i])) : xv[i] + yv[i];
    CHECK(y.values() == expect);

    ops::scale_inplace(x, 0.37);
    for (int64_t i = 0; i < n; ++i) expect[i] = dtype == DType::F32 ? double(float(xv[i]) * 0.37f) : xv[i] * 0.37;
    CHECK(x.values() == expect);

    ops::fill_zero(x);
    CHECK(x.values() == std::vector<double>(n, 0.0));
  }
}

TEST_CASE("fill_zero and copy work on i32 tensors too", "[ops]") {
  TestTensor t = tokens({5, 3}, 1000, 3), u(DType::I32, {15});
  ops::copy(u, t);  // copy only needs the same number of elements
  CHECK(u.values() == t.values());
  ops::fill_zero(t);
  CHECK(t.values() == std::vector<double>(15, 0.0));
}

TEST_CASE("sum_squares matches a plain double sum and does not depend on the thread count", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    TestTensor x = randn(dtype, {100003}, 4);
    double expect = 0;
    for (double v : x.values()) expect += v * v;
    const double got = ops::sum_squares(x);
    CHECK(std::abs(got - expect) <= 1e-12 * expect);  // accumulated in double in both cases

    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    const double one_thread = ops::sum_squares(x);
    omp_set_num_threads(threads);
    CHECK(one_thread == got);
  }
}

// =====================================================================================================
// embedding
// =====================================================================================================

TEST_CASE("embedding_forward gathers the table row of each token", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t V = 13, d = 20, N = 37;
    TestTensor table = randn(dtype, {V, d}, 5), tok = tokens({N}, V, 6), out(dtype, {N, d});
    ops::embedding_forward(out, table, tok);
    const std::vector<double> tv = table.values();
    std::vector<double> expect(N * d);
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < d; ++c) expect[i * d + c] = tv[static_cast<int64_t>(tok[i]) * d + c];
    CHECK(out.values() == expect);
  }
}

TEST_CASE("embedding_backward scatter-adds rows of repeated tokens, accumulating into dtable", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t V = 7, d = 40, N = 50;  // more positions than tokens: every token repeats
    TestTensor dout = randn(dtype, {N, d}, 7), tok = tokens({N}, V, 8);
    TestTensor dtable = randn(dtype, {V, d}, 9);
    const std::vector<double> before = dtable.values(), dv = dout.values();
    ops::embedding_backward(dtable, dout, tok);
    std::vector<double> expect = before;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < d; ++c) expect[static_cast<int64_t>(tok[i]) * d + c] += dv[i * d + c];
    CHECK(norm_relative_error(dtable.values(), expect) < tolerance(dtype));

    // A second call adds the same scatter again.
    ops::embedding_backward(dtable, dout, tok);
    CHECK(norm_relative_error(dtable.values(), added(expect, added(expect, scaled(before, -1)))) <
          tolerance(dtype));
  }
}

TEST_CASE("embedding_backward matches finite differences and does not depend on the thread count", "[ops]") {
  const int64_t V = 6, d = 33, N = 400;
  TestTensor table = randn(DType::F64, {V, d}, 10), tok = tokens({N}, V, 11);
  TestTensor R = randn(DType::F64, {N, d}, 12), out(DType::F64, {N, d});
  auto objective = [&] {
    ops::embedding_forward(out, table, tok);
    return dot(out, R);
  };
  TestTensor dtable(DType::F64, {V, d});
  ops::embedding_backward(dtable, R, tok);
  CHECK(norm_relative_error(dtable.values(), numerical_gradient(table, objective)) < kGradTolerance);

  // Big enough to run on several threads: the bits are the same on one thread.
  TestTensor big_dout = randn(DType::F32, {8192, 160}, 13), big_tok = tokens({8192}, 50, 14);
  TestTensor many(DType::F32, {50, 160}), one(DType::F32, {50, 160});
  ops::embedding_backward(many, big_dout, big_tok);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  ops::embedding_backward(one, big_dout, big_tok);
  omp_set_num_threads(threads);
  CHECK(same_bits(many, one));
}

// =====================================================================================================
// RMSNorm
// =====================================================================================================

TEST_CASE("rmsnorm_forward matches x / sqrt(mean(x^2) + eps) times weight and writes rstd", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 23, d = 48;
    const double eps = 1e-5;
    TestTensor x = randn(dtype, {N, d}, 20), w = randn(dtype, {d}, 21);
    TestTensor out = randn(dtype, {N, d}, 22), rstd = randn(dtype, {N}, 23);  // overwritten
    ops::rmsnorm_forward(out, rstd, x, w, eps);
    const RmsNormReference ref = rmsnorm_reference(x.values(), w.values(), N, d, eps);
    CHECK(norm_relative_error(out.values(), ref.out) < tolerance(dtype));
    CHECK(norm_relative_error(rstd.values(), ref.rstd) < tolerance(dtype));
  }
  // eps sits inside the square root: an all-zero row gets rstd = 1 / sqrt(eps).
  TestTensor x(DType::F64, {1, 4}), w = randn(DType::F64, {4}, 24), out(DType::F64, {1, 4}),
      rstd(DType::F64, {1});
  ops::rmsnorm_forward(out, rstd, x, w, 0.25);
  CHECK(rstd[0] == Approx(2.0).epsilon(1e-15));
}

TEST_CASE("rmsnorm_backward matches the naive backward and accumulates into dx and dweight", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 300, d = 64;  // enough rows for several threads
    const double eps = 1e-5;
    TestTensor x = randn(dtype, {N, d}, 30), w = randn(dtype, {d}, 31), dout = randn(dtype, {N, d}, 32);
    TestTensor out(dtype, {N, d}), rstd(dtype, {N});
    ops::rmsnorm_forward(out, rstd, x, w, eps);
    TestTensor dx = randn(dtype, {N, d}, 33), dw = randn(dtype, {d}, 34);
    const std::vector<double> dx0 = dx.values(), dw0 = dw.values();
    ops::rmsnorm_backward(dx, dw, dout, x, w, rstd);
    const RmsNormGrads ref = rmsnorm_backward_reference(dout.values(), x.values(), w.values(), N, d, eps);
    CHECK(norm_relative_error(dx.values(), added(dx0, ref.dx)) < tolerance(dtype));
    CHECK(norm_relative_error(dw.values(), added(dw0, ref.dw)) < tolerance(dtype));

    ops::rmsnorm_backward(dx, dw, dout, x, w, rstd);  // twice: the gradients add up again
    CHECK(norm_relative_error(dx.values(), added(dx0, scaled(ref.dx, 2))) < tolerance(dtype));
    CHECK(norm_relative_error(dw.values(), added(dw0, scaled(ref.dw, 2))) < tolerance(dtype));
  }
}

TEST_CASE("rmsnorm_backward matches finite differences for x and weight", "[ops]") {
  const int64_t N = 5, d = 12;
  const double eps = 1e-5;
  TestTensor x = randn(DType::F64, {N, d}, 40), w = randn(DType::F64, {d}, 41), R = randn(DType::F64, {N, d}, 42);
  TestTensor rstd(DType::F64, {N});
  check_input_gradients(
      x, w, R, [&](Tensor out, Tensor a, Tensor b) { ops::rmsnorm_forward(out, rstd, a, b, eps); },
      [&](Tensor da, Tensor db, Tensor dout, Tensor a, Tensor b) { ops::rmsnorm_backward(da, db, dout, a, b, rstd); });
}

// =====================================================================================================
// matmul
// =====================================================================================================

TEST_CASE("matmul_forward matches a triple loop, overwriting or accumulating", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 37, K = 29, M = 43;
    TestTensor x = randn(dtype, {N, K}, 50), w = randn(dtype, {M, K}, 51);
    TestTensor out = randn(dtype, {N, M}, 52);
    const std::vector<double> out0 = out.values();
    const std::vector<double> ref = matmul_reference(x.values(), w.values(), N, K, M);
    ops::matmul_forward(out, x, w, /*accumulate=*/true);
    CHECK(norm_relative_error(out.values(), added(out0, ref)) < tolerance(dtype));
    ops::matmul_forward(out, x, w);
    CHECK(norm_relative_error(out.values(), ref) < tolerance(dtype));
    // Leading dimensions may be kept: x (B, T, K) is x (B*T, K).
    TestTensor out3(dtype, {N, M});
    ops::matmul_forward(out3.tensor().view({1, N, M}), x.tensor().view({1, N, K}), w);
    CHECK(out3.values() == out.values());
  }
}

TEST_CASE("matmul_backward: dx overwrites or accumulates, dw accumulates, empty outputs are skipped", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 31, K = 19, M = 26;
    TestTensor x = randn(dtype, {N, K}, 60), w = randn(dtype, {M, K}, 61), dout = randn(dtype, {N, M}, 62);
    std::vector<double> wT(K * M), doutT(M * N);  // reference: dx = dout w, dw = dout^T x
    const std::vector<double> wv = w.values(), dv = dout.values();
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) wT[k * M + m] = wv[m * K + k];
    for (int64_t i = 0; i < N; ++i)
      for (int64_t m = 0; m < M; ++m) doutT[m * N + i] = dv[i * M + m];
    std::vector<double> xT(K * N);
    const std::vector<double> xv = x.values();
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = 0; k < K; ++k) xT[k * N + i] = xv[i * K + k];
    const std::vector<double> ref_dx = matmul_reference(dv, wT, N, M, K);
    const std::vector<double> ref_dw = matmul_reference(doutT, xT, M, N, K);

    TestTensor dx = randn(dtype, {N, K}, 63), dw = randn(dtype, {M, K}, 64);
    const std::vector<double> dx0 = dx.values(), dw0 = dw.values();
    ops::matmul_backward(dx, dw, dout, x, w);
    CHECK(norm_relative_error(dx.values(), ref_dx) < tolerance(dtype));
    CHECK(norm_relative_error(dw.values(), added(dw0, ref_dw)) < tolerance(dtype));

    ops::matmul_backward(dx, dw, dout, x, w, /*accumulate_dx=*/true);
    CHECK(norm_relative_error(dx.values(), scaled(ref_dx, 2)) < tolerance(dtype));
    CHECK(norm_relative_error(dw.values(), added(dw0, scaled(ref_dw, 2))) < tolerance(dtype));

    const std::vector<double> dx2 = dx.values(), dw2 = dw.values();
    ops::matmul_backward(Tensor(), dw, dout, x, w);  // dw only
    CHECK(dx.values() == dx2);
    CHECK(norm_relative_error(dw.values(), added(dw0, scaled(ref_dw, 3))) < tolerance(dtype));
    ops::matmul_backward(dx, Tensor(), dout, x, w);  // dx only
    CHECK(norm_relative_error(dx.values(), ref_dx) < tolerance(dtype));
  }
}

TEST_CASE("matmul_backward matches finite differences for x and w", "[ops]") {
  const int64_t N = 6, K = 5, M = 7;
  TestTensor x = randn(DType::F64, {N, K}, 70), w = randn(DType::F64, {M, K}, 71), R = randn(DType::F64, {N, M}, 72);
  check_input_gradients(
      x, w, R, [](Tensor out, Tensor a, Tensor b) { ops::matmul_forward(out, a, b); },
      [](Tensor da, Tensor db, Tensor dout, Tensor a, Tensor b) { ops::matmul_backward(da, db, dout, a, b); });
}

// =====================================================================================================
// RoPE
// =====================================================================================================

TEST_CASE("rope_forward rotates each pair (i, i + hd/2) at position t by the angle t theta^(-2i/hd)", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t nh = 3, hd = 16;
    TestTensor x = randn(dtype, {2, 9, nh, hd}, 80);
    const std::vector<double> x0 = check_rope(x, ops::rope_forward, 10000.0, 1.0);
    // Position 0 is not rotated.
    for (int64_t c = 0; c < nh * hd; ++c) CHECK(x[c] == x0[c]);
  }
  // A hand-checked case: hd = 2, theta irrelevant for i = 0; position 1 turns (1, 0) by 1 radian.
  TestTensor y = TestTensor::from_values(DType::F64, {1, 2, 1, 2}, {1, 0, 1, 0});
  ops::rope_forward(y, 500000.0);
  CHECK(y[2] == Approx(std::cos(1.0)).epsilon(1e-15));
  CHECK(y[3] == Approx(std::sin(1.0)).epsilon(1e-15));
}

TEST_CASE("rope_backward matches the inverse rotation, finite differences, and undoes rope_forward", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    TestTensor d = randn(dtype, {2, 11, 2, 8}, 90);
    const std::vector<double> d0 = check_rope(d, ops::rope_backward, 1000.0, -1.0);
    ops::rope_forward(d, 1000.0);
    CHECK(norm_relative_error(d.values(), d0) < tolerance(dtype));
  }
  const int64_t B = 1, T = 6, nh = 2, hd = 6;
  TestTensor x = randn(DType::F64, {B, T, nh, hd}, 91), R = randn(DType::F64, {B, T, nh, hd}, 92);
  TestTensor y(DType::F64, {B, T, nh, hd});
  auto objective = [&] {
    ops::copy(y, x);
    ops::rope_forward(y, 10000.0);
    return dot(y, R);
  };
  TestTensor dx = R;
  ops::rope_backward(dx, 10000.0);
  CHECK(norm_relative_error(dx.values(), numerical_gradient(x, objective)) < kGradTolerance);
}

// =====================================================================================================
// attention
// =====================================================================================================

namespace {

struct AttentionTensors {
  TestTensor q, k, v, dout, out, lse;
  AttentionTensors(DType dtype, AttentionShape s, uint64_t seed)
      : q(randn(dtype, {s.batch, s.seq, s.heads, s.hd}, seed)),
        k(randn(dtype, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 1)),
        v(randn(dtype, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 2)),
        dout(randn(dtype, {s.batch, s.seq, s.heads, s.hd}, seed + 3)),
        out(randn(dtype, {s.batch, s.seq, s.heads, s.hd}, seed + 4)),  // garbage: overwritten
        lse(randn(dtype, {s.batch, s.heads, s.seq}, seed + 5)) {}
};

std::string describe(AttentionShape s) {
  return "B=" + std::to_string(s.batch) + " T=" + std::to_string(s.seq) + " H=" + std::to_string(s.heads) +
         " Hkv=" + std::to_string(s.kv_heads) + " hd=" + std::to_string(s.hd);
}

}  // namespace

TEST_CASE("attention_forward matches an explicit causal T x T softmax: odd T, one head, GQA 1, 2, 4", "[ops]") {
  const AttentionShape shapes[] = {
      {2, 7, 4, 4, 8},   // GQA ratio 1
      {2, 7, 4, 2, 8},   // ratio 2
      {1, 7, 4, 1, 8},   // ratio 4
      {1, 7, 1, 1, 16},  // one head
      {1, 1, 2, 1, 4},   // a single position
      {2, 130, 4, 2, 16} // several default tiles and a ragged last one
  };
  for (DType dtype : kFloatTypes)
    for (AttentionShape s : shapes) {
      INFO("dtype " << dtype_name(dtype) << " " << describe(s));
      AttentionTensors t(dtype, s, 100);
      ops::attention_forward(t.out, t.lse, t.q, t.k, t.v);
      const AttentionReference ref = attention_reference(t.q.values(), t.k.values(), t.v.values(), {}, s);
      CHECK(norm_relative_error(t.out.values(), ref.out) < tolerance(dtype));
      CHECK(norm_relative_error(t.lse.values(), ref.lse) < tolerance(dtype));
    }
}

TEST_CASE("attention gives the same results with tiles that cut rows and keys unevenly", "[ops]") {
  const AttentionShape s{2, 13, 4, 2, 8};
  const ops::cpu::AttentionTiles tilings[] = {{1, 1}, {3, 2}, {2, 5}, {4, 4}, {5, 3}, {16, 16}};
  for (DType dtype : kFloatTypes)
    for (ops::cpu::AttentionTiles tiles : tilings) {
      INFO("dtype " << dtype_name(dtype) << " q_block " << tiles.q_block << " k_block " << tiles.k_block);
      AttentionTensors t(dtype, s, 110);
      ops::cpu::attention_forward(t.out, t.lse, t.q, t.k, t.v, tiles);
      const AttentionReference ref =
          attention_reference(t.q.values(), t.k.values(), t.v.values(), t.dout.values(), s);
      CHECK(norm_relative_error(t.out.values(), ref.out) < tolerance(dtype));
      CHECK(norm_relative_error(t.lse.values(), ref.lse) < tolerance(dtype));
      TestTensor dq = randn(dtype, {2, 13, 4, 8}, 1), dk = randn(dtype, {2, 13, 2, 8}, 2),
                 dv = randn(dtype, {2, 13, 2, 8}, 3);  // garbage: overwritten
      ops::cpu::attention_backward(dq, dk, dv, t.dout, t.q, t.k, t.v, t.out, t.lse, tiles);
      CHECK(norm_relative_error(dq.values(), ref.dq) < tolerance(dtype));
      CHECK(norm_relative_error(dk.values(), ref.dk) < tolerance(dtype));
      CHECK(norm_relative_error(dv.values(), ref.dv) < tolerance(dtype));
    }
}

TEST_CASE("attention_backward matches the explicit backward and overwrites dq, dk, dv", "[ops]") {
  const AttentionShape shapes[] = {{2, 7, 4, 4, 8}, {2, 7, 4, 2, 8}, {1, 7, 4, 1, 8}, {1, 7, 1, 1, 16},
                                   {1, 130, 4, 2, 16}};
  for (DType dtype : kFloatTypes)
    for (AttentionShape s : shapes) {
      INFO("dtype " << dtype_name(dtype) << " " << describe(s));
      AttentionTensors t(dtype, s, 120);
      ops::attention_forward(t.out, t.lse, t.q, t.k, t.v);
      const AttentionReference ref =
          attention_reference(t.q.values(), t.k.values(), t.v.values(), t.dout.values(), s);
      TestTensor dq = randn(dtype, {s.batch, s.seq, s.heads, s.hd}, 4);
      TestTensor dk = randn(dtype, {s.batch, s.seq, s.kv_heads, s.hd}, 5);
      TestTensor dv = randn(dtype, {s.batch, s.seq, s.kv_heads, s.hd}, 6);
      for (int call = 0; call < 2; ++call) {  // a second call gives the same, not twice the gradient
        ops::attention_backward(dq, dk, dv, t.dout, t.q, t.k, t.v, t.out, t.lse);
        CHECK(norm_relative_error(dq.values(), ref.dq) < tolerance(dtype));
        CHECK(norm_relative_error(dk.values(), ref.dk) < tolerance(dtype));
        CHECK(norm_relative_error(dv.values(), ref.dv) < tolerance(dtype));
      }
    }
}

TEST_CASE("attention_backward matches finite differences for q, k and v (GQA ratios 1, 2, 4)", "[ops]") {
  const AttentionShape shapes[] = {{2, 7, 4, 4, 4}, {2, 7, 4, 2, 4}, {1, 7, 4, 1, 4}, {1, 7, 1, 1, 6}};
  for (AttentionShape s : shapes) {
    INFO(describe(s));
    AttentionTensors t(DType::F64, s, 130);
    const TestTensor& R = t.dout;
    auto objective = [&] {
      ops::attention_forward(t.out, t.lse, t.q, t.k, t.v);
      return dot(t.out, R);
    };
    objective();
    TestTensor dq = TestTensor::zeros_like(t.q), dk = TestTensor::zeros_like(t.k), dv = TestTensor::zeros_like(t.v);
    ops::attention_backward(dq, dk, dv, R, t.q, t.k, t.v, t.out, t.lse);
    CHECK(norm_relative_error(dq.values(), numerical_gradient(t.q, objective)) < kGradTolerance);
    CHECK(norm_relative_error(dk.values(), numerical_gradient(t.k, objective)) < kGradTolerance);
    CHECK(norm_relative_error(dv.values(), numerical_gradient(t.v, objective)) < kGradTolerance);
  }
}

TEST_CASE("attention forward and backward are bit-identical from run to run", "[ops]") {
  const AttentionShape s{2, 150, 4, 2, 32};
  AttentionTensors t(DType::F32, s, 140);
  ops::attention_forward(t.out, t.lse, t.q, t.k, t.v);
  const TestTensor out1 = t.out, lse1 = t.lse;
  TestTensor dq = TestTensor::zeros_like(t.q), dk = TestTensor::zeros_like(t.k), dv = TestTensor::zeros_like(t.v);
  ops::attention_backward(dq, dk, dv, t.dout, t.q, t.k, t.v, t.out, t.lse);
  const TestTensor dq1 = dq, dk1 = dk, dv1 = dv;
  for (int run = 0; run < 3; ++run) {
    ops::attention_forward(t.out, t.lse, t.q, t.k, t.v);
    ops::attention_backward(dq, dk, dv, t.dout, t.q, t.k, t.v, t.out, t.lse);
    CHECK(same_bits(t.out, out1));
    CHECK(same_bits(t.lse, lse1));
    CHECK(same_bits(dq, dq1));
    CHECK(same_bits(dk, dk1));
    CHECK(same_bits(dv, dv1));
  }
}

TEST_CASE("attention stays finite for large scores (the online softmax subtracts the running max)", "[ops]") {
  const AttentionShape s{1, 70, 2, 1, 8};
  AttentionTensors t(DType::F32, s, 150);
  random_fill(t.q, 151, 40.0);  // scores in the thousands: exp would overflow without the max
  random_fill(t.k, 152, 40.0);
  ops::attention_forward(t.out, t.lse, t.q, t.k, t.v);
  const AttentionReference ref = attention_reference(t.q.values(), t.k.values(), t.v.values(), {}, s);
  CHECK(norm_relative_error(t.out.values(), ref.out) < 1e-4);
  CHECK(norm_relative_error(t.lse.values(), ref.lse) < 1e-5);
}

// =====================================================================================================
// SwiGLU
// =====================================================================================================

TEST_CASE("swiglu_forward matches silu(gate) times up, with silu(g) = g sigmoid(g)", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 9, F = 3001;  // not a multiple of the chunk size
    TestTensor gate = randn(dtype, {N, F}, 160, 3.0), up = randn(dtype, {N, F}, 161), out = randn(dtype, {N, F}, 162);
    ops::swiglu_forward(out, gate, up);
    const std::vector<double> g = gate.values(), u = up.values();
    std::vector<double> expect(N * F);
    for (int64_t i = 0; i < N * F; ++i) expect[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    CHECK(norm_relative_error(out.values(), expect) < tolerance(dtype));
  }
  // Extreme gates: silu(-100) is -0 (not NaN), silu(100) is 100.
  TestTensor gate = TestTensor::from_values(DType::F32, {2}, {-100.0, 100.0}), up = TestTensor::from_values(DType::F32, {2}, {1.0, 1.0});
  TestTensor out(DType::F32, {2});
  ops::swiglu_forward(out, gate, up);
  CHECK(std::abs(out[0]) < 1e-30);
  CHECK(out[1] == 100.0);
}

TEST_CASE("swiglu_backward matches the naive backward and finite differences, and overwrites", "[ops]") {
  for (DType dtype : kFloatTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 7, F = 2100;
    TestTensor gate = randn(dtype, {N, F}, 170, 3.0), up = randn(dtype, {N, F}, 171), dout = randn(dtype, {N, F}, 172);
    TestTensor dgate = randn(dtype, {N, F}, 173), dup = randn(dtype, {N, F}, 174);  // garbage: overwritten
    ops::swiglu_backward(dgate, dup, dout, gate, up);
    const std::vector<double> g = gate.values(), u = up.values(), d = dout.values();
    std::vector<double> expect_dgate(N * F), expect_dup(N * F);
    for (int64_t i = 0; i < N * F; ++i) {
      const double s = 1.0 / (1.0 + std::exp(-g[i]));
      expect_dgate[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
      expect_dup[i] = d[i] * g[i] * s;
    }
    CHECK(norm_relative_error(dgate.values(), expect_dgate) < tolerance(dtype));
    CHECK(norm_relative_error(dup.values(), expect_dup) < tolerance(dtype));
  }
  const int64_t N = 4, F = 9;
  TestTensor gate = randn(DType::F64, {N, F}, 180, 2.0), up = randn(DType::F64, {N, F}, 181), R = randn(DType::F64, {N, F}, 182);
  check_input_gradients(gate, up, R, ops::swiglu_forward, ops::swiglu_backward);
}

// =====================================================================================================
// classifier
// =====================================================================================================

TEST_CASE("classifier losses and gradients match full-logit cross-entropy, N not a multiple of the block", "[ops]") {
  struct Case {
    int64_t n, d, vocab, block_rows;  // block_rows 0: through ops:: with the default block
  };
  const Case cases[] = {{11, 8, 17, 4}, {11, 8, 17, 1}, {5, 8, 17, 64}, {300, 16, 50, 0}};
  for (DType dtype : kFloatTypes)
    for (Case c : cases) {
      INFO("dtype " << dtype_name(dtype) << " N=" << c.n << " d=" << c.d << " V=" << c.vocab << " block "
                    << c.block_rows);
      TestTensor x = randn(dtype, {c.n, c.d}, 200), W = randn(dtype, {c.vocab, c.d}, 201, 0.5);
      TestTensor targets = tokens({c.n}, c.vocab, 202);
      TestTensor losses = randn(dtype, {c.n}, 203), dx = randn(dtype, {c.n, c.d}, 204);
      TestTensor dW = randn(dtype, {c.vocab, c.d}, 205);
      const std::vector<double> dW0 = dW.values();
      const double grad_scale = 1.0 / static_cast<double>(c.n);
      if (c.block_rows == 0)
        ops::classifier_forward_backward(losses, dx, dW, x, W, targets, grad_scale);
      else
        ops::cpu::classifier_forward_backward(losses, dx, dW, x, W, targets, grad_scale, c.block_rows);
      const ClassifierReference ref =
          classifier_reference(x.values(), W.values(), targets.values(), c.n, c.d, c.vocab, grad_scale);
      CHECK(norm_relative_error(losses.values(), ref.losses) < tolerance(dtype));
      CHECK(norm_relative_error(dx.values(), ref.dx) < tolerance(dtype));
      CHECK(norm_relative_error(dW.values(), added(dW0, ref.dW)) < tolerance(dtype));
    }
}

TEST_CASE("classifier gradients match finite differences of grad_scale times sum(losses) for x and W", "[ops]") {
  const int64_t N = 5, d = 6, V = 11;
  const double grad_scale = 0.7;
  TestTensor x = randn(DType::F64, {N, d}, 210), W = randn(DType::F64, {V, d}, 211), targets = tokens({N}, V, 212);
  TestTensor losses(DType::F64, {N});
  auto objective = [&] {
    ops::classifier_forward_backward(losses, Tensor(), Tensor(), x, W, targets, 0.0);
    double sum = 0;
    for (double l : losses.values()) sum += l;
    return grad_scale * sum;
  };
  TestTensor dx(DType::F64, {N, d}), dW(DType::F64, {V, d});
  ops::cpu::classifier_forward_backward(losses, dx, dW, x, W, targets, grad_scale, /*block_rows=*/2);
  CHECK(norm_relative_error(dx.values(), numerical_gradient(x, objective)) < kGradTolerance);
  CHECK(norm_relative_error(dW.values(), numerical_gradient(W, objective)) < kGradTolerance);
}

TEST_CASE("classifier: dW accumulates across calls, dx is overwritten, a forward-only call writes only losses", "[ops]") {
  const int64_t N = 9, d = 8, V = 13;
  TestTensor x = randn(DType::F64, {N, d}, 220), W = randn(DType::F64, {V, d}, 221), targets = tokens({N}, V, 222);
  const ClassifierReference ref = classifier_reference(x.values(), W.values(), targets.values(), N, d, V, 0.5);
  TestTensor losses(DType::F64, {N}), dx(DType::F64, {N, d}), dW(DType::F64, {V, d});
  ops::classifier_forward_backward(losses, dx, dW, x, W, targets, 0.5);
  ops::classifier_forward_backward(losses, dx, dW, x, W, targets, 0.5);
  CHECK(norm_relative_error(dx.values(), ref.dx) < 1e-12);
  CHECK(norm_relative_error(dW.values(), scaled(ref.dW, 2)) < 1e-12);
  CHECK(norm_relative_error(losses.values(), ref.losses) < 1e-12);

  TestTensor losses2(DType::F64, {N});
  const TestTensor dx_before = dx, dW_before = dW;
  ops::classifier_forward_backward(losses2, Tensor(), Tensor(), x, W, targets, 0.5);
  CHECK(same_bits(losses2, losses));
  CHECK(same_bits(dx, dx_before));
  CHECK(same_bits(dW, dW_before));

  // Without dW (a frozen output layer), dx is still computed.
  TestTensor dx_only(DType::F64, {N, d});
  ops::classifier_forward_backward(losses2, dx_only, Tensor(), x, W, targets, 0.5);
  CHECK(norm_relative_error(dx_only.values(), ref.dx) < 1e-12);
}

TEST_CASE("classifier stays finite with large logits", "[ops]") {
  const int64_t N = 4, d = 8, V = 10;
  TestTensor x = randn(DType::F32, {N, d}, 230, 30.0), W = randn(DType::F32, {V, d}, 231, 30.0);
  TestTensor targets = tokens({N}, V, 232), losses(DType::F32, {N}), dx(DType::F32, {N, d}), dW(DType::F32, {V, d});
  ops::classifier_forward_backward(losses, dx, dW, x, W, targets, 1.0);
  const ClassifierReference ref = classifier_reference(x.values(), W.values(), targets.values(), N, d, V, 1.0);
  for (int64_t i = 0; i < N; ++i) CHECK(std::isfinite(losses[i]));
  CHECK(norm_relative_error(losses.values(), ref.losses) < 1e-5);
  CHECK(norm_relative_error(dx.values(), ref.dx) < 1e-5);
}

// =====================================================================================================
// errors
// =====================================================================================================

TEST_CASE("ops name the op and the shapes on a shape mismatch", "[ops]") {
  TestTensor x(DType::F32, {4, 8}), w(DType::F32, {5, 7}), out(DType::F32, {4, 5});
  REQUIRE_THROWS_AS(ops::matmul_forward(out, x, w), InternalError);
  REQUIRE_THROWS_WITH(ops::matmul_forward(out, x, w),
                      Contains("matmul_forward") && Contains("(4, 8)") && Contains("(5, 7)"));

  TestTensor q(DType::F32, {1, 7, 3, 4}), k(DType::F32, {1, 7, 2, 4}), lse(DType::F32, {1, 3, 7});
  TestTensor o(DType::F32, {1, 7, 3, 4});
  REQUIRE_THROWS_WITH(ops::attention_forward(o, lse, q, k, k),  // 3 heads do not share 2 kv heads
                      Contains("attention_forward") && Contains("(1, 7, 3, 4)") && Contains("(1, 7, 2, 4)"));

  TestTensor rx(DType::F32, {4, 8}), rw(DType::F32, {6}), rstd(DType::F32, {4});
  REQUIRE_THROWS_WITH(ops::rmsnorm_forward(rx, rstd, rx, rw, 1e-5), Contains("rmsnorm_forward") && Contains("(6)"));

  TestTensor losses(DType::F32, {3}), targets(DType::I32, {4}), W(DType::F32, {10, 8});
  REQUIRE_THROWS_WITH(ops::classifier_forward_backward(losses, Tensor(), Tensor(), x, W, targets, 1.0),
                      Contains("classifier_forward_backward") && Contains("(3)"));

  TestTensor odd(DType::F32, {1, 2, 1, 5});
  REQUIRE_THROWS_WITH(ops::rope_forward(odd, 1e4), Contains("rope_forward") && Contains("(1, 2, 1, 5)"));

  TestTensor a(DType::F32, {3}), b(DType::F64, {3});
  REQUIRE_THROWS_WITH(ops::add_inplace(a, b), Contains("add_inplace") && Contains("f32") && Contains("f64"));
  TestTensor bad_targets = TestTensor::from_values(DType::I32, {4}, {0, 1, 10, 2});
  TestTensor losses4(DType::F32, {4});
  REQUIRE_THROWS_WITH(ops::classifier_forward_backward(losses4, Tensor(), Tensor(), x, W, bad_targets, 1.0),
                      Contains("targets[2] = 10"));
}

TEST_CASE("ops refuse a CUDA tensor without the CUDA backend, and tensors on two devices", "[ops]") {
  TestTensor x(DType::F32, {4, 8}), w(DType::F32, {5, 8}), out(DType::F32, {4, 5});
  Tensor on_gpu = out;  // a view that claims the GPU: never dereferenced here
  on_gpu.device = Device::CUDA;
  if (!built_with_cuda()) {
    REQUIRE_THROWS_WITH(ops::matmul_forward(on_gpu, x, w), Contains("CUDA backend is not part of this build"));
    REQUIRE_THROWS_WITH(ops::fill_zero(on_gpu), Contains("CUDA backend is not part of this build"));
  } else {
    REQUIRE_THROWS_WITH(ops::matmul_forward(on_gpu, x, w),
                        Contains("matmul_forward") && Contains("different devices") && Contains("cuda"));
  }
}

TEST_CASE("ops refuse dtypes the CPU backend does not compute in", "[ops]") {
  TestTensor x(DType::BF16, {4, 8}), w(DType::BF16, {5, 8}), out(DType::BF16, {4, 5});
  REQUIRE_THROWS_WITH(ops::matmul_forward(out, x, w), Contains("matmul_forward") && Contains("bf16"));
}
