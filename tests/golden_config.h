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

// The config the golden file was made with (its "config" metadata: model, optional "l3" and "moe", and
// the training hyper-parameters), for micro-batches of B x T.
inline Config golden_config(const SafetensorsFile& golden, int64_t B, int64_t T) {
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
  if (meta.contains("l3")) {
    const auto& l3 = meta["l3"];
    c.model.l3.after_layers = l3["after_layers"].get<std::vector<int64_t>>();
    c.model.l3.v = l3["v"];
    c.model.l3.k = l3["k"];
    c.model.l3.d_emb = l3["d_emb"];
    c.model.l3.d_up = l3["d_up"];
    c.model.l3.tie_kv = l3["tie_kv"];
    c.model.l3.residual = l3["residual"];
    c.model.l3.allocation.method = AllocationMethod::Uniform;  // replaced by the golden allocations (model.l3.{j}.alloc)
  }
  if (meta.contains("moe")) {
    const auto& moe = meta["moe"];
    REQUIRE(moe["layers"] == "all");
    c.model.moe.layers.all = true;
    c.model.moe.experts = moe["experts"];
    c.model.moe.top_k = moe["top_k"];
    c.model.moe.expert_hidden = moe["expert_hidden"];
    c.model.moe.shared_expert_hidden = moe["shared_expert_hidden"];
    c.model.moe.normalize_topk = moe["normalize_topk"];
    c.model.moe.aux_loss = moe["aux_loss"];
    c.model.moe.z_loss = moe["z_loss"];
  }
  const auto& t = meta["train"];
  c.data.train = "unused";
  c.data.seq_len = T;
  c.train.steps = t["steps"];
  c.train.micro_batch = B;
  c.train.batch_tokens = B * T;
  c.train.lr = t["lr"];
  c.train.min_lr = t["lr"];
  c.train.schedule = Schedule::Constant;
  c.train.warmup_steps = 0;
  c.train.beta1 = t["beta1"];
  c.train.beta2 = t["beta2"];
  c.train.eps = t["eps"];
  c.train.weight_decay = t["weight_decay"];
  c.train.grad_clip = t["grad_clip"];
  c.train.device = DeviceChoice::Cpu;  // this file checks the CPU; test_cuda_model.cpp compares the GPU with the CPU
  return c;
}

}  // namespace l3c::test
