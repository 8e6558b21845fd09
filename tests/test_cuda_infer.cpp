// The inference session on the GPU against the CPU: RoPE at an offset, the KV cache write and attention against the
// cache as ops; whole sessions (dense, MoE, L3, mixed) with greedy decoding in fp32 giving the CPU's tokens and logits
// within 1e-4; L3 tables in pinned host memory (copied on the side stream) and mapped from the checkpoint giving
// the device tables' logits bit for bit, in fp32 and bf16; bf16 logits near the CPU's (L3 and MoE models). Without a GPU every test
// exits with code 4 (CTest: skipped); the emulated/ twins run the same kernels on the host emulation of CUDA.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "infer/generate.h"
#include "infer/model.h"
#include "infer/session.h"
#include "kernels/ops.h"
#include "runtime/model_io.h"
#include "infer_test_util.h"

using namespace l3c;
using namespace l3c::test;

namespace {

// Logits of a fixed workload: two prompts prefilled, then `steps` batched greedy decode steps (the tokens the
// session itself chose), all logits concatenated; and the chosen tokens.
struct Trace {
  std::vector<float> logits;
  std::vector<int32_t> tokens;
};
Trace run_trace(InferenceModel& model, int steps) {
  InferenceSession session(model, {.max_batch = 2, .max_context = 24});
  Trace trace;
  std::vector<float> logits(2 * kInferVocab);
  std::vector<int32_t> next(2);
  for (int32_t slot = 0; slot < 2; ++slot) {
    const std::span<float> row = std::span(logits).subspan(static_cast<size_t>(slot) * kInferVocab, kInferVocab);
    session.prefill(slot, prompt_of(5 + 3 * slot, slot + 1), row);
    next[slot] = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
  }
  trace.logits = logits;
  const std::vector<int32_t> slots = {0, 1};
  for (int step = 0; step < steps; ++step) {
    trace.tokens.insert(trace.tokens.end(), next.begin(), next.end());
    session.decode(slots, next, logits);
    trace.logits.insert(trace.logits.end(), logits.begin(), logits.end());
    for (int b = 0; b < 2; ++b)
      next[b] = static_cast<int32_t>(std::max_element(logits.begin() + b * kInferVocab, logits.begin() + (b + 1) * kInferVocab) -
                                     (logits.begin() + b * kInferVocab));
  }
  return trace;
}


}  // namespace

TEST_CASE("GPU RoPE at an offset, KV cache write and attention against the cache match the CPU", "[cuda][infer]") {
  require_gpu();
  const int64_t B = 2, T = 3, H = 4, Hkv = 2, hd = 8, slots_held = 3, max_positions = 10;
  for (DType dtype : {DType::F32, DType::BF16}) {
    INFO(dtype_name(dtype));
    const double tolerance = dtype == DType::F32 ? 1e-5 : 2e-2;
    Pair q = random_pair(dtype, {B, T, H, hd}, 1), k = random_pair(dtype, {B, T, Hkv, hd}, 2);
    Pair v = random_pair(dtype, {B, T, Hkv, hd}, 3);
    Pair k_cache = random_pair(dtype, {slots_held, max_positions, Hkv, hd}, 4);
    Pair v_cache = random_pair(dtype, {slots_held, max_positions, Hkv, hd}, 5);
    std::vector<int32_t> slots = {2, 0}, start = {6, 2};
    const Tensor slots_cpu(slots.data(), DType::I32, {B}), start_cpu(start.data(), DType::I32, {B});
    const DeviceTensor slots_gpu(slots_cpu), start_gpu(start_cpu);
    ops::rope_forward_at(q.cpu, 500.0, start_cpu);
    ops::rope_forward_at(q.gpu, 500.0, start_gpu);
    CHECK(max_abs_error(q.gpu.values(), q.cpu.values()) <= tolerance);
    ops::kv_cache_write(k_cache.cpu, k.cpu, slots_cpu, start_cpu);
    ops::kv_cache_write(k_cache.gpu, k.gpu, slots_gpu, start_gpu);
    ops::kv_cache_write(v_cache.cpu, v.cpu, slots_cpu, start_cpu);
    ops::kv_cache_write(v_cache.gpu, v.gpu, slots_gpu, start_gpu);
    CHECK(max_abs_error(k_cache.gpu.values(), k_cache.cpu.values()) == 0.0);
    TestTensor out_cpu(DType::F32, {B, T, H, hd});
    DeviceTensor out_gpu(dtype, {B, T, H, hd});
    // the GPU's query rows as the CPU sees them (bf16 rounding of the rotated values)
    TestTensor q_seen = q.gpu.host().converted(DType::F32);
    ops::attention_cached(out_cpu, q_seen, k_cache.cpu, v_cache.cpu, slots_cpu, start_cpu);
    ops::attention_cached(out_gpu, q.gpu, k_cache.gpu, v_cache.gpu, slots_gpu, start_gpu);
    CHECK(max_abs_error(out_gpu.values(), out_cpu.values()) <= tolerance);
  }
}

TEST_CASE("GPU inference sessions decode the CPU's greedy tokens with its logits (fp32)", "[cuda][infer]") {
  require_gpu();
  for (InferKind kind : {InferKind::Dense, InferKind::Moe, InferKind::L3, InferKind::Mixed}) {
    INFO("model: " << infer_kind_name(kind));
    const RandomModel r = random_model(kind, 24);
    InferenceModel cpu(r.config, *r.model, r.params, {});
    InferenceModel gpu(r.config, *r.model, r.params, {.device = Device::CUDA});
    const Trace expected = run_trace(cpu, 4), got = run_trace(gpu, 4);
    CHECK(got.tokens == expected.tokens);
    CHECK(max_abs_diff(got.logits, expected.logits) <= 1e-4);
  }
}

TEST_CASE("GPU inference of MoE models in bf16: the prompts' logits near the fp32 CPU's", "[cuda][infer][moe]") {
  require_gpu();
  for (InferKind kind : {InferKind::Moe, InferKind::Mixed}) {
    INFO("model: " << infer_kind_name(kind));
    const RandomModel r = random_model(kind, 24);
    InferenceModel cpu(r.config, *r.model, r.params, {});
    InferenceModel gpu(r.config, *r.model, r.params, {.device = Device::CUDA, .dtype = DType::BF16});
    const Trace expected = run_trace(cpu, 0), got = run_trace(gpu, 0);
    CHECK(max_abs_diff(got.logits, expected.logits) <= 0.25);  // as for the L3 models in bf16 below
  }
}

TEST_CASE("GPU L3 tables in pinned host memory or mapped from the checkpoint equal device tables bit for bit",
          "[cuda][infer]") {
  require_gpu();
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (InferKind kind : {InferKind::L3, InferKind::L3Tied}) {
      INFO("model: " << infer_kind_name(kind) << ", " << dtype_name(dtype));
      const RandomModel r = random_model(kind, 24);
      const SavedModel saved(r, infer_kind_name(kind));
      std::vector<Trace> traces;
      for (L3TableMode mode : {L3TableMode::Device, L3TableMode::Host, L3TableMode::Mmap}) {
        auto model = InferenceModel::load(saved.dir, {.device = Device::CUDA, .dtype = dtype, .tables = mode});
        traces.push_back(run_trace(*model, 3));
      }
      for (size_t m = 1; m < traces.size(); ++m) {
        CHECK(traces[m].tokens == traces[0].tokens);
        CHECK(std::memcmp(traces[m].logits.data(), traces[0].logits.data(), traces[0].logits.size() * sizeof(float)) == 0);
      }
      if (dtype == DType::BF16) {  // the prompts' logits near the fp32 CPU's (decoding may then choose otherwise)
        InferenceModel cpu(r.config, *r.model, r.params, {});
        std::vector<float> expected = run_trace(cpu, 0).logits, got = traces[0].logits;
        got.resize(expected.size());
        CHECK(max_abs_diff(got, expected) <= 0.25);
      }
    }
  }
}
