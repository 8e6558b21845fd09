// AdamW (PyTorch semantics), gradient clipping and the learning-rate schedules.
#include <catch2/catch.hpp>

#include <cmath>

#include "optim/adamw.h"
#include "optim/schedule.h"
#include "test_util.h"

using namespace l3c;

namespace {
// A learning-rate schedule of `steps` steps, the first `warmup` of them warming up to `lr`, down to `min_lr`.
TrainConfig schedule_of(Schedule schedule, int64_t steps, int64_t warmup, double lr, double min_lr) {
  return {.steps = steps, .lr = lr, .min_lr = min_lr, .warmup_steps = warmup, .schedule = schedule, .trainable = {}};
}

// One weight after `steps` AdamW steps of the same gradient g, written out from MODEL.md: decoupled weight decay
// wd, beta1 0.9, beta2 0.95, eps 1e-8, bias-corrected moments.
double adamw_reference(double w, double g, double lr, double wd, int steps) {
  double m = 0, v = 0;
  for (int t = 1; t <= steps; ++t) {
    w -= lr * wd * w;
    m = 0.9 * m + 0.1 * g;
    v = 0.95 * v + 0.05 * g * g;
    w -= lr * (m / (1 - std::pow(0.9, t))) / (std::sqrt(v / (1 - std::pow(0.95, t))) + 1e-8);
  }
  return w;
}
}  // namespace

TEST_CASE("AdamW matches the PyTorch update, with decay only on 2-D weights", "[optim]") {
  ParamRegistry r;
  r.add("w", {2, 2}, InitKind::Normal, 1.0, "ffn");
  r.add("g", {3}, InitKind::Ones, 0.0, "norm");
  FlatBuffer params(r.total(), DType::F64), grads(r.total(), DType::F64);
  const std::vector<double> w0 = {0.5, -1.0, 2.0, 0.1, 1.0, 1.5, -0.5};
  const std::vector<double> g = {0.1, -0.2, 0.3, 0.0, 1.0, -2.0, 0.5};
  test::set_values(params.all(), w0);
  test::set_values(grads.all(), g);
  const AdamWSettings s{0.9, 0.95, 1e-8, 0.1};
  AdamW adam(r, DType::F64, s);
  const double lr = 0.01;
  adam.step(params, grads, lr);
  adam.step(params, grads, lr);
  // The same two steps written out from MODEL.md.
  for (size_t i = 0; i < w0.size(); ++i) {
    const double wd = i < 4 ? 0.1 : 0.0;
    const double w = adamw_reference(w0[i], g[i], lr, wd, 2);
    INFO("element " << i);
    CHECK(test::get_value(params.all(), static_cast<int64_t>(i)) == Approx(w).epsilon(1e-12));
  }
  CHECK(adam.steps_taken() == 2);
}

TEST_CASE("L3 tables train with their own learning-rate factor and weight decay, as a PyTorch parameter group",
          "[optim]") {
  ParamRegistry r;
  r.add("w", {2, 2}, InitKind::Normal, 1.0, "ffn");
  r.add("model.l3.0.w_k", {3, 2}, InitKind::Normal, 1.0, "l3_table");
  r.add("g", {2}, InitKind::Ones, 0.0, "norm");
  const std::vector<double> w0 = {0.5, -1.0, 2.0, 0.1, 1.0, 1.5, -0.5, 0.25, 0.0, -2.0, 1.0, 1.0};
  const std::vector<double> g = {0.1, -0.2, 0.3, 0.0, 1.0, -2.0, 0.5, 0.0, 0.0, 0.7, -0.1, 0.2};
  for (const double table_decay : {-1.0, 0.0, 0.3}) {
    FlatBuffer params(r.total(), DType::F64), grads(r.total(), DType::F64);
    test::set_values(params.all(), w0);
    test::set_values(grads.all(), g);
    AdamWSettings s{0.9, 0.95, 1e-8, 0.1};
    s.table_lr_scale = 4.0;
    s.table_weight_decay = table_decay;
    AdamW adam(r, DType::F64, s);
    const double lr = 0.01;
    adam.step(params, grads, lr);
    adam.step(params, grads, lr);
    for (size_t i = 0; i < w0.size(); ++i) {
      const bool table = i >= 4 && i < 10;
      const double step_lr = table ? 4.0 * lr : lr;
      const double wd = i >= 10 ? 0.0 : table && table_decay >= 0 ? table_decay : 0.1;
      const double w = adamw_reference(w0[i], g[i], step_lr, wd, 2);
      INFO("table weight decay " << table_decay << ", element " << i);
      CHECK(test::get_value(params.all(), static_cast<int64_t>(i)) == Approx(w).epsilon(1e-12));
    }
  }
}

TEST_CASE("clipping scales gradients to the max norm, as clip_grad_norm_ does", "[optim]") {
  ParamRegistry r;
  r.add("w", {2, 2}, InitKind::Normal, 1.0, "ffn");
  FlatBuffer grads(r.total(), DType::F32);
  test::set_values(grads.all(), {3.0, 0.0, 0.0, 4.0});
  const double norm = global_grad_norm(grads);
  CHECK(norm == Approx(5.0));
  CHECK(clip_grad_norm(grads, norm, 10.0) == 1.0);  // below the max: untouched
  CHECK(test::get_value(grads.all(), 0) == 3.0);
  const double factor = clip_grad_norm(grads, norm, 1.0);
  CHECK(factor == Approx(1.0 / (5.0 + 1e-6)));
  CHECK(global_grad_norm(grads) == Approx(1.0).epsilon(1e-5));
  CHECK(clip_grad_norm(grads, 1e9, 0.0) == 1.0);  // 0 disables clipping
}

TEST_CASE("cosine schedule: linear warmup, then cosine from lr to min_lr at the last step", "[optim]") {
  const TrainConfig t = schedule_of(Schedule::Cosine, 110, 10, 1.0, 0.1);
  CHECK(learning_rate(t, 0) == Approx(0.1));
  CHECK(learning_rate(t, 9) == Approx(1.0));
  CHECK(learning_rate(t, 10) == Approx(1.0));
  CHECK(learning_rate(t, 109) == Approx(0.1));
  const double mid = learning_rate(t, 10 + 99 / 2);
  CHECK(mid == Approx(0.1 + 0.45 * (1 + std::cos(M_PI * 49.0 / 99.0))));
  for (int64_t s = 11; s < 110; ++s) CHECK(learning_rate(t, s) <= learning_rate(t, s - 1));
}

TEST_CASE("warmup-stable-decay schedule: flat, then a linear decay over the last fraction", "[optim]") {
  TrainConfig t = schedule_of(Schedule::Wsd, 100, 10, 1.0, 0.0);
  t.decay_fraction = 0.2;
  CHECK(learning_rate(t, 4) == Approx(0.5));
  CHECK(learning_rate(t, 50) == 1.0);
  CHECK(learning_rate(t, 79) == 1.0);
  CHECK(learning_rate(t, 80) == 1.0);
  CHECK(learning_rate(t, 99) == Approx(0.0).margin(1e-12));
  CHECK(learning_rate(t, 90) < 1.0);
}

TEST_CASE("constant schedule keeps lr after warmup", "[optim]") {
  const TrainConfig t = schedule_of(Schedule::Constant, 50, 0, 0.3, 0.0);
  CHECK(learning_rate(t, 0) == 0.3);
  CHECK(learning_rate(t, 49) == 0.3);
}
