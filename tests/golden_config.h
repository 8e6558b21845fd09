// The config a golden file of tests/golden (scripts/make_golden.py) was made with, read from its "config"
// metadata: the model, optional "l3" and "moe", and the training hyper-parameters. Shared by the tests that
// replay the golden files (test_reference on the CPU, test_cuda_model on the GPU).
#pragma once
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/safetensors.h"

namespace l3c::test {

// field = json[key], converted to the field's type, for each (key, field) pair.
inline void read_fields(const nlohmann::json&) {}
template <typename Field, typename... Rest>
void read_fields(const nlohmann::json& json, const char* key, Field& field, Rest&... rest) {
  field = json.at(key).get<Field>();
  read_fields(json, rest...);
}

// The config the golden file was made with (its "config" metadata: model, optional "l3" and "moe", and
// the training hyper-parameters), for micro-batches of B x T.
inline Config golden_config(const SafetensorsFile& golden, int64_t B, int64_t T) {
  const auto meta = nlohmann::json::parse(golden.metadata().at("config"));
  Config c;
  ModelConfig& m = c.model;
  read_fields(meta, "vocab_size", m.vocab_size, "d_model", m.d_model, "n_layers", m.n_layers, "n_heads", m.n_heads,
              "n_kv_heads", m.n_kv_heads, "ffn_hidden", m.ffn_hidden, "rope_theta", m.rope_theta, "norm_eps",
              m.norm_eps, "tie_embeddings", m.tie_embeddings);
  if (meta.contains("l3")) {
    read_fields(meta["l3"], "after_layers", m.l3.after_layers, "v", m.l3.v, "k", m.l3.k, "d_emb", m.l3.d_emb, "d_up",
                m.l3.d_up, "tie_kv", m.l3.tie_kv, "residual", m.l3.residual);
    m.l3.allocation.method = AllocationMethod::Uniform;  // replaced by the golden allocations (model.l3.{j}.alloc)
  }
  if (meta.contains("moe")) {
    REQUIRE(meta["moe"]["layers"] == "all");
    m.moe.layers.all = true;
    read_fields(meta["moe"], "experts", m.moe.experts, "top_k", m.moe.top_k, "expert_hidden", m.moe.expert_hidden,
                "shared_expert_hidden", m.moe.shared_expert_hidden, "normalize_topk", m.moe.normalize_topk,
                "aux_loss", m.moe.aux_loss, "z_loss", m.moe.z_loss);
  }
  c.data.train = "unused";
  c.data.seq_len = T;
  c.train.micro_batch = B;
  c.train.batch_tokens = B * T;
  read_fields(meta["train"], "steps", c.train.steps, "lr", c.train.lr, "lr", c.train.min_lr, "beta1", c.train.beta1,
              "beta2", c.train.beta2, "eps", c.train.eps, "weight_decay", c.train.weight_decay, "grad_clip",
              c.train.grad_clip);
  c.train.schedule = Schedule::Constant;
  c.train.warmup_steps = 0;
  c.train.device = DeviceChoice::Cpu;  // this file checks the CPU; test_cuda_model.cpp compares the GPU with the CPU
  return c;
}

}  // namespace l3c::test
