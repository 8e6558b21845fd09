// The whole model against the independent PyTorch reference (tests/golden, made by
// scripts/make_golden.py): logits, loss, every gradient, and 10 AdamW training steps with clipping,
// for untied and tied embeddings. fp32 here vs float64 there: within 1e-4 relative.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "model/llama.h"
#include "train/model_io.h"
#include "train/safetensors.h"
#include "kernels/ops.h"
#include "train/trainer.h"
#include "test_util.h"

using namespace l3c;

namespace {

Config golden_config(const SafetensorsFile& golden, int64_t B, int64_t T) {
  const auto meta = nlohmann::json::parse(golden.metadata().at("config"));
  Config c;
  c.model.vocab_size = meta["vocab_size"];
  c.model.d_model = meta["d_model"];
  c.model.n_layers = meta["n_layers"];
  c.model.n_heads = meta["n_heads"];
  c.model.n_kv_heads = meta["n_kv_heads"];
  c.model.ffn_hidden = meta["ffn_hidden"];
  c.model.rope_theta = meta["rope_theta"];
  c.model.norm_eps = meta["norm_eps"];
  c.model.tie_embeddings = meta["tie_embeddings"];
  const auto& t = meta["train"];
  c.data.train = "unused";
  c.data.seq_len = T;
  c.train.steps = t["steps"];
  c.train.micro_batch = B;
  c.train.batch_tokens = B * T;
  c.train.lr = t["lr"];
  c.train.min_lr = t["lr"];
  c.train.schedule = "constant";
  c.train.warmup_steps = 0;
  c.train.beta1 = t["beta1"];
  c.train.beta2 = t["beta2"];
  c.train.eps = t["eps"];
  c.train.weight_decay = t["weight_decay"];
  c.train.grad_clip = t["grad_clip"];
  c.train.device = "cpu";  // this file checks the CPU; test_cuda_model.cpp compares the GPU with the CPU
  return c;
}

// Norm-relative error below tol, naming the tensor that differs.
void check_close(const std::string& name, const Tensor& actual, const Tensor& expected, double tol = 1e-4) {
  const auto a = test::to_double_vector(actual), e = test::to_double_vector(expected);
  REQUIRE(a.size() == e.size());
  const double error = test::norm_relative_error(a, e);
  INFO(name << ": relative error " << error << " (max abs " << test::max_abs_error(a, e) << ")");
  CHECK(error < tol);
}

void check_against_reference(const std::string& file) {
  const SafetensorsFile golden(std::string(L3C_SOURCE_DIR) + "/tests/golden/" + file);
  const Tensor tokens = golden.get("input.tokens"), targets = golden.get("input.targets");
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  const Config config = golden_config(golden, B, T);
  const Llama model(config.model);
  FlatBuffer params(model.registry().total(), DType::F32), grads(model.registry().total(), DType::F32);
  load_params(golden, model.registry(), params, ExtraTensors::Ignore);

  Arena arena(model.activation_bytes(B, T, DType::F32, true), "test");
  test::TestTensor logits(DType::F32, {B * T, config.model.vocab_size});
  model.forward_logits(params, tokens, logits, arena);
  check_close("logits", logits, golden.get("expected.logits"));

  arena.reset();
  const double loss = model.forward_backward(params, &grads, tokens, targets, 1.0 / static_cast<double>(B * T), arena);
  CHECK(loss == Approx(test::get_value(golden.get("expected.loss"), 0)).epsilon(1e-5));
  for (const ParamInfo& p : model.registry().params())
    check_close("gradient of " + p.name, grads.view(p), golden.get("expected.grad." + p.name));

  // Ten optimizer steps through the trainer's own step (clipping, AdamW, the schedule).
  TrainingState state(config);
  load_params(golden, model.registry(), state.params(), ExtraTensors::Ignore);
  const BatchSource same_batch = [&](int64_t, Tensor x, Tensor y) {
    ops::copy(x, tokens);
    ops::copy(y, targets);
  };
  const Tensor expected_losses = golden.get("expected.train_losses");
  for (int64_t step = 0; step < config.train.steps; ++step) {
    const StepResult r = state.step(step, same_batch);
    INFO("step " << step);
    CHECK(r.loss == Approx(test::get_value(expected_losses, step)).epsilon(1e-4));
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
  const Tensor tokens = golden.get("input.tokens"), targets = golden.get("input.targets");
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  Config config = golden_config(golden, B, T);
  const auto l3 = nlohmann::json::parse(golden.metadata().at("config"))["l3"];
  config.model.l3.after_layers = l3["after_layers"].get<std::vector<int64_t>>();
  config.model.l3.v = l3["v"];
  config.model.l3.k = l3["k"];
  config.model.l3.d_emb = l3["d_emb"];
  config.model.l3.d_up = l3["d_up"];
  config.model.l3.tie_kv = l3["tie_kv"];
  config.model.l3.residual = l3["residual"];
  config.model.l3.allocation.method = "uniform";  // replaced by the golden allocations below
  Llama model(config.model);
  FlatBuffer params(model.registry().total(), DType::F32), grads(model.registry().total(), DType::F32);
  // Parameters and the per-layer allocations (model.l3.{j}.alloc) load as from a checkpoint.
  load_model_state(golden, model, params, ExtraTensors::Ignore);
  REQUIRE(model.l3_allocation(0) != model.l3_allocation(1));
  const std::vector<int32_t>& counts = model.l3_allocation(0);
  CHECK(*std::min_element(counts.begin(), counts.end()) == 1);
  CHECK(*std::max_element(counts.begin(), counts.end()) == config.model.l3.k);

  Arena arena(model.activation_bytes(B, T, DType::F32, true), "test");
  test::TestTensor logits(DType::F32, {B * T, config.model.vocab_size});
  model.forward_logits(params, tokens, logits, arena);
  check_close("logits", logits, golden.get("expected.logits"));
  arena.reset();
  const double loss = model.forward_backward(params, &grads, tokens, targets, 1.0 / static_cast<double>(B * T), arena);
  CHECK(loss == Approx(test::get_value(golden.get("expected.loss"), 0)).epsilon(1e-5));
  for (const ParamInfo& p : model.registry().params())
    check_close("gradient of " + p.name, grads.view(p), golden.get("expected.grad." + p.name));

  TrainingState state(config);
  load_params(golden, model.registry(), state.params(), ExtraTensors::Ignore);
  for (int64_t j = 0; j < 2; ++j) state.set_l3_allocation(j, model.l3_allocation(j), "golden");
  const BatchSource same_batch = [&](int64_t, Tensor x, Tensor y) {
    ops::copy(x, tokens);
    ops::copy(y, targets);
  };
  const Tensor expected_losses = golden.get("expected.train_losses");
  for (int64_t step = 0; step < config.train.steps; ++step) {
    const StepResult r = state.step(step, same_batch);
    INFO("step " << step);
    CHECK(r.loss == Approx(test::get_value(expected_losses, step)).epsilon(1e-4));
  }
  for (const ParamInfo& p : model.registry().params())
    check_close("weights after 10 steps: " + p.name, state.params().view(p), golden.get("expected.final." + p.name));
}
