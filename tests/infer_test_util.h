// Small random models for the inference tests (test_infer on the CPU, test_cuda_infer on the GPU and its emulation):
// dense, MoE, L3 (with tied tables too) and a mix of the three, with weights drawn at a scale that makes their
// logits far from uniform, and an allocation whose rows per token vary from 1 to k; such a model saved as a model
// folder; prompts; the distance between two sets of logits.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "model/llama.h"
#include "model/params.h"
#include "runtime/model_io.h"
#include "test_util.h"

namespace l3c::test {

enum class InferKind { Dense, Moe, L3, L3Tied, Mixed };

inline const char* infer_kind_name(InferKind kind) {
  switch (kind) {
    case InferKind::Dense: return "dense";
    case InferKind::Moe: return "moe";
    case InferKind::L3: return "l3";
    case InferKind::L3Tied: return "l3-tied";
    case InferKind::Mixed: return "mixed";
  }
  return "?";
}

constexpr int64_t kInferVocab = 40, kInferK = 4;

// Token u owns 1 + (5u mod k) rows.
inline std::vector<int32_t> infer_allocation() {
  std::vector<int32_t> counts(kInferVocab);
  for (int64_t u = 0; u < kInferVocab; ++u) counts[u] = static_cast<int32_t>(1 + (5 * u) % kInferK);
  return counts;
}

inline Config infer_config(InferKind kind, int64_t seq_len = 40) {
  int64_t v = 0;
  for (int32_t n : infer_allocation()) v += n;
  nlohmann::json model = {{"vocab_size", kInferVocab}, {"d_model", 32}, {"n_layers", 3},  {"n_heads", 4},
                          {"n_kv_heads", 2},           {"ffn_hidden", 48}, {"init_std", 0.2}};
  const nlohmann::json l3 = {{"after_layers", kind == InferKind::Mixed ? nlohmann::json{1} : nlohmann::json{0, 2}},
                             {"v", v},
                             {"k", kInferK},
                             {"d_emb", kind == InferKind::L3Tied ? 32 : 16},
                             {"d_up", 48},
                             {"tie_kv", kind == InferKind::L3Tied},
                             {"init_std", 0.2},
                             {"allocation", {{"method", "uniform"}}}};
  if (kind == InferKind::L3 || kind == InferKind::L3Tied || kind == InferKind::Mixed) model["l3"] = l3;
  if (kind == InferKind::Moe)
    model["moe"] = {{"layers", "all"}, {"experts", 4}, {"top_k", 2}, {"expert_hidden", 24}, {"shared_expert_hidden", 16}};
  if (kind == InferKind::Mixed) model["moe"] = {{"layers", {2}}, {"experts", 4}, {"top_k", 2}, {"expert_hidden", 24}};
  const nlohmann::json j = {{"model", model},
                            {"data", {{"train", "unused"}, {"seq_len", seq_len}}},
                            {"train", {{"steps", 1}, {"device", "cpu"}}}};
  return config_from_json(j);
}

struct RandomModel {
  Config config;
  std::unique_ptr<Llama> model;
  FlatBuffer params;
};

inline RandomModel random_model(InferKind kind, int64_t seq_len = 40, uint64_t seed = 7) {
  RandomModel r;
  r.config = infer_config(kind, seq_len);
  r.model = std::make_unique<Llama>(r.config.model);
  r.params = FlatBuffer(r.model->registry().total(), DType::F32);
  init_params(r.model->registry(), r.params, seed);
  if (r.config.model.l3.enabled()) r.model->set_l3_allocations(infer_allocation(), "test allocation");
  return r;
}

// A fresh folder holding config.json and model.safetensors of a random model, removed with this object.
struct SavedModel {
  std::string dir;
  SavedModel(const RandomModel& r, const std::string& name) : dir(fresh_dir("saved_" + name).string()) {
    save_model(dir + "/model.safetensors", *r.model, r.params, r.config);
    write_config_json(dir + "/config.json", r.config);
  }
  ~SavedModel() { std::filesystem::remove_all(dir); }
};

// A prompt of `length` token ids below the test vocabulary, different for each seed.
inline std::vector<int32_t> prompt_of(int64_t length, int64_t seed) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < length; ++i) p.push_back(static_cast<int32_t>((seed * 13 + i * 7 + i * i) % kInferVocab));
  return p;
}

// The largest |a_i - b_i| of two sets of logits.
inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

}  // namespace l3c::test
