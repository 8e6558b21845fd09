// Hugging Face import: a LlamaForCausalLM (or an exported L3LlamaForCausalLM) folder -> an l3c model folder.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/safetensors.h"
#include "kernels/ops.h"
#include "runtime/model_io.h"
#include "train/hf_export.h"

namespace l3c {

namespace {
namespace fs = std::filesystem;

// The weight files of a Hugging Face folder: model.safetensors, or the shards model.safetensors.index.json lists.
std::vector<std::unique_ptr<SafetensorsFile>> weight_files(const std::string& hf_dir) {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  const fs::path single = fs::path(hf_dir) / "model.safetensors", index = fs::path(hf_dir) / "model.safetensors.index.json";
  if (fs::exists(single)) {
    files.push_back(std::make_unique<SafetensorsFile>(single.string(), FileAccess::Map));
  } else if (fs::exists(index)) {
    std::vector<std::string> shards;
    for (const auto& [name, shard] : read_json_file(index.string()).at("weight_map").items())
      if (std::find(shards.begin(), shards.end(), shard.get<std::string>()) == shards.end())
        shards.push_back(shard.get<std::string>());
    for (const std::string& shard : shards)
      files.push_back(std::make_unique<SafetensorsFile>((fs::path(hf_dir) / shard).string(), FileAccess::Map));
  } else {
    fail("import hf: {} holds neither model.safetensors nor model.safetensors.index.json", hf_dir);
  }
  return files;
}

template <typename T>
T get_or(const nlohmann::json& j, const char* key, T fallback) {
  return j.contains(key) && !j[key].is_null() ? j[key].get<T>() : fallback;
}
}  // namespace

ImportedModel import_hf(const std::string& hf_dir, const std::string& out_dir) {
  const std::string config_path = (fs::path(hf_dir) / "config.json").string();
  if (!fs::exists(config_path)) fail("import hf: {} is missing", config_path);
  const nlohmann::json hf = read_json_file(config_path);
  const std::string architecture = hf.contains("architectures") ? hf["architectures"].at(0).get<std::string>() : "";
  if (architecture != "LlamaForCausalLM" && architecture != "L3LlamaForCausalLM")
    fail("import hf: {}: architecture '{}' is not supported (LlamaForCausalLM, or L3LlamaForCausalLM from l3c export)",
         config_path, architecture);
  // What MODEL.md's decoder does not compute.
  std::vector<std::string> unsupported;
  if (get_or<std::string>(hf, "hidden_act", "silu") != "silu") unsupported.push_back("hidden_act is not silu");
  if (get_or<bool>(hf, "attention_bias", false)) unsupported.push_back("attention_bias (l3c has no biases)");
  if (get_or<bool>(hf, "mlp_bias", false)) unsupported.push_back("mlp_bias (l3c has no biases)");
  if (hf.contains("rope_scaling") && !hf["rope_scaling"].is_null()) unsupported.push_back("rope_scaling");
  const int64_t d = hf.at("hidden_size"), heads = hf.at("num_attention_heads");
  if (get_or<int64_t>(hf, "head_dim", d / heads) != d / heads)
    unsupported.push_back(fmt::format("head_dim {} differs from hidden_size / num_attention_heads", hf["head_dim"].dump()));
  if (!unsupported.empty()) {
    std::string reasons;
    for (const std::string& r : unsupported) reasons += (reasons.empty() ? "" : "; ") + r;
    fail("import hf: {}: {}", config_path, reasons);
  }
  nlohmann::json model = {{"vocab_size", hf.at("vocab_size")},
                          {"d_model", d},
                          {"n_layers", hf.at("num_hidden_layers")},
                          {"n_heads", heads},
                          {"n_kv_heads", get_or<int64_t>(hf, "num_key_value_heads", heads)},
                          {"ffn_hidden", hf.at("intermediate_size")},
                          {"rope_theta", get_or<double>(hf, "rope_theta", 10000.0)},
                          {"norm_eps", get_or<double>(hf, "rms_norm_eps", 1e-6)},
                          {"tie_embeddings", get_or<bool>(hf, "tie_word_embeddings", false)},
                          {"init_std", get_or<double>(hf, "initializer_range", 0.02)}};
  if (architecture == "L3LlamaForCausalLM")
    model["l3"] = {{"after_layers", hf.at("l3_after_layers")}, {"v", hf.at("l3_v")}, {"k", hf.at("l3_k")},
                   {"d_emb", hf.at("l3_d_emb")}, {"d_up", hf.at("l3_d_up")}, {"tie_kv", hf.at("l3_tie_kv")},
                   {"residual", hf.at("l3_residual")}, {"allocation", {{"method", "uniform"}}}};
  // The allocation comes with the weights (model.l3.{j}.alloc); data.train names no shards: set it to train.
  const Config config = config_from_json({{"model", model},
                                          {"data", {{"train", "none"}, {"seq_len", hf.at("max_position_embeddings")}}},
                                          {"train", {{"steps", 1}}}});

  const auto files = weight_files(hf_dir);
  auto find = [&](const std::string& name) -> const SafetensorsFile* {
    for (const auto& f : files)
      if (f->contains(name)) return f.get();
    return nullptr;
  };
  Llama llama(config.model);
  FlatBuffer params(llama.registry().total(), DType::F32);
  for (const ParamInfo& p : llama.registry().params()) {
    const SafetensorsFile* file = find(p.name);
    if (file == nullptr) fail("import hf: {}: no tensor {} in the weights", hf_dir, p.name);
    const Tensor& src = file->get(p.name);
    const Tensor dst = params.view(p);
    if (src.numel() != dst.numel() || src.ndim != dst.ndim)
      fail("import hf: {}: {} has shape {}, the config implies {}", file->path(), p.name, src.shape_string(),
           dst.shape_string());
    if (src.dtype != DType::F32 && src.dtype != DType::BF16 && src.dtype != DType::F64)
      fail("import hf: {}: {} is {}; F32, BF16 or F64 weights are imported", file->path(), p.name, dtype_name(src.dtype));
    if (src.dtype == DType::F32) ops::copy(dst, src.view({src.numel()}));
    else ops::convert(dst, src.view({src.numel()}));
  }
  for (const L3Layer& layer : llama.l3_layers()) {
    const SafetensorsFile* file = find(layer.alloc_name());
    if (file == nullptr) fail("import hf: {}: no allocation {} for L3 layer {}", hf_dir, layer.alloc_name(), layer.index());
    const Tensor& t = file->get(layer.alloc_name());
    if (t.dtype != DType::I32 || t.ndim != 1) fail("import hf: {}: {} must be a 1-D I32 tensor", file->path(), layer.alloc_name());
    llama.set_l3_allocation(layer.index(), std::vector<int32_t>(t.ptr<int32_t>(), t.ptr<int32_t>() + t.numel()),
                            file->path() + ": " + layer.alloc_name());
  }
  for (const char* name : {"config.json", "model.safetensors"})
    if (fs::exists(fs::path(out_dir) / name)) fail("import hf: {} already holds {}; choose an empty folder", out_dir, name);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail("import hf: cannot create {}: {}", out_dir, ec.message());
  save_model((fs::path(out_dir) / "model.safetensors").string(), llama, params, config);
  write_config_json((fs::path(out_dir) / "config.json").string(), config);
  return {architecture, llama.registry().total()};
}

}  // namespace l3c
