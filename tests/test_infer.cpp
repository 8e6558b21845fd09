// The inference session on the CPU: greedy decoding over the KV cache equals decoding by full recomputation token for
// token with logits within 1e-5 (dense, MoE, L3 with separate and tied tables, a mixed model), chunked prefill equals
// one-step prefill, a batch equals its sequences decoded one by one, L3 tables in host memory or mapped from the
// checkpoint give the device tables' logits bit for bit, the ops with a position offset against their full-sequence
// versions, the sampler, and the errors for bad input.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "infer/generate.h"
#include "infer/model.h"
#include "infer/sampler.h"
#include "infer/session.h"
#include "kernels/arena.h"
#include "kernels/ops.h"
#include "runtime/model_io.h"
#include "infer_test_util.h"
#include "test_util.h"

using namespace l3c;
using namespace l3c::test;
using Catch::Matchers::Contains;

namespace {

// Logits (V) after the last token of `context`, by running the whole context through the training forward.
std::vector<float> recomputed_logits(const RandomModel& r, const std::vector<int32_t>& context) {
  const int64_t T = static_cast<int64_t>(context.size()), V = r.config.model.vocab_size;
  Arena arena(r.model->activation_bytes(1, T, DType::F32, false), "test");
  std::vector<float> logits(static_cast<size_t>(T * V));
  std::vector<int32_t> tokens = context;
  r.model->forward_logits(r.params, Tensor(tokens.data(), DType::I32, {1, T}), Tensor(logits.data(), DType::F32, {T, V}),
                          arena);
  return std::vector<float>(logits.end() - V, logits.end());
}

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}


}  // namespace

TEST_CASE("KV-cache greedy decoding equals full recomputation, logits within 1e-5", "[infer]") {
  for (InferKind kind : {InferKind::Dense, InferKind::Moe, InferKind::L3, InferKind::L3Tied, InferKind::Mixed}) {
    INFO("model: " << infer_kind_name(kind));
    const RandomModel r = random_model(kind);
    InferenceModel model(r.config, *r.model, r.params, {});
    InferenceSession session(model, {.max_batch = 1, .max_context = 40});
    std::vector<int32_t> context = prompt_of(6, 1);
    std::vector<float> logits(kInferVocab);
    session.prefill(0, context, logits);
    double worst = 0.0;
    for (int step = 0; step < 24; ++step) {
      const std::vector<float> reference = recomputed_logits(r, context);
      worst = std::max(worst, max_abs_diff(logits, reference));
      const int32_t next = argmax(logits);
      REQUIRE(next == argmax(reference));
      context.push_back(next);
      const int32_t slot = 0;
      session.decode({&slot, 1}, {&next, 1}, logits);
    }
    CHECK(worst <= 1e-5);
    CHECK(session.length(0) == 30);
    // the logits vary: greedy decoding is not a constant
    CHECK(*std::max_element(logits.begin(), logits.end()) - *std::min_element(logits.begin(), logits.end()) > 0.5);
  }
}

TEST_CASE("prefill in chunks equals one prefill, and a long prompt crosses several chunks", "[infer]") {
  const RandomModel r = random_model(InferKind::Mixed);
  InferenceModel model(r.config, *r.model, r.params, {});
  InferenceSession whole(model, {.max_batch = 1, .max_context = 40});
  const std::vector<int32_t> prompt = prompt_of(29, 3);
  std::vector<float> one(kInferVocab), pieces(kInferVocab);
  whole.prefill(0, prompt, one);
  InferenceSession piecewise(model, {.max_batch = 1, .max_context = 40});
  piecewise.prefill(0, std::span(prompt).first(10), pieces);
  piecewise.prefill(0, std::span(prompt).subspan(10), pieces);
  CHECK(max_abs_diff(one, pieces) <= 1e-5);
  CHECK(max_abs_diff(one, recomputed_logits(r, prompt)) <= 1e-5);
}

TEST_CASE("a batch of sequences of different lengths equals its sequences decoded one by one", "[infer]") {
  for (InferKind kind : {InferKind::Dense, InferKind::Mixed}) {
    INFO("model: " << infer_kind_name(kind));
    const RandomModel r = random_model(kind);
    InferenceModel model(r.config, *r.model, r.params, {});
    const std::vector<std::vector<int32_t>> prompts = {prompt_of(3, 1), prompt_of(9, 2), prompt_of(1, 3),
                                                       prompt_of(14, 4), prompt_of(5, 5)};
    GenerationOptions options;
    options.max_new_tokens = 12;
    options.sampling.temperature = 0.0;
    InferenceSession alone(model, {.max_batch = 1, .max_context = 40});
    GenerationStats alone_stats, batch_stats;
    const auto one_by_one = generate(alone, prompts, options, {}, &alone_stats);
    // three slots for five prompts: slots are refilled as sequences finish
    InferenceSession batched(model, {.max_batch = 3, .max_context = 40});
    const auto together = generate(batched, prompts, options, {}, &batch_stats);
    for (size_t p = 0; p < prompts.size(); ++p) {
      INFO("prompt " << p);
      CHECK(together[p].tokens == one_by_one[p].tokens);
      CHECK(together[p].tokens.size() == 12);
    }
    CHECK(batch_stats.max_batch_seen == 3);
    CHECK(alone_stats.max_batch_seen == 1);
    CHECK(batch_stats.decode_tokens == alone_stats.decode_tokens);
    // and with sampling, seeded per prompt: the same draws whatever the batch
    options.sampling = {.temperature = 1.0, .top_k = 10, .top_p = 0.9, .seed = 5};
    const auto sampled_alone = generate(alone, prompts, options);
    const auto sampled_batch = generate(batched, prompts, options);
    for (size_t p = 0; p < prompts.size(); ++p) CHECK(sampled_alone[p].tokens == sampled_batch[p].tokens);
  }
}

TEST_CASE("L3 tables in host memory or mapped from the checkpoint give the device tables' logits bit for bit", "[infer]") {
  for (InferKind kind : {InferKind::L3, InferKind::L3Tied, InferKind::Mixed}) {
    INFO("model: " << infer_kind_name(kind));
    const RandomModel r = random_model(kind);
    const SavedModel saved(r, infer_kind_name(kind));
    std::vector<std::vector<float>> results;
    for (L3TableMode mode : {L3TableMode::Device, L3TableMode::Host, L3TableMode::Mmap}) {
      auto model = InferenceModel::load(saved.dir, {.tables = mode});
      const int64_t row_width = kind == InferKind::L3Tied ? 32 : 32 + 16;  // w_k (d), w_v (d_emb) unless tied
      const size_t table_bytes = static_cast<size_t>(r.config.model.l3.num_layers() * r.config.model.l3.v * row_width * 4);
      CHECK(model->table_bytes_resident() == (mode == L3TableMode::Mmap ? 0 : table_bytes));
      InferenceSession session(*model, {.max_batch = 2, .max_context = 40});
      std::vector<float> all, logits(2 * kInferVocab);
      session.prefill(0, prompt_of(7, 1), std::span(logits).first(kInferVocab));
      all.insert(all.end(), logits.begin(), logits.begin() + kInferVocab);
      session.prefill(1, prompt_of(4, 2), std::span(logits).first(kInferVocab));
      all.insert(all.end(), logits.begin(), logits.begin() + kInferVocab);
      const std::vector<int32_t> slots = {0, 1};
      for (int step = 0; step < 5; ++step) {
        const std::vector<int32_t> tokens = {static_cast<int32_t>(step * 3 % kInferVocab), static_cast<int32_t>(step * 3 % kInferVocab)};
        session.decode(slots, tokens, logits);
        all.insert(all.end(), logits.begin(), logits.end());
      }
      CHECK(session.l3_bytes_read() > 0);
      results.push_back(all);
    }
    CHECK(std::memcmp(results[0].data(), results[1].data(), results[0].size() * sizeof(float)) == 0);
    CHECK(std::memcmp(results[0].data(), results[2].data(), results[0].size() * sizeof(float)) == 0);
  }
}

TEST_CASE("RoPE at an offset and attention against a cache equal the full-sequence ops", "[infer]") {
  const int64_t B = 2, T = 9, H = 4, Hkv = 2, hd = 8, split = 5;
  TestTensor q(DType::F32, {B, T, H, hd}), k(DType::F32, {B, T, Hkv, hd}), v(DType::F32, {B, T, Hkv, hd});
  random_fill(q, 1);
  random_fill(k, 2);
  random_fill(v, 3);
  // reference: the whole sequences
  TestTensor q_full = q.converted(DType::F32), k_full = k.converted(DType::F32);
  ops::rope_forward(q_full, 10000.0);
  ops::rope_forward(k_full, 10000.0);
  TestTensor out_full(DType::F32, {B, T, H, hd}), lse(DType::F32, {B, H, T});
  ops::attention_forward(out_full, lse, q_full, k_full, v);
  // the cache: slots in reverse order of the batch rows; the first `split` positions, then the rest
  const int64_t slots_held = 3, max_positions = 12;
  TestTensor k_cache(DType::F32, {slots_held, max_positions, Hkv, hd}), v_cache(DType::F32, {slots_held, max_positions, Hkv, hd});
  std::vector<int32_t> slots = {2, 0};
  for (auto [first, count] : {std::pair<int64_t, int64_t>{0, split}, {split, T - split}}) {
    TestTensor qs(DType::F32, {B, count, H, hd}), ks(DType::F32, {B, count, Hkv, hd}), vs(DType::F32, {B, count, Hkv, hd});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < count; ++t) {
        std::memcpy(qs.ptr<float>() + (b * count + t) * H * hd, q.ptr<float>() + (b * T + first + t) * H * hd, H * hd * 4);
        std::memcpy(ks.ptr<float>() + (b * count + t) * Hkv * hd, k.ptr<float>() + (b * T + first + t) * Hkv * hd, Hkv * hd * 4);
        std::memcpy(vs.ptr<float>() + (b * count + t) * Hkv * hd, v.ptr<float>() + (b * T + first + t) * Hkv * hd, Hkv * hd * 4);
      }
    std::vector<int32_t> start(B, static_cast<int32_t>(first));
    const Tensor start_t(start.data(), DType::I32, {B}), slots_t(slots.data(), DType::I32, {B});
    ops::rope_forward_at(qs, 10000.0, start_t);
    ops::rope_forward_at(ks, 10000.0, start_t);
    ops::kv_cache_write(k_cache, ks, slots_t, start_t);
    ops::kv_cache_write(v_cache, vs, slots_t, start_t);
    TestTensor out(DType::F32, {B, count, H, hd});
    ops::attention_cached(out, qs, k_cache, v_cache, slots_t, start_t);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < count; ++t)
        for (int64_t c = 0; c < H * hd; ++c) {
          REQUIRE(qs.ptr<float>()[(b * count + t) * H * hd + c] == q_full.ptr<float>()[(b * T + first + t) * H * hd + c]);
          REQUIRE(std::abs(out.ptr<float>()[(b * count + t) * H * hd + c] -
                           out_full.ptr<float>()[(b * T + first + t) * H * hd + c]) <= 1e-5);
        }
  }
  // a row reaching past the cache is refused
  std::vector<int32_t> start = {10, 0};
  TestTensor ks(DType::F32, {B, 3, Hkv, hd});
  CHECK_THROWS_WITH(ops::kv_cache_write(k_cache, ks, Tensor(slots.data(), DType::I32, {B}), Tensor(start.data(), DType::I32, {B})),
                    Contains("outside the cache"));
}

TEST_CASE("sampler: greedy, top-k, top-p, seeded draws, and its options checked", "[infer]") {
  const std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.9f, -1.0f, 3.0f};
  CHECK(Sampler({.temperature = 0.0}, 6).sample(logits, 0, 0) == 1);  // ties go to the lower id
  CHECK(Sampler({.temperature = 0.0}, 3).sample(logits, 0, 0) == 1);
  CHECK(Sampler({.temperature = 0.0}, 1).sample(logits, 0, 0) == 0);  // ids past the limit never chosen
  std::vector<int> counts(6, 0);
  const Sampler top2({.temperature = 1.0, .top_k = 2, .seed = 3}, 6);
  const Sampler nucleus({.temperature = 1.0, .top_p = 0.5, .seed = 3}, 6);
  const Sampler all({.temperature = 1.0, .seed = 3}, 6);
  std::vector<int> all_counts(6, 0);
  for (uint64_t step = 0; step < 2000; ++step) {
    const int32_t t = top2.sample(logits, 1, step);
    CHECK((t == 1 || t == 5));
    ++counts[t];
    CHECK(nucleus.sample(logits, 1, step) != 4);
    ++all_counts[all.sample(logits, 1, step)];
  }
  CHECK(counts[1] > 800);
  CHECK(counts[5] > 800);
  CHECK(all_counts[4] > 0);                       // every id can be drawn without top-k / top-p
  CHECK(all_counts[1] > all_counts[2]);           // in proportion to exp(logit)
  // top-p 0.5 over probabilities ~ (0.33, 0.33, 0.30, ...): the two largest remain
  for (uint64_t step = 0; step < 200; ++step) {
    const int32_t t = nucleus.sample(logits, 2, step);
    CHECK((t == 1 || t == 5));
  }
  // the same (seed, sequence, step) gives the same token
  CHECK(all.sample(logits, 7, 11) == Sampler({.temperature = 1.0, .seed = 3}, 6).sample(logits, 7, 11));
  CHECK_THROWS_WITH(Sampler({.top_p = 0.0}, 6), Contains("--top-p: must be in (0, 1], got 0"));
  CHECK_THROWS_WITH(Sampler({.top_p = 1.5}, 6), Contains("--top-p: must be in (0, 1], got 1.5"));
  CHECK_THROWS_WITH(Sampler({.temperature = -1.0}, 6), Contains("--temperature: must be >= 0"));
}

TEST_CASE("inference refuses prompts past the context, empty prompts and batches too large for memory", "[infer]") {
  const RandomModel r = random_model(InferKind::L3);
  InferenceModel model(r.config, *r.model, r.params, {});
  InferenceSession session(model, {.max_batch = 2, .max_context = 8});
  std::vector<float> logits(kInferVocab);
  CHECK_THROWS_WITH(session.prefill(0, prompt_of(9, 1), logits), Contains("a prompt of 9 tokens exceeds the context of 8"));
  CHECK_THROWS_WITH(session.prefill(0, {}, logits), Contains("empty prompt"));
  const std::vector<int32_t> bad = {3, kInferVocab};
  CHECK_THROWS_WITH(session.prefill(0, bad, logits), Contains("token id 40 outside the vocabulary of 40"));
  GenerationOptions options;
  CHECK_THROWS_WITH(generate(session, {prompt_of(8, 1)}, options), Contains("prompt 1 has 8 tokens: the context holds 8"));
  // a sequence that fills the context stops there, or slides on
  options.max_new_tokens = 100;
  options.slide_context = false;
  const auto out = generate(session, {prompt_of(5, 1)}, options);
  CHECK(out[0].reason == StopReason::Context);
  CHECK(out[0].tokens.size() == 4);  // positions 5, 6, 7 fed back, the last token needs no position
  options.slide_context = true;
  const auto slid = generate(session, {prompt_of(5, 1)}, options);
  CHECK(slid[0].reason == StopReason::Length);
  CHECK(slid[0].tokens.size() == 100);
  // refused before allocating, naming the bytes
  const SessionLimits huge{.max_batch = 1 << 20, .max_context = 1 << 16};
  const SessionMemory need = InferenceSession::memory(model, huge);
  CHECK(need.kv_cache == size_t{2} * 3 * (size_t{1} << 20) * (size_t{1} << 16) * 2 * 8 * 4);
  CHECK_THROWS_WITH(InferenceSession(model, huge), Contains(std::to_string(need.session()) + " bytes"));
  CHECK_THROWS_WITH(InferenceModel(r.config, *r.model, r.params, {.tables = L3TableMode::Mmap}),
                    Contains("load the model from a folder"));
  CHECK_THROWS_WITH(parse_choice<L3TableMode>("disk", "--l3-tables"),
                    Contains("--l3-tables: must be one of device, host, mmap; got \"disk\""));
}
