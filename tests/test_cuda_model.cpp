// The whole model on the GPU against the CPU: logits, loss and every gradient in fp32 (dense untied and tied, two
// L3 layers, MoE FFNs, with the weights and allocations of the PyTorch reference files), 10 training steps in fp32
// (1e-4) and in bf16 (within 2% of the CPU's losses), recomputation giving the same bits, the activation arena's
// peak equal to the estimate, bit-exact resume through a checkpoint (10 steps straight == 5, checkpoint,
// load, 5), bf16 gradients accumulated in f32 over 32 micro-batches, and 32 micro-batches of fp32 gradients against
// the CPU's, and a bf16 step of the L3 model that reads back once with the loss and norm of the host sums. Without a
// GPU every test exits with code 4 (CTest: skipped).
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "kernels/arena.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "model/llama.h"
#include "runtime/checkpoint.h"
#include "runtime/model_io.h"
#include "train/trainer.h"
#include "cuda_test_util.h"
#include "golden_config.h"

using namespace l3c;
using namespace l3c::test;

namespace {

// The golden file's config with a schedule of 10 steps for the training comparison, on the CPU unless told.
Config config_of(const SafetensorsFile& golden, int64_t B, int64_t T) {
  Config c = golden_config(golden, B, T);
  c.train.steps = 10;
  c.train.lr = 1e-2;
  c.train.min_lr = 1e-3;
  c.train.schedule = Schedule::Cosine;
  c.train.warmup_steps = 2;
  c.train.grad_clip = 1.0;
  c.train.device = DeviceChoice::Cpu;
  return c;
}

std::string golden_path(const std::string& name) { return source_dir() + "/tests/golden/" + name; }

// Logits, loss and gradients of one forward and backward, on the CPU or (a copy of the model and weights) on the
// GPU, with the recomputation setting given.
struct Result {
  std::vector<double> logits, grads;
  double loss = 0.0;
};
Result run(const Llama& cpu_model, const FlatBuffer& cpu_params, const Tensor& tokens, const Tensor& targets,
           Device device, Recompute recompute = {}) {
  const int64_t B = tokens.dim(0), T = tokens.dim(1), V = cpu_model.config().vocab_size;
  Llama model = cpu_model;
  model.set_recompute(recompute);
  model.set_device(device);
  const int64_t n = cpu_params.numel();
  FlatBuffer params(n, DType::F32, device), grads(n, DType::F32, device);
  ops::copy(params.all(), cpu_params.all());
  Arena arena(model.activation_bytes(B, T, DType::F32, true), "test", device);
  FlatBuffer tok(B * T, DType::I32, device), tgt(B * T, DType::I32, device);
  ops::copy(tok.all(), tokens.view({B * T}));
  ops::copy(tgt.all(), targets.view({B * T}));
  const Tensor tok_bt = tok.all().view({B, T}), tgt_bt = tgt.all().view({B, T});
  FlatBuffer logits(B * T * V, DType::F32, device);
  model.forward_logits(params, tok_bt, logits.all().view({B * T, V}), arena);
  arena.reset();
  Result r;
  r.loss = model.forward_backward(params, &grads, tok_bt, tgt_bt, 1.0 / static_cast<double>(B * T), arena).cross_entropy;
  CHECK(arena.peak() == model.activation_bytes(B, T, DType::F32, true));
  FlatBuffer host_logits(B * T * V, DType::F32), host_grads(n, DType::F32);
  ops::copy(host_logits.all(), logits.all());
  ops::copy(host_grads.all(), grads.all());
  r.logits = to_double_vector(host_logits.all());
  r.grads = to_double_vector(host_grads.all());
  return r;
}

void compare_with_cpu(const std::string& file) {
  INFO(file);
  const SafetensorsFile golden(golden_path(file));
  const Tensor tokens = golden.get("input.tokens"), targets = golden.get("input.targets");
  const Config config = config_of(golden, tokens.dim(0), tokens.dim(1));
  Llama model(config.model);
  FlatBuffer params(model.registry().total(), DType::F32);
  load_model_state(golden, model, params, ExtraTensors::Ignore);  // weights, and L3 allocations when present

  const Result cpu = run(model, params, tokens, targets, Device::CPU);
  const Result gpu = run(model, params, tokens, targets, Device::CUDA);
  CHECK(norm_relative_error(gpu.logits, cpu.logits) < 1e-5);
  CHECK(gpu.loss == Approx(cpu.loss).epsilon(1e-5));
  for (const ParamInfo& p : model.registry().params()) {
    const std::vector<double> g(gpu.grads.begin() + p.offset, gpu.grads.begin() + p.offset + p.numel);
    const std::vector<double> c(cpu.grads.begin() + p.offset, cpu.grads.begin() + p.offset + p.numel);
    const double error = norm_relative_error(g, c);
    INFO("gradient of " << p.name << ": relative error " << error);
    // Different summation orders through the whole network: fp32 rounding, amplified a little by depth.
    CHECK(error < 1e-4);
  }
}

// The gradients of `micro_batches` micro-batches of random tokens summed into one buffer, each scaled by
// 1 / (micro_batches B T), as a training step accumulates them; on the CPU or (a copy of the model) on the GPU.
// Returns the mean loss; `grads` gets the sum read back.
double accumulated_gradients(const Llama& cpu_model, const FlatBuffer& cpu_params, int64_t B, int64_t T,
                             int64_t micro_batches, Device device, std::vector<double>& grads_out) {
  const int64_t V = cpu_model.config().vocab_size, n = cpu_params.numel();
  Llama model = cpu_model;
  model.set_device(device);
  FlatBuffer params(n, DType::F32, device), grads(n, DType::F32, device);
  ops::copy(params.all(), cpu_params.all());
  ops::fill_zero(grads.all());
  Arena arena(model.activation_bytes(B, T, DType::F32, true), "test", device);
  FlatBuffer tok(B * T, DType::I32, device), tgt(B * T, DType::I32, device);
  double loss = 0.0;
  for (int64_t m = 0; m < micro_batches; ++m) {
    TestTensor tokens(DType::I32, {B, T}), targets(DType::I32, {B, T});
    random_tokens(tokens, V, 800 + 2 * m);
    random_tokens(targets, V, 801 + 2 * m);
    ops::copy(tok.all(), tokens.tensor().view({B * T}));
    ops::copy(tgt.all(), targets.tensor().view({B * T}));
    arena.reset();
    loss += model.forward_backward(params, &grads, tok.all().view({B, T}), tgt.all().view({B, T}),
                                   1.0 / static_cast<double>(micro_batches * B * T), arena)
                .cross_entropy;
  }
  FlatBuffer host_grads(n, DType::F32);
  ops::copy(host_grads.all(), grads.all());
  grads_out = to_double_vector(host_grads.all());
  return loss / static_cast<double>(micro_batches);
}

// A training state for `config` on `device` starting from the golden file's weights (and L3 allocations).
std::unique_ptr<TrainingState> golden_state(Config config, const std::string& device, const std::string& precision,
                                            const SafetensorsFile& golden) {
  config.train.device = parse_choice<DeviceChoice>(device, "device");
  config.train.precision = parse_choice<Precision>(precision, "precision");
  auto state = std::make_unique<TrainingState>(config);
  Llama loaded(config.model);
  FlatBuffer host(loaded.registry().total(), DType::F32);
  load_model_state(golden, loaded, host, ExtraTensors::Ignore);
  for (int64_t j = 0; j < config.model.l3.num_layers(); ++j)
    state->set_l3_allocation(j, loaded.l3_allocation(j), "golden");
  state->set_params(host);
  REQUIRE(state->params().dtype() == (precision == "bf16" ? DType::BF16 : DType::F32));
  return state;
}

// Runs steps [first, last) on the golden file's batch and appends their losses.
void run_steps(TrainingState& state, const SafetensorsFile& golden, int64_t first, int64_t last,
               std::vector<double>& losses) {
  const Tensor tokens = golden.get("input.tokens"), targets = golden.get("input.targets");
  const BatchSource same_batch = [&](int64_t, Tensor x, Tensor y) {
    ops::copy(x, tokens);
    ops::copy(y, targets);
  };
  for (int64_t step = first; step < last; ++step) losses.push_back(state.step(step, same_batch).loss);
}

// Losses of `steps` training steps on a fixed batch, through TrainingState (clipping, AdamW, the schedule).
std::vector<double> train_losses(const Config& config, const std::string& device, const std::string& precision,
                                 const SafetensorsFile& golden) {
  std::vector<double> losses;
  run_steps(*golden_state(config, device, precision, golden), golden, 0, config.train.steps, losses);
  return losses;
}

}  // namespace

TEST_CASE("cuda: the dense model on the GPU matches the CPU: logits, loss, every gradient (fp32)", "[cuda]") {
  require_gpu();
  compare_with_cpu("dense_tiny.safetensors");
  compare_with_cpu("dense_tiny_tied.safetensors");
}

TEST_CASE("cuda: the model with two L3 layers on the GPU matches the CPU: logits, loss, every gradient", "[cuda]") {
  require_gpu();
  compare_with_cpu("l3_tiny.safetensors");
}

TEST_CASE("cuda: the model with MoE FFNs on the GPU matches the CPU: logits, loss, every gradient", "[cuda][moe]") {
  require_gpu();
  compare_with_cpu("moe_tiny.safetensors");
}

TEST_CASE("cuda: recomputing SwiGLU and attention in the backward gives the same bits", "[cuda]") {
  require_gpu();
  const SafetensorsFile golden(golden_path("l3_tiny.safetensors"));
  const Tensor tokens = golden.get("input.tokens"), targets = golden.get("input.targets");
  const Config config = config_of(golden, tokens.dim(0), tokens.dim(1));
  Llama model(config.model);
  FlatBuffer params(model.registry().total(), DType::F32);
  load_model_state(golden, model, params, ExtraTensors::Ignore);
  const Result kept = run(model, params, tokens, targets, Device::CUDA);
  const Result recomputed = run(model, params, tokens, targets, Device::CUDA, Recompute::from(RecomputeChoice::All));
  CHECK(recomputed.loss == kept.loss);
  CHECK(recomputed.grads == kept.grads);
  CHECK(model.activation_bytes(2, 8, DType::F32, true) > [&] {
    Llama smaller = model;
    smaller.set_recompute(Recompute::from(RecomputeChoice::All));
    return smaller.activation_bytes(2, 8, DType::F32, true);
  }());
}

TEST_CASE("cuda: 10 training steps on the GPU track the CPU: fp32 within 1e-4, bf16 within 2%", "[cuda]") {
  require_gpu();
  for (const char* file : {"dense_tiny.safetensors", "l3_tiny.safetensors"}) {
    INFO(file);
    const SafetensorsFile golden(golden_path(file));
    const Tensor tokens = golden.get("input.tokens");
    const Config config = config_of(golden, tokens.dim(0), tokens.dim(1));
    const std::vector<double> cpu = train_losses(config, "cpu", "fp32", golden);
    const std::vector<double> gpu = train_losses(config, "cuda", "fp32", golden);
    const std::vector<double> bf16 = train_losses(config, "cuda", "bf16", golden);
    for (size_t step = 0; step < cpu.size(); ++step) {
      INFO("step " << step << ": cpu " << cpu[step] << ", gpu fp32 " << gpu[step] << ", gpu bf16 " << bf16[step]);
      CHECK(std::abs(gpu[step] - cpu[step]) <= 1e-4 * std::abs(cpu[step]));
      CHECK(std::abs(bf16[step] - cpu[step]) <= 0.02 * std::abs(cpu[step]));
    }
    // Deterministic kernels: a second fp32 run on the GPU gives the same losses, bit for bit.
    CHECK(train_losses(config, "cuda", "fp32", golden) == gpu);
  }
}

TEST_CASE("cuda: a GPU run checkpointed after 5 steps and resumed equals the straight run bit for bit (fp32)",
          "[cuda][checkpoint]") {
  require_gpu();
  for (const char* file : {"dense_tiny.safetensors", "l3_tiny.safetensors", "moe_tiny.safetensors"}) {
    INFO(file);
    const SafetensorsFile golden(golden_path(file));
    const Tensor tokens = golden.get("input.tokens");
    Config config = config_of(golden, tokens.dim(0), tokens.dim(1));
    config.run.dir = (std::filesystem::temp_directory_path() /
                      ("l3c_test_cuda_resume_" + std::to_string(::getpid()) + "_" + file)).string();
    std::filesystem::remove_all(config.run.dir);

    std::vector<double> straight;
    auto whole = golden_state(config, "cuda", "fp32", golden);
    run_steps(*whole, golden, 0, 10, straight);

    // 5 steps, a checkpoint through the files (weights and AdamW moments copied off the GPU), then a new state
    // that loads it (copied back onto the GPU) and runs the other 5.
    std::vector<double> resumed;
    auto first = golden_state(config, "cuda", "fp32", golden);
    run_steps(*first, golden, 0, 5, resumed);
    TrainerProgress progress;
    progress.step = 5;
    const std::string dir =
        write_checkpoint(config.run.dir, {config, first->model(), first->host_params(), first->optimizer(), progress});
    REQUIRE(verify_checkpoint(dir).ok);
    auto second = golden_state(config, "cuda", "fp32", golden);
    FlatBuffer host(second->model().registry().total(), DType::F32);
    load_checkpoint_state(dir, second->mutable_model(), host, second->optimizer());
    second->set_params(host);
    run_steps(*second, golden, 5, 10, resumed);

    CHECK(resumed == straight);
    CHECK(same_bits(second->host_params().all(), whole->host_params().all()));
    std::filesystem::remove_all(config.run.dir);
  }
}

namespace {

// The gradients, on the host, of `micro_batches` bf16 forward and backward passes of the golden model that all add
// into one gradient buffer of `grad_dtype` (f32: what training uses; bf16: a bf16 gradient buffer). Micro-batch m
// reads the golden tokens and targets shifted by m in the vocabulary, so that each adds a different gradient.
// With `separately`, every micro-batch's gradient is computed alone (into a zeroed f32 buffer) and the sum is taken
// on the host in double: the exact sum of the same bf16 gradients.
std::vector<double> accumulated_bf16_gradients(const SafetensorsFile& golden, int64_t micro_batches, DType grad_dtype,
                                               bool separately) {
  const Tensor tokens = golden.get("input.tokens"), targets = golden.get("input.targets");
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  Config config = config_of(golden, B, T);
  config.model.tie_embeddings = true;  // the golden lm_head is ignored: the embedding is also the classifier
  Llama model(config.model);
  FlatBuffer host(model.registry().total(), DType::F32);
  load_model_state(golden, model, host, ExtraTensors::Ignore);
  model.set_device(Device::CUDA);
  const int64_t n = host.numel(), V = config.model.vocab_size;
  FlatBuffer f32(n, DType::F32, Device::CUDA), params(n, DType::BF16, Device::CUDA), grads(n, grad_dtype, Device::CUDA);
  ops::copy(f32.all(), host.all());
  ops::convert(params.all(), f32.all());
  Arena arena(model.activation_bytes(B, T, DType::BF16, true), "test", Device::CUDA);
  FlatBuffer tok(B * T, DType::I32, Device::CUDA), tgt(B * T, DType::I32, Device::CUDA);
  std::vector<int32_t> shifted_tokens(static_cast<size_t>(B * T)), shifted_targets(static_cast<size_t>(B * T));
  std::vector<double> sum(static_cast<size_t>(n), 0.0);
  FlatBuffer as_f32(n, DType::F32, Device::CUDA), on_host(n, DType::F32);
  auto add_to_sum = [&] {
    if (grad_dtype == DType::F32) ops::copy(as_f32.all(), grads.all());
    else ops::convert(as_f32.all(), grads.all());
    ops::copy(on_host.all(), as_f32.all());
    const std::vector<double> values = to_double_vector(on_host.all());
    for (size_t i = 0; i < values.size(); ++i) sum[i] += values[i];
  };
  ops::fill_zero(grads.all());
  for (int64_t m = 0; m < micro_batches; ++m) {
    for (int64_t i = 0; i < B * T; ++i) {
      shifted_tokens[static_cast<size_t>(i)] = static_cast<int32_t>((static_cast<const int32_t*>(tokens.data)[i] + m) % V);
      shifted_targets[static_cast<size_t>(i)] = static_cast<int32_t>((static_cast<const int32_t*>(targets.data)[i] + m) % V);
    }
    ops::copy(tok.all(), Tensor(shifted_tokens.data(), DType::I32, {B * T}));
    ops::copy(tgt.all(), Tensor(shifted_targets.data(), DType::I32, {B * T}));
    if (separately) ops::fill_zero(grads.all());
    arena.reset();
    model.forward_backward(params, &grads, tok.all().view({B, T}), tgt.all().view({B, T}),
                           1.0 / static_cast<double>(micro_batches * B * T), arena);
    if (separately) add_to_sum();
  }
  if (!separately) add_to_sum();
  return sum;
}

}  // namespace

TEST_CASE("cuda: bf16 gradients accumulate in f32: 32 micro-batches equal their exact sum, where bf16 drifts",
          "[cuda][bf16]") {
  require_gpu();
  // The model with two L3 layers, its embedding tied to the classifier: the tied embedding (classifier and
  // embedding gradients in one row) and the L3 tables are the gradients added to most often in a step.
  {
    const SafetensorsFile golden(golden_path("l3_tiny.safetensors"));
    const int64_t micro_batches = 32;
    const std::vector<double> exact = accumulated_bf16_gradients(golden, micro_batches, DType::F32, true);
    const std::vector<double> in_f32 = accumulated_bf16_gradients(golden, micro_batches, DType::F32, false);
    const std::vector<double> in_bf16 = accumulated_bf16_gradients(golden, micro_batches, DType::BF16, false);
    const double f32_error = norm_relative_error(in_f32, exact), bf16_error = norm_relative_error(in_bf16, exact);
    INFO("relative error of the accumulated gradient: f32 buffer " << f32_error << ", bf16 buffer " << bf16_error);
    // f32: 32 adds at 2^-24 each. A bf16 buffer rounds every add to 8 significant bits (2^-9 relative).
    CHECK(f32_error < 1e-5);
    CHECK(bf16_error > 1e-3);
  }
}

TEST_CASE("cuda: 32 micro-batches accumulate the same gradients on the GPU as on the CPU (fp32)", "[cuda][scale]") {
  require_gpu();
  // The gradient buffer takes 32 backward passes; every parameter's sum must stay within fp32 rounding of the
  // CPU's (L3 tables and the tied embedding receive a contribution from every micro-batch).
  // (The emulation, at about a second per micro-batch, runs the L3 model only.)
#ifdef L3C_CUDA_EMULATION
  const std::vector<const char*> files = {"l3_tiny.safetensors"};
#else
  const std::vector<const char*> files = {"l3_tiny.safetensors", "dense_tiny_tied.safetensors"};
#endif
  for (const char* file : files) {
    INFO(file);
    const SafetensorsFile golden(golden_path(file));
    const Tensor tokens = golden.get("input.tokens");
    const int64_t B = tokens.dim(0), T = tokens.dim(1);
    const Config config = config_of(golden, B, T);
    Llama model(config.model);
    FlatBuffer params(model.registry().total(), DType::F32);
    load_model_state(golden, model, params, ExtraTensors::Ignore);
    std::vector<double> cpu, gpu;
    const double cpu_loss = accumulated_gradients(model, params, B, T, 32, Device::CPU, cpu);
    const double gpu_loss = accumulated_gradients(model, params, B, T, 32, Device::CUDA, gpu);
    CHECK(gpu_loss == Approx(cpu_loss).epsilon(1e-5));
    for (const ParamInfo& p : model.registry().params()) {
      const std::vector<double> g(gpu.begin() + p.offset, gpu.begin() + p.offset + p.numel);
      const std::vector<double> c(cpu.begin() + p.offset, cpu.begin() + p.offset + p.numel);
      const double error = norm_relative_error(g, c);
      INFO("gradient of " << p.name << ": relative error " << error);
      CHECK(error < 1e-4);  // as one micro-batch: summing 32 of them adds no error beyond fp32 rounding
    }
  }
}

TEST_CASE("cuda: a bf16 training step of the L3 model reads back once, and its loss and norm are the host sums' bits",
          "[cuda][bf16]") {
  require_gpu();
  const SafetensorsFile golden(golden_path("l3_tiny.safetensors"));
  const Tensor tokens = golden.get("input.tokens"), targets = golden.get("input.targets");
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  Config config = config_of(golden, B, T);
  config.train.batch_tokens = 2 * B * T;  // two micro-batches a step, their losses summed on the device
  auto state = golden_state(config, "cuda", "bf16", golden);
  const Llama& model = state->model();
  const int64_t n = model.registry().total();
  // The reference: what a step computed when each micro-batch's losses were read back and summed on the host, and
  // the gradient norm read back on its own (forward_backward without a loss sum, ops::sum_squares).
  FlatBuffer grads(n, DType::F32, Device::CUDA), tok(B * T, DType::I32, Device::CUDA), tgt(B * T, DType::I32, Device::CUDA);
  ops::copy(tok.all(), tokens.view({B * T}));
  ops::copy(tgt.all(), targets.view({B * T}));
  Arena arena(model.activation_bytes(B, T, DType::BF16, true), "test", Device::CUDA);
  const double grad_scale = 1.0 / static_cast<double>(state->tokens_per_step());
  const BatchSource same_batch = [&](int64_t, Tensor x, Tensor y) {
    ops::copy(x, tokens);
    ops::copy(y, targets);
  };
  for (int64_t step = 0; step < 2; ++step) {
    INFO("step " << step);
    ops::fill_zero(grads.all());
    double loss = 0.0;
    for (int micro = 0; micro < 2; ++micro) {
      arena.reset();
      loss += model.forward_backward(state->params(), &grads, tok.all().view({B, T}), tgt.all().view({B, T}),
                                     grad_scale, arena).cross_entropy;
    }
    const double norm = std::sqrt(ops::sum_squares(grads.all()));

    const int64_t waits_before = cuda_host_synchronizations();
    const StepResult result = state->step(step, same_batch);
    const int64_t waits = cuda_host_synchronizations() - waits_before;
    CHECK(waits == 1);  // the loss and the gradient's sum of squares, read together
    CHECK(result.loss == loss / 2);
    CHECK(result.grad_norm == norm);
    CHECK(!result.skipped);
  }
}
