// Hugging Face export.
#include "train/hf_export.h"

#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/file_io.h"
#include "core/safetensors.h"
#include "modeling_l3c_py.h"

namespace l3c {
namespace {
// j[key] = value for each (key, value) of `values`, in their order: a new key goes at the end, a key j holds
// keeps its place.
void set_keys(nlohmann::ordered_json& j, const nlohmann::ordered_json& values) {
  for (const auto& [key, value] : values.items()) j[key] = value;
}
}  // namespace

nlohmann::ordered_json hf_config(const Config& config) {
  const ModelConfig& m = config.model;
  if (m.l3.enabled() && m.moe.enabled())
    fail("export hf: this model has both Large Lookup Layers and MoE FFNs; the exported L3 class (L3LlamaForCausalLM, "
         "modeling_l3c.py) extends Llama, whose FFNs are dense: use the l3c checkpoint as it is (l3c eval / l3c generate)");
  // What HF's LlamaConfig reads; the keys also mean the same in MixtralConfig.
  nlohmann::ordered_json j;
  set_keys(j, {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", m.vocab_size},
               {"hidden_size", m.d_model}, {"intermediate_size", m.ffn_hidden}, {"num_hidden_layers", m.n_layers},
               {"num_attention_heads", m.n_heads}, {"num_key_value_heads", m.n_kv_heads}, {"head_dim", m.head_dim()},
               {"hidden_act", "silu"}, {"max_position_embeddings", config.data.seq_len}, {"rms_norm_eps", m.norm_eps},
               {"rope_theta", m.rope_theta}, {"rope_scaling", nullptr}, {"attention_bias", false},
               {"attention_dropout", 0.0}, {"mlp_bias", false}, {"tie_word_embeddings", m.tie_embeddings},
               {"initializer_range", m.init_std}, {"pretraining_tp", 1}, {"use_cache", true}, {"bos_token_id", nullptr},
               {"eos_token_id", nullptr}, {"torch_dtype", "float32"}});
  if (m.l3.enabled()) {
    // L3LlamaForCausalLM from the modeling file written beside the weights (trust_remote_code).
    set_keys(j, {{"architectures", {"L3LlamaForCausalLM"}}, {"model_type", "l3_llama"},
                 {"auto_map", {{"AutoConfig", "modeling_l3c.L3LlamaConfig"},
                               {"AutoModelForCausalLM", "modeling_l3c.L3LlamaForCausalLM"}}},
                 {"l3_after_layers", m.l3.after_layers}, {"l3_v", m.l3.v}, {"l3_k", m.l3.k}, {"l3_d_emb", m.l3.d_emb},
                 {"l3_d_up", m.l3.d_up}, {"l3_tie_kv", m.l3.tie_kv}, {"l3_residual", m.l3.residual}});
  }
  if (m.moe.enabled()) {
    // MixtralForCausalLM: an MoE FFN in every layer, all alike, softmax over all experts then renormalised
    // top-k, no shared expert. Tensor names need no mapping (MODEL.md uses Mixtral's).
    const MoeConfig& moe = m.moe;
    std::vector<std::string> unsupported;
    for (int64_t i = 0; i < m.n_layers; ++i)
      if (!m.is_moe_layer(i)) {
        unsupported.push_back(fmt::format("decoder layer {} has a dense FFN (Mixtral has an MoE FFN in every layer; "
                                          "model.moe.layers must be \"all\")", i));
        break;
      }
    if (moe.shared_expert_hidden > 0)
      unsupported.push_back(fmt::format("model.moe.shared_expert_hidden = {} (Mixtral has no shared expert)",
                                        moe.shared_expert_hidden));
    if (!moe.normalize_topk)
      unsupported.push_back("model.moe.normalize_topk = false (Mixtral always renormalises the top-k weights)");
    if (!unsupported.empty()) {
      std::string reasons;
      for (const std::string& r : unsupported) reasons += "; " + r;
      fail("export hf: this MoE model has no Hugging Face class: MixtralForCausalLM cannot run it{}", reasons);
    }
    set_keys(j, {{"architectures", {"MixtralForCausalLM"}}, {"model_type", "mixtral"},
                 {"intermediate_size", moe.expert_hidden}, {"num_local_experts", moe.experts},
                 {"num_experts_per_tok", moe.top_k}, {"router_aux_loss_coef", moe.aux_loss},
                 {"router_jitter_noise", 0.0}, {"output_router_logits", false}, {"sliding_window", nullptr}});
    for (const char* llama_only : {"mlp_bias", "pretraining_tp", "attention_bias"}) j.erase(llama_only);
  }
  return j;
}

void export_hf(const Config& config, const Llama& model, const FlatBuffer& params, const std::string& out_dir) {
  namespace fs = std::filesystem;
  const nlohmann::ordered_json hf = hf_config(config);
  for (const char* name : {"config.json", "model.safetensors"})
    if (fs::exists(fs::path(out_dir) / name))
      fail("export hf: {} already holds {}; choose an empty folder", out_dir, name);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail("export hf: cannot create {}: {}", out_dir, ec.message());

  // float32 copies where the parameters are f64; views otherwise.
  std::vector<std::vector<float>> converted;
  std::vector<NamedTensor> tensors;
  for (const ParamInfo& p : model.registry().params()) {
    Tensor t = params.view(p);
    if (t.dtype == DType::F64) {
      converted.emplace_back(static_cast<size_t>(p.numel));
      for (int64_t i = 0; i < p.numel; ++i) converted.back()[i] = static_cast<float>(t.ptr<double>()[i]);
      t.data = converted.back().data();
      t.dtype = DType::F32;
    }
    tensors.push_back({p.name, t});
  }
  for (const L3Layer& layer : model.l3_layers()) {  // the allocations: a buffer of each exported L3 layer
    const std::vector<int32_t>& counts = model.l3_allocation(layer.index());
    tensors.push_back({layer.alloc_name(), Tensor(const_cast<int32_t*>(counts.data()), DType::I32,
                                                  {static_cast<int64_t>(counts.size())})});
  }
  write_safetensors((fs::path(out_dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  write_file_atomic((fs::path(out_dir) / "config.json").string(), hf.dump(2) + "\n");
  if (config.model.l3.enabled()) write_file_atomic((fs::path(out_dir) / "modeling_l3c.py").string(), kModelingL3cPy);
}

}  // namespace l3c
