// The whole Llama model: parameter layout and names, finite-difference gradient checks of every
// parameter in double precision (tied and untied embeddings), gradient accumulation, and the loss
// of an untrained model.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <utility>

#include "kernels/arena.h"
#include "model/llama.h"
#include "test_util.h"
#include "tiny_models.h"

using namespace l3c;

namespace {

ModelConfig tiny_model(bool tied) {
  ModelConfig m = test::tiny_model_config(2);
  m.tie_embeddings = tied;
  return m;
}

// Random weights with norm gains away from 1, so that every parameter matters.
void randomise(const Llama& model, FlatBuffer& params) {
  test::init_params_with_gains(model.registry(), params, 7, 0.2, 1.7);
}

void check_every_gradient(bool tied) {
  const Llama model(tiny_model(tied));
  test::ModelGradCheck check(model);  // the summed loss, so the analytic gradient uses grad_scale = 1
  const double loss = check.backward();
  REQUIRE(std::isfinite(loss));

  for (const ParamInfo& p : model.registry().params()) {
    const std::vector<double> numeric = check.numeric(p), analytic = check.analytic(p);
    INFO(p.name << ": analytic norm " << test::norm2(analytic) << ", numeric norm " << test::norm2(numeric));
    CHECK(test::norm2(numeric) > 1e-6);
    CHECK(test::norm_relative_error(analytic, numeric) < 1e-6);
  }
}

}  // namespace

TEST_CASE("parameters carry the Hugging Face Llama names and shapes", "[model]") {
  const Llama untied(tiny_model(false));
  const auto& r = untied.registry();
  CHECK(r.find("model.embed_tokens.weight").shape == std::vector<int64_t>{13, 8});
  CHECK(r.find("model.layers.1.self_attn.k_proj.weight").shape == std::vector<int64_t>{4, 8});
  CHECK(r.find("model.layers.0.mlp.down_proj.weight").shape == std::vector<int64_t>{8, 12});
  CHECK(r.find("lm_head.weight").shape == std::vector<int64_t>{13, 8});
  CHECK_FALSE(r.find("model.norm.weight").decay);
  CHECK(r.find("model.layers.0.mlp.up_proj.weight").decay);
  const Llama tied(tiny_model(true));
  CHECK_FALSE(tied.registry().contains("lm_head.weight"));
  CHECK(tied.registry().total() == r.total() - 13 * 8);
}

TEST_CASE("output projections start with std scaled by 1/sqrt(2 n_layers)", "[model]") {
  ModelConfig m = test::model_of_sizes(13, 64, 8, 4, 2, 256);
  m.init_std = 0.02;
  const Llama model(m);
  FlatBuffer params(model.registry().total(), DType::F64);
  init_params(model.registry(), params, 3);
  auto std_of = [&](const std::string& name) {
    const auto v = test::to_double_vector(params.view(model.registry().find(name)));
    double s = 0;
    for (double x : v) s += x * x;
    return std::sqrt(s / static_cast<double>(v.size()));
  };
  CHECK(std_of("model.layers.0.mlp.up_proj.weight") == Approx(0.02).epsilon(0.03));
  CHECK(std_of("model.layers.0.mlp.down_proj.weight") == Approx(0.02 / 4.0).epsilon(0.03));
  CHECK(std_of("model.layers.3.self_attn.o_proj.weight") == Approx(0.02 / 4.0).epsilon(0.03));
  CHECK(test::get_value(params.view(model.registry().find("model.norm.weight")), 5) == 1.0);
}

TEST_CASE("every parameter's gradient matches finite differences (untied, f64)", "[model][gradcheck]") {
  check_every_gradient(false);
}

TEST_CASE("every parameter's gradient matches finite differences (tied embeddings, f64)", "[model][gradcheck]") {
  check_every_gradient(true);
}

TEST_CASE("gradients accumulate over micro-batches and the scale is applied", "[model]") {
  const Llama model(tiny_model(false));
  const int64_t n = model.registry().total();
  FlatBuffer params(n, DType::F64), once(n, DType::F64), twice(n, DType::F64);
  randomise(model, params);
  test::TestTensor tokens(DType::I32, {2, 5}), targets(DType::I32, {2, 5});
  test::random_tokens(tokens, 13, 1);
  test::random_tokens(targets, 13, 2);
  Arena arena(model.activation_bytes(2, 5, DType::F64, true), "test");
  model.forward_backward(params, &once, tokens, targets, 1.0, arena).cross_entropy;
  arena.reset();
  model.forward_backward(params, &twice, tokens, targets, 0.5, arena).cross_entropy;
  arena.reset();
  model.forward_backward(params, &twice, tokens, targets, 0.5, arena).cross_entropy;
  CHECK(test::norm_relative_error(test::to_double_vector(twice.all()), test::to_double_vector(once.all())) < 1e-12);
}

TEST_CASE("an untrained model predicts close to uniform: loss near log(V)", "[model]") {
  ModelConfig m = tiny_model(false);
  m.init_std = 0.02;
  const Llama model(m);
  FlatBuffer params(model.registry().total(), DType::F32);
  init_params(model.registry(), params, 5);
  test::TestTensor tokens(DType::I32, {2, 5}), targets(DType::I32, {2, 5});
  test::random_tokens(tokens, 13, 3);
  test::random_tokens(targets, 13, 4);
  Arena arena(model.activation_bytes(2, 5, DType::F32, false), "test");
  const double loss = model.forward_backward(params, nullptr, tokens, targets, 0.0, arena).cross_entropy;
  CHECK(loss == Approx(std::log(13.0)).epsilon(0.02));
}

TEST_CASE("the arena estimate is exactly what a training step allocates", "[model]") {
  const Llama model(tiny_model(false));
  FlatBuffer params(model.registry().total(), DType::F32), grads(model.registry().total(), DType::F32);
  init_params(model.registry(), params, 5);
  test::TestTensor tokens(DType::I32, {3, 7}), targets(DType::I32, {3, 7});
  test::random_tokens(tokens, 13, 3);
  test::random_tokens(targets, 13, 4);
  const size_t estimate = model.activation_bytes(3, 7, DType::F32, true);
  Arena arena(estimate, "test");
  model.forward_backward(params, &grads, tokens, targets, 1.0, arena).cross_entropy;
  CHECK(arena.peak() == estimate);
}

TEST_CASE("recomputing SwiGLU and attention in the backward gives the same bits with less activation memory",
          "[model]") {
  const Llama model(tiny_model(false));
  FlatBuffer params(model.registry().total(), DType::F32);
  randomise(model, params);
  const int64_t B = 2, T = 7;
  test::TestTensor tokens(DType::I32, {B, T}), targets(DType::I32, {B, T});
  test::random_tokens(tokens, 13, 21);
  test::random_tokens(targets, 13, 22);
  auto run = [&](RecomputeChoice setting, FlatBuffer& grads) {
    Llama m = model;
    m.set_recompute(Recompute::from(setting));
    Arena arena(m.activation_bytes(B, T, DType::F32, true), "test");
    const double loss = m.forward_backward(params, &grads, tokens, targets, 1.0 / (B * T), arena).cross_entropy;
    CHECK(arena.peak() == m.activation_bytes(B, T, DType::F32, true));
    return std::pair<double, size_t>(loss, arena.peak());
  };
  FlatBuffer kept(model.registry().total(), DType::F32);
  const auto [loss, bytes] = run(RecomputeChoice::None, kept);
  for (const RecomputeChoice setting : {RecomputeChoice::Swiglu, RecomputeChoice::Attention, RecomputeChoice::All}) {
    INFO("recompute " << choice_name(setting));
    FlatBuffer grads(model.registry().total(), DType::F32);
    const auto [loss_r, bytes_r] = run(setting, grads);
    CHECK(loss_r == loss);
    CHECK(test::same_bits(grads.all(), kept.all()));
    CHECK(bytes_r < bytes);
  }
}
