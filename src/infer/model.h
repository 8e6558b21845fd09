// A model ready for inference: the trunk (every parameter but the L3 tables) in one flat buffer on the device, in
// the compute dtype, and each L3 layer's tables where --l3-tables puts them (src/infer/l3_tables.h). Built from
// weights in memory (tests, random-weight benchmarks) or from a run / checkpoint folder, whose model.safetensors
// is memory-mapped: with `mmap` tables nothing but the trunk is ever read into the process.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "infer/l3_tables.h"
#include "model/l3.h"
#include "model/llama.h"
#include "model/moe.h"
#include "model/params.h"

namespace l3c {

struct InferenceOptions {
  Device device = Device::CPU;
  DType dtype = DType::F32;  // CPU: f32; CUDA: f32 or bf16
  L3TableMode tables = L3TableMode::Device;
};

class InferenceModel {
 public:
  // From weights in host memory: `model` must have its L3 allocations set; params in its registry's layout.
  InferenceModel(const Config& config, const Llama& model, const FlatBuffer& params, const InferenceOptions& options);
  // From a run folder or a checkpoint folder (runtime/model_dir.h resolve_model_dir).
  static std::unique_ptr<InferenceModel> load(const std::string& dir, const InferenceOptions& options);

  const Config& config() const { return config_; }
  const ModelConfig& model_config() const { return config_.model; }
  const Llama& llama() const { return *llama_; }
  const InferenceOptions& options() const { return options_; }

  using LayerWeights = Llama::LayerWeights;
  struct Weights {
    Tensor embed, final_norm, lm_head;
    std::vector<LayerWeights> layers;
    std::vector<MoeLayer::Weights> moe;  // in decoder layer order
    std::vector<L3Layer::Weights> l3;    // w_k and w_v empty: a step's rows come from tables(j)
  };
  const Weights& weights() const { return weights_; }
  L3TableStore& tables(int64_t l3_layer) { return *tables_.at(static_cast<size_t>(l3_layer)); }
  const L3TableStore& tables(int64_t l3_layer) const { return *tables_.at(static_cast<size_t>(l3_layer)); }

  size_t trunk_bytes() const { return trunk_.all().bytes(); }
  size_t table_bytes_resident() const;  // L3 tables held in memory (device or host), not counting a mapped file

 private:
  // name -> the parameter's values in host memory (any float dtype), shape-checked by the caller.
  using Source = std::function<Tensor(const std::string& name)>;
  InferenceModel(const Config& config, const InferenceOptions& options);
  void build(const Llama& source_model, const Source& source, std::shared_ptr<const SafetensorsFile> file);

  Config config_;
  InferenceOptions options_;
  std::unique_ptr<Llama> llama_;  // the config's registry, MoE and L3 layers, and the L3 allocations
  ParamRegistry trunk_registry_;  // the parameters without the L3 tables, in registry order
  FlatBuffer trunk_;
  Weights weights_;
  std::vector<std::unique_ptr<L3TableStore>> tables_;
};

}  // namespace l3c
