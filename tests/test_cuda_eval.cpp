// Evaluation on the GPU against the CPU: the scorer's log-likelihoods and greedy flags and the logit lens for a model
// with dense, MoE and L3 layers (fp32, within 1e-5), and the scores with bf16 parameters (within 2%). Without a GPU
// every test exits with code 4 (CTest: skipped); the emulated/ twin runs them on the host emulation of CUDA.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "cuda_test_util.h"
#include "data/allocation.h"
#include "eval/scorer.h"
#include "kernels/ops.h"
#include "model/llama.h"

using namespace l3c;
using namespace l3c::test;

namespace {

// Dense, L3 and MoE layers.
Config mixed_config() {
  nlohmann::json j = nlohmann::json::parse(R"({
    "model": {"vocab_size": 96, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 48,
              "l3": {"after_layers": [0], "v": 200, "k": 4, "allocation": {"method": "uniform"}},
              "moe": {"layers": [1], "experts": 4, "top_k": 2, "expert_hidden": 24}},
    "data": {"train": "unused", "seq_len": 16}, "train": {"steps": 1}})");
  return config_from_json(j);
}

std::vector<ScoreRequest> requests() {
  SplitMix64 rng(5);
  std::vector<ScoreRequest> out;
  for (int i = 0; i < 6; ++i) {
    ScoreRequest r;
    r.tokens.resize(static_cast<size_t>(6 + 2 * i));
    for (int32_t& t : r.tokens) t = static_cast<int32_t>(rng.next() % 96);
    r.first_scored = 1 + i % 3;
    out.push_back(r);
  }
  return out;
}

struct Scored {
  std::vector<SequenceScore> scores;
  LensTotals lens;
};

// The scores and the lens of the same model and weights (dense, L3 and MoE layers) on `device`, with parameters in
// `dtype` there.
Scored score_on(Device device, DType dtype) {
  const Config config = mixed_config();
  Llama model(config.model);
  FlatBuffer host(model.registry().total(), DType::F32);
  init_params(model.registry(), host, 3);
  model.set_l3_allocations(uniform_allocation(96, 200, 4), "test");
  model.set_device(device);
  FlatBuffer params(host.numel(), dtype, device);
  if (dtype == DType::F32) ops::copy(params.all(), host.all());
  else {
    FlatBuffer f32(host.numel(), DType::F32, device);
    ops::copy(f32.all(), host.all());
    ops::convert(params.all(), f32.all());
  }
  Scorer scorer(model, params, 40);
  return {scorer.score(requests()), scorer.lens(requests())};
}

}  // namespace

TEST_CASE("cuda: the scorer and the lens on the GPU match the CPU (fp32), with MoE layers also in bf16 (within 2%)",
          "[cuda][eval]") {
  require_gpu();
  const Scored cpu = score_on(Device::CPU, DType::F32);
  const Scored gpu = score_on(Device::CUDA, DType::F32);
  const Scored bf16 = score_on(Device::CUDA, DType::BF16);
  REQUIRE(gpu.scores.size() == cpu.scores.size());
  for (size_t i = 0; i < cpu.scores.size(); ++i) {
    CHECK(gpu.scores[i].tokens == cpu.scores[i].tokens);
    CHECK(gpu.scores[i].log_prob == Approx(cpu.scores[i].log_prob).epsilon(1e-5));
    CHECK(gpu.scores[i].greedy == cpu.scores[i].greedy);
    CHECK(bf16.scores[i].log_prob == Approx(cpu.scores[i].log_prob).epsilon(0.02));
  }
  REQUIRE(gpu.lens.points.size() == 3);
  CHECK(gpu.lens.positions == cpu.lens.positions);
  for (size_t p = 0; p < cpu.lens.points.size(); ++p)
    CHECK(gpu.lens.kl_sum[p] == Approx(cpu.lens.kl_sum[p]).epsilon(1e-4).margin(1e-6));
}
