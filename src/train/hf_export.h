// Export to the Hugging Face `transformers` format: config.json + model.safetensors that
// `AutoModelForCausalLM.from_pretrained(DIR)` loads. Our parameter names are already Hugging Face's
// (MODEL.md), so the export is the config translation plus the weights in float32.
//   dense models -> LlamaForCausalLM
//   MoE models   -> MixtralForCausalLM (the MoE layer's names are Mixtral's: block_sparse_moe.gate,
//                   block_sparse_moe.experts.{e}.w1/w2/w3); see hf_config()
//   L3 models    -> L3LlamaForCausalLM, defined by the modeling file written beside the weights
//                   (modeling_l3c.py, loaded with trust_remote_code=True): Llama plus MODEL.md's L3 layers
// and back: import_hf reads a LlamaForCausalLM or L3LlamaForCausalLM folder into an l3c model folder.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "model/llama.h"
#include "model/params.h"

namespace l3c {

// The Hugging Face config.json of a model (architectures, sizes, RoPE and norm settings, dtype float32).
// UserError for a model no Hugging Face class can run.
nlohmann::ordered_json hf_config(const Config& config);

// Writes OUT_DIR/config.json and OUT_DIR/model.safetensors (float32, Hugging Face names). OUT_DIR is
// created; one that already holds either file is refused.
// L3 models also get OUT_DIR/modeling_l3c.py and their allocations (model.l3.{j}.alloc, int32).
void export_hf(const Config& config, const Llama& model, const FlatBuffer& params, const std::string& out_dir);

// What import_hf made.
struct ImportedModel {
  std::string architecture;
  int64_t params = 0;
};
// HF_DIR (config.json + model.safetensors, or shards listed by model.safetensors.index.json; F32 or BF16 weights) of
// a LlamaForCausalLM or an exported L3LlamaForCausalLM -> OUT_DIR/config.json (an l3c config: data.seq_len is
// max_position_embeddings, data.tokenizer "bytes" until set) and OUT_DIR/model.safetensors (f32), which
// `l3c generate`, `l3c eval` and `l3c train --init-from` read. UserError naming what cannot be imported.
ImportedModel import_hf(const std::string& hf_dir, const std::string& out_dir);

}  // namespace l3c
