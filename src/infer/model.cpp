// The inference model: trunk buffer, weight views, L3 table stores.
#include "infer/model.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/errors.h"
#include "kernels/ops.h"
#include "runtime/model_dir.h"
#include "runtime/model_io.h"

namespace l3c {

namespace {

bool same_shape(const Tensor& a, const std::vector<int64_t>& shape) {
  if (a.ndim != static_cast<int>(shape.size())) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.shape[i] != shape[i]) return false;
  return true;
}

// dst (any device and float dtype) = src (host memory, any float dtype).
void upload(Tensor dst, Tensor src) {
  src = src.view({src.numel()});
  dst = dst.view({dst.numel()});
  if (src.dtype == dst.dtype) return ops::copy(dst, src);
  if (dst.device == Device::CPU) return ops::convert(dst, src);
  std::vector<std::byte> host(dst.bytes());
  Tensor converted(host.data(), dst.dtype, {dst.numel()});
  if (src.dtype == DType::F64 && dst.dtype == DType::BF16) {  // no direct f64 -> bf16 on every path: via f32
    std::vector<float> f32(static_cast<size_t>(src.numel()));
    Tensor mid(f32.data(), DType::F32, {src.numel()});
    ops::convert(mid, src);
    ops::convert(converted, mid);
  } else {
    ops::convert(converted, src);
  }
  ops::copy(dst, converted);
}
}  // namespace

InferenceModel::InferenceModel(const Config& config, const InferenceOptions& options)
    : config_(config), options_(options), llama_(std::make_unique<Llama>(config.model)) {
  const bool gpu = options.device == Device::CUDA;
  L3C_CHECK(gpu ? (options.dtype == DType::F32 || options.dtype == DType::BF16) : options.dtype == DType::F32,
            "inference computes in f32 on the CPU, f32 or bf16 on the GPU; asked for {} on {}",
            dtype_name(options.dtype), device_name(options.device));
  llama_->set_device(options.device);
}

InferenceModel::InferenceModel(const Config& config, const Llama& model, const FlatBuffer& params,
                               const InferenceOptions& options)
    : InferenceModel(config, options) {
  L3C_CHECK(params.device() == Device::CPU, "InferenceModel: parameters must be in host memory");
  if (options.tables == L3TableMode::Mmap)
    fail("--l3-tables mmap reads the tables from a checkpoint's model.safetensors: load the model from a folder");
  const Source source = [&](const std::string& name) { return params.view(model.registry().find(name)); };
  build(model, source, nullptr);
}

std::unique_ptr<InferenceModel> InferenceModel::load(const std::string& dir, const InferenceOptions& options) {
  const ModelDir found = resolve_model_dir(dir);
  auto file = std::make_shared<const SafetensorsFile>(found.weights_path, FileAccess::Map);
  Llama model(found.config.model);
  load_l3_allocations(*file, model);
  std::unique_ptr<InferenceModel> loaded(new InferenceModel(found.config, options));
  const Source source = [&](const std::string& name) {
    if (!file->contains(name)) fail("{}: missing parameter {}", file->path(), name);
    const Tensor& t = file->get(name);
    if (t.dtype != DType::F32 && t.dtype != DType::F64 && t.dtype != DType::BF16)
      fail("{}: {} has dtype {}; expected a floating type", file->path(), name, dtype_name(t.dtype));
    return t;
  };
  loaded->build(model, source, file);
  return loaded;
}

void InferenceModel::build(const Llama& source_model, const Source& source, std::shared_ptr<const SafetensorsFile> file) {
  const Device device = options_.device;
  const DType dtype = options_.dtype;
  for (const L3Layer& layer : source_model.l3_layers()) {
    L3C_CHECK(!source_model.l3_allocation(layer.index()).empty(), "L3 layer {} has no allocation", layer.index());
    llama_->set_l3_allocation(layer.index(), source_model.l3_allocation(layer.index()), "the model's allocation");
  }
  // The trunk: every parameter but the tables, in registry order (an MoE layer's experts stay adjacent).
  for (const ParamInfo& p : llama_->registry().params())
    if (p.group != "l3_table") trunk_registry_.add(p.name, p.shape, p.init, p.init_std, p.group);
  trunk_ = FlatBuffer(trunk_registry_.total(), dtype, device);
  auto checked = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const Tensor t = source(name);
    if (!same_shape(t, shape)) {
      Tensor expected(nullptr, DType::F32, {1});
      expected.ndim = static_cast<int>(shape.size());
      std::copy(shape.begin(), shape.end(), expected.shape.begin());
      fail("{}: {} has shape {}, the model expects {}", file ? file->path() : "the weights", name, t.shape_string(),
           expected.shape_string());
    }
    return t;
  };
  for (const ParamInfo& p : trunk_registry_.params()) upload(trunk_.view(p), checked(p.name, p.shape));

  auto get = [&](const std::string& name) { return trunk_.view(trunk_registry_.find(name)); };
  const ModelConfig& m = config_.model;
  weights_.embed = get("model.embed_tokens.weight");
  weights_.final_norm = get("model.norm.weight");
  weights_.lm_head = m.tie_embeddings ? weights_.embed : get("lm_head.weight");
  for (int64_t i = 0; i < m.n_layers; ++i) weights_.layers.push_back(llama_->layer_weights(trunk_, trunk_registry_, i));
  for (const MoeLayer& layer : llama_->moe_layers()) weights_.moe.push_back(layer.weights(trunk_, trunk_registry_));
  for (const L3Layer& layer : llama_->l3_layers()) {
    L3Layer::Weights w;
    w.norm_in = get(layer.name("norm_in.weight"));
    w.w_up = get(layer.name("w_up.weight"));
    w.norm_out = get(layer.name("norm_out.weight"));
    w.w_mix = get(layer.name("w_mix.weight"));
    weights_.l3.push_back(w);
    const std::vector<int64_t> k_shape{m.l3.v, m.d_model}, v_shape{m.l3.v, m.l3.d_emb};
    const Tensor w_k = checked(layer.name("w_k"), k_shape);
    const Tensor w_v = m.l3.tie_kv ? w_k : checked(layer.name("w_v"), v_shape);
    tables_.push_back(std::make_unique<L3TableStore>(options_.tables, device, dtype, w_k, w_v, file));
  }
}

size_t InferenceModel::table_bytes_resident() const {
  size_t total = 0;
  for (const auto& t : tables_) total += t->resident_bytes();
  return total;
}

}  // namespace l3c
