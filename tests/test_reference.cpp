// The whole model against the independent PyTorch reference (tests/golden, made by
// scripts/make_golden.py): logits, loss, every gradient, and 10 AdamW training steps with clipping,
// for untied and tied embeddings, with L3 layers and with MoE FFNs. fp32 here vs float64 there: within
// 1e-4 relative.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "kernels/ops.h"
#include "model/llama.h"
#include "runtime/model_io.h"
#include "train/trainer.h"
#include "golden_config.h"
#include "test_util.h"

using namespace l3c;

namespace {

// Norm-relative error below tol, naming the tensor that differs.
void check_close(const std::string& name, const Tensor& actual, const Tensor& expected, double tol = 1e-4) {
  const auto a = test::to_double_vector(actual), e = test::to_double_vector(expected);
  REQUIRE(a.size() == e.size());
  const double error = test::norm_relative_error(a, e);
  INFO(name << ": relative error " << error << " (max abs " << test::max_abs_error(a, e) << ")");
  CHECK(error < tol);
}

double scalar(const SafetensorsFile& golden, const std::string& name, int64_t i = 0) {
  return test::get_value(golden.get(name), i);
}

// Logits, the cross-entropy (and each MoE layer's auxiliary losses), every gradient, and 10 training
// steps through the trainer's own step (clipping, AdamW, the schedule) against the golden file.
void check_against_reference(const std::string& file) {
  const SafetensorsFile golden(std::string(L3C_SOURCE_DIR) + "/tests/golden/" + file);
  const Tensor tokens = golden.get("input.tokens"), targets = golden.get("input.targets");
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  const Config config = test::golden_config(golden, B, T);
  Llama model(config.model);
  FlatBuffer params(model.registry().total(), DType::F32), grads(model.registry().total(), DType::F32);
  // Parameters and the per-layer L3 allocations (model.l3.{j}.alloc) load as from a checkpoint.
  load_model_state(golden, model, params, ExtraTensors::Ignore);

  Arena arena(model.activation_bytes(B, T, DType::F32, true), "test");
  test::TestTensor logits(DType::F32, {B * T, config.model.vocab_size});
  model.forward_logits(params, tokens, logits, arena);
  check_close("logits", logits, golden.get("expected.logits"));
  arena.reset();
  const LossReport report =
      model.forward_backward(params, &grads, tokens, targets, 1.0 / static_cast<double>(B * T), arena);
  CHECK(report.cross_entropy == Approx(scalar(golden, "expected.loss")).epsilon(1e-5));
  const bool moe = golden.contains("expected.moe.load_balance");
  REQUIRE(static_cast<int64_t>(report.moe.size()) == (moe ? golden.get("expected.moe.load_balance").numel() : 0));
  for (size_t j = 0; j < report.moe.size(); ++j) {
    INFO("MoE layer " << j);
    CHECK(report.moe[j].load_balance_loss == Approx(scalar(golden, "expected.moe.load_balance", j)).epsilon(1e-5));
    CHECK(report.moe[j].z_loss == Approx(scalar(golden, "expected.moe.z_loss", j)).epsilon(1e-5));
  }
  for (const ParamInfo& p : model.registry().params())
    check_close("gradient of " + p.name, grads.view(p), golden.get("expected.grad." + p.name));

  TrainingState state(config);  // L3 layers start with the uniform allocation, replaced below
  load_params(golden, model.registry(), state.params(), ExtraTensors::Ignore);
  for (size_t j = 0; j < model.l3_layers().size(); ++j) state.set_l3_allocation(j, model.l3_allocation(j), "golden");
  const BatchSource same_batch = [&](int64_t, Tensor x, Tensor y) {
    ops::copy(x, tokens);
    ops::copy(y, targets);
  };
  for (int64_t step = 0; step < config.train.steps; ++step) {
    const StepResult r = state.step(step, same_batch);
    INFO("step " << step);
    CHECK(r.loss == Approx(scalar(golden, "expected.train_losses", step)).epsilon(1e-4));
    if (moe) CHECK(r.aux_loss == Approx(scalar(golden, "expected.train_aux_losses", step)).epsilon(1e-4));
  }
  for (const ParamInfo& p : model.registry().params())
    check_close("weights after 10 steps: " + p.name, state.params().view(p), golden.get("expected.final." + p.name));
}

}  // namespace

TEST_CASE("logits, loss, gradients and 10 AdamW steps match the PyTorch reference (untied)", "[reference]") {
  check_against_reference("dense_tiny.safetensors");
}

TEST_CASE("logits, loss, gradients and 10 AdamW steps match the PyTorch reference (tied)", "[reference]") {
  check_against_reference("dense_tiny_tied.safetensors");
}

TEST_CASE("a model with two L3 layers matches the PyTorch reference: logits, loss, gradients, 10 AdamW steps",
          "[reference][l3]") {
  const SafetensorsFile golden(std::string(L3C_SOURCE_DIR) + "/tests/golden/l3_tiny.safetensors");
  // each layer has its own allocation, from 1 row to k
  REQUIRE(test::to_double_vector(golden.get("model.l3.0.alloc")) != test::to_double_vector(golden.get("model.l3.1.alloc")));
  const std::vector<double> counts = test::to_double_vector(golden.get("model.l3.0.alloc"));
  CHECK(*std::min_element(counts.begin(), counts.end()) == 1);
  CHECK(*std::max_element(counts.begin(), counts.end()) == 4);
  check_against_reference("l3_tiny.safetensors");
}

TEST_CASE("a model with MoE FFNs matches the PyTorch reference: logits, each loss term, gradients, 10 AdamW steps",
          "[reference][moe]") {
  check_against_reference("moe_tiny.safetensors");
}
