// Export to the Hugging Face `transformers` format: config.json + model.safetensors that
// `AutoModelForCausalLM.from_pretrained(DIR)` loads. Our parameter names are already Hugging Face's
// (MODEL.md), so the export is the config translation plus the weights in float32.
//   dense models -> LlamaForCausalLM
//   MoE models   -> MixtralForCausalLM (the MoE layer's names are Mixtral's: block_sparse_moe.gate,
//                   block_sparse_moe.experts.{e}.w1/w2/w3); see hf_config()
//   L3 models    -> an error: no Hugging Face class computes a Large Lookup Layer
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
void export_hf(const Config& config, const Llama& model, const FlatBuffer& params, const std::string& out_dir);

}  // namespace l3c
