// AdamW (PyTorch semantics), gradient clipping and the learning-rate schedules.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "kernels/ops.h"
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

namespace {
// The update gate of a step whose loss sum is `loss` and gradient sum of squares `squares`: {factor, open}.
std::vector<double> gate_of(double loss, double squares, double max_norm) {
  FlatBuffer sums(2, DType::F64), gate(2, DType::F64);
  test::set_values(sums.all(), {loss, squares});
  ops::update_gate(gate.all(), sums.all().rows(0, 1), sums.all().rows(1, 2), max_norm);
  return {test::get_value(gate.all(), 0), test::get_value(gate.all(), 1)};
}
}  // namespace

TEST_CASE("the update gate clips to the max norm as clip_grad_norm_ does, and closes on a non-finite step",
          "[optim]") {
  CHECK(gate_of(2.0, 25.0, 10.0) == std::vector<double>{1.0, 1.0});  // norm 5, below the max: not scaled
  CHECK(gate_of(2.0, 25.0, 1.0) == std::vector<double>{1.0 / (5.0 + 1e-6), 1.0});
  CHECK(gate_of(2.0, 1e18, 0.0) == std::vector<double>{1.0, 1.0});  // 0 disables clipping
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(gate_of(nan, 25.0, 1.0)[1] == 0.0);
  CHECK(gate_of(inf, 25.0, 1.0)[1] == 0.0);
  CHECK(gate_of(2.0, inf, 1.0)[1] == 0.0);
  CHECK(gate_of(2.0, nan, 0.0)[1] == 0.0);
  FlatBuffer sums(2, DType::F64), short_gate(1, DType::F64);
  const Tensor loss = sums.all().rows(0, 1), squares = sums.all().rows(1, 2);
  CHECK_THROWS_WITH(ops::update_gate(short_gate.all(), loss, squares, 1.0), Catch::Contains("must be (2) f64"));
  CHECK_THROWS_WITH(ops::update_gate(sums.all(), sums.all(), squares, 1.0), Catch::Contains("loss_sum"));
  CHECK_THROWS_WITH(ops::update_gate(sums.all(), loss, squares, -1.0), Catch::Contains("negative"));
}

TEST_CASE("AdamW through the gate: the bits of clipping the gradients first, and nothing when it is closed",
          "[optim]") {
  ParamRegistry r;
  r.add("w", {2, 3}, InitKind::Normal, 1.0, "ffn");
  r.add("g", {3}, InitKind::Ones, 0.0, "norm");
  const std::vector<double> w0 = {0.5, -1.0, 2.0, 0.1, -0.3, 0.7, 1.0, 1.5, -0.5};
  const std::vector<double> g = {3.0, -2.0, 0.3, 0.0, 1.0, -2.0, 0.5, 4.0, -1.5};
  double squares = 0.0;
  for (double x : g) squares += static_cast<double>(static_cast<float>(x) * static_cast<float>(x));
  FlatBuffer sums(2, DType::F64), gate(2, DType::F64);
  test::set_values(sums.all(), {1.5, squares});
  ops::update_gate(gate.all(), sums.all().rows(0, 1), sums.all().rows(1, 2), 1.0);
  const double clip = test::get_value(gate.all(), 0);
  REQUIRE(clip < 1.0);
  const AdamWSettings s{0.9, 0.95, 1e-8, 0.1};
  // Through the gate, against scaling the gradients in place first (the order PyTorch's clip_grad_norm_ and step
  // take): the same bits in f32.
  FlatBuffer gated(r.total(), DType::F32), clipped(r.total(), DType::F32), grads(r.total(), DType::F32),
      scaled(r.total(), DType::F32);
  for (FlatBuffer* p : {&gated, &clipped}) test::set_values(p->all(), w0);
  test::set_values(grads.all(), g);
  test::set_values(scaled.all(), g);
  ops::scale_inplace(scaled.all(), clip);
  AdamW through_gate(r, DType::F32, s), after_scaling(r, DType::F32, s);
  for (int step = 0; step < 2; ++step) {
    through_gate.step(gated, grads, 0.01, nullptr, gate.all());
    after_scaling.step(clipped, scaled, 0.01);
  }
  CHECK(test::to_double_vector(gated.all()) == test::to_double_vector(clipped.all()));
  CHECK(test::to_double_vector(through_gate.first_moment().all()) == test::to_double_vector(after_scaling.first_moment().all()));
  CHECK(test::to_double_vector(through_gate.second_moment().all()) == test::to_double_vector(after_scaling.second_moment().all()));

  // A closed gate: weights and moments as they were; undo_step takes the count back.
  test::set_values(sums.all(), {std::numeric_limits<double>::quiet_NaN(), squares});
  ops::update_gate(gate.all(), sums.all().rows(0, 1), sums.all().rows(1, 2), 1.0);
  const std::vector<double> weights = test::to_double_vector(gated.all()), moments = test::to_double_vector(through_gate.first_moment().all());
  through_gate.step(gated, grads, 0.01, nullptr, gate.all());
  CHECK(test::to_double_vector(gated.all()) == weights);
  CHECK(test::to_double_vector(through_gate.first_moment().all()) == moments);
  CHECK(through_gate.steps_taken() == 3);
  through_gate.undo_step();
  CHECK(through_gate.steps_taken() == 2);
}

TEST_CASE("adamw_update reads the step's constants from a tensor, and checks it", "[optim]") {
  ops::AdamWStep step{0.01, 0.9, 0.95, 1e-8, 0.1, 1.0 - 0.9 * 0.9, 1.0 - 0.95 * 0.95};
  // Computed in double and rounded once to the moments' dtype.
  FlatBuffer constants(ops::kAdamWConstants, DType::F64), narrow(ops::kAdamWConstants, DType::F32);
  ops::write_adamw_constants(constants.all(), step);
  ops::write_adamw_constants(narrow.all(), step);
  const std::vector<double> expected = {0.9, 0.95, 0.01 / step.bias1, 1.0 / std::sqrt(step.bias2), 1e-8,
                                        1.0 - 0.01 * 0.1};
  CHECK(test::to_double_vector(constants.all()) == expected);
  for (int64_t i = 0; i < ops::kAdamWConstants; ++i)
    CHECK(test::get_value(narrow.all(), i) == static_cast<double>(static_cast<float>(expected[i])));

  FlatBuffer w(4, DType::F64), g(4, DType::F64), m(4, DType::F64), v(4, DType::F64), short_constants(5, DType::F64);
  CHECK_NOTHROW(ops::adamw_update(w.all(), g.all(), m.all(), v.all(), Tensor(), constants.all()));
  CHECK_THROWS_WITH(ops::adamw_update(w.all(), g.all(), m.all(), v.all(), Tensor(), narrow.all()),
                    Catch::Contains("constants (6) f32 must be the step's (6) AdamWConstants in the moments' dtype (f64)"));
  CHECK_THROWS_WITH(ops::adamw_update(w.all(), g.all(), m.all(), v.all(), Tensor(), short_constants.all()),
                    Catch::Contains("constants (5) f64"));
  CHECK_THROWS_WITH(ops::adamw_update(w.all(), g.all(), m.all(), v.all(), Tensor(), Tensor()),
                    Catch::Contains("ops::adamw_update: constants"));
  CHECK_THROWS_WITH(ops::write_adamw_constants(short_constants.all(), step),
                    Catch::Contains("must be (6) f32 or f64 host memory"));
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
