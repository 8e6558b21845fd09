// Saving and loading model weights.
#include "runtime/model_io.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/errors.h"
#include "core/file_io.h"

namespace l3c {

std::vector<NamedTensor> model_tensors(const Llama& model, const FlatBuffer& params) {
  std::vector<NamedTensor> tensors;
  for (const ParamInfo& p : model.registry().params()) tensors.push_back({p.name, params.view(p)});
  for (const L3Layer& layer : model.l3_layers()) {
    const std::vector<int32_t>& counts = model.l3_allocation(layer.index());
    L3C_CHECK(!counts.empty(), "saving a model whose L3 layer {} has no allocation", layer.index());
    tensors.push_back({layer.alloc_name(), Tensor(const_cast<int32_t*>(counts.data()), DType::I32,
                                                  {static_cast<int64_t>(counts.size())})});
  }
  return tensors;
}

std::map<std::string, std::string> model_metadata(const Config& config) {
  return {{"format", "pt"}, {"l3c_config", config_to_json(config).dump()}};
}

void save_model(const std::string& path, const Llama& model, const FlatBuffer& params, const Config& config) {
  write_safetensors(path, model_tensors(model, params), model_metadata(config));
}

namespace {
template <typename Dst, typename Src>
void convert(Dst* dst, const Src* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
}
}  // namespace

void load_tensor(const SafetensorsFile& file, const std::string& name, const Tensor& dst) {
  if (!file.contains(name)) fail("{}: missing {}", file.path(), name);
  const Tensor& src = file.get(name);
  if (src.ndim != dst.ndim || !std::equal(dst.shape.begin(), dst.shape.begin() + dst.ndim, src.shape.begin()))
    fail("{}: {} has shape {}, the model expects {}", file.path(), name, src.shape_string(), dst.shape_string());
  const int64_t n = dst.numel();
  if (src.dtype == DType::F32 && dst.dtype == DType::F32) convert(dst.ptr<float>(), src.ptr<float>(), n);
  else if (src.dtype == DType::F32 && dst.dtype == DType::F64) convert(dst.ptr<double>(), src.ptr<float>(), n);
  else if (src.dtype == DType::F64 && dst.dtype == DType::F32) convert(dst.ptr<float>(), src.ptr<double>(), n);
  else if (src.dtype == DType::F64 && dst.dtype == DType::F64) convert(dst.ptr<double>(), src.ptr<double>(), n);
  else fail("{}: {} has dtype {}; expected f32 or f64", file.path(), name, dtype_name(src.dtype));
}

void load_params(const SafetensorsFile& file, const ParamRegistry& registry, FlatBuffer& params, ExtraTensors extra,
                 const std::string& prefix) {
  for (const ParamInfo& p : registry.params()) {
    const std::string name = prefix + p.name;
    if (!file.contains(name)) fail("{}: missing {}", file.path(), prefix.empty() ? "parameter " + name : name);
    load_tensor(file, name, params.view(p));
  }
  if (extra == ExtraTensors::Reject)
    for (const auto& [name, tensor] : file.tensors())
      if (name.rfind(prefix, 0) != 0 || !registry.contains(name.substr(prefix.size())))
        fail("{}: unexpected tensor {} (not a parameter of this model)", file.path(), name);
}

void load_model_state(const SafetensorsFile& file, Llama& model, FlatBuffer& params, ExtraTensors extra) {
  load_params(file, model.registry(), params, ExtraTensors::Ignore);
  load_l3_allocations(file, model);
  if (extra == ExtraTensors::Reject)
    for (const auto& [name, tensor] : file.tensors()) {
      bool known = model.registry().contains(name);
      for (const L3Layer& layer : model.l3_layers()) known = known || name == layer.alloc_name();
      if (!known) fail("{}: unexpected tensor {} (not a parameter of this model)", file.path(), name);
    }
}

void load_l3_allocations(const SafetensorsFile& file, Llama& model) {
  for (const L3Layer& layer : model.l3_layers()) {
    const std::string name = layer.alloc_name();
    if (!file.contains(name)) fail("{}: missing {} (the allocation of L3 layer {})", file.path(), name, layer.index());
    const Tensor& t = file.get(name);
    if (t.dtype != DType::I32 || t.ndim != 1)
      fail("{}: {} must be a 1-D I32 tensor of rows per token id, got {} {}", file.path(), name, dtype_name(t.dtype),
           t.shape_string());
    model.set_l3_allocation(layer.index(), std::vector<int32_t>(t.ptr<int32_t>(), t.ptr<int32_t>() + t.numel()),
                            fmt::format("{}: {}", file.path(), name));
  }
}

void write_config_json(const std::string& path, const Config& config) {
  write_file_atomic(path, config_to_json(config).dump(2) + "\n");  // errors name the system's reason
}

}  // namespace l3c
