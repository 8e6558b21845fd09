// Saving and loading model weights.
#include "train/model_io.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/errors.h"

namespace l3c {

void save_model(const std::string& path, const Llama& model, const FlatBuffer& params, const Config& config) {
  std::vector<NamedTensor> tensors;
  for (const ParamInfo& p : model.registry().params()) tensors.push_back({p.name, params.view(p)});
  for (const L3Layer& layer : model.l3_layers()) {
    const std::vector<int32_t>& counts = model.l3_allocation(layer.index());
    L3C_CHECK(!counts.empty(), "saving a model whose L3 layer {} has no allocation", layer.index());
    tensors.push_back({layer.alloc_name(), Tensor(const_cast<int32_t*>(counts.data()), DType::I32,
                                                  {static_cast<int64_t>(counts.size())})});
  }
  write_safetensors(path, tensors, {{"format", "pt"}, {"l3c_config", config_to_json(config).dump()}});
}

namespace {
template <typename Dst, typename Src>
void convert(Dst* dst, const Src* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
}
}  // namespace

void load_params(const SafetensorsFile& file, const ParamRegistry& registry, FlatBuffer& params, ExtraTensors extra) {
  for (const ParamInfo& p : registry.params()) {
    if (!file.contains(p.name)) fail("{}: missing parameter {}", file.path(), p.name);
    const Tensor& src = file.get(p.name);
    const Tensor dst = params.view(p);
    if (src.ndim != dst.ndim || !std::equal(dst.shape.begin(), dst.shape.begin() + dst.ndim, src.shape.begin()))
      fail("{}: parameter {} has shape {}, the model expects {}", file.path(), p.name, src.shape_string(),
           dst.shape_string());
    if (src.dtype == DType::F32 && dst.dtype == DType::F32) convert(dst.ptr<float>(), src.ptr<float>(), p.numel);
    else if (src.dtype == DType::F32 && dst.dtype == DType::F64) convert(dst.ptr<double>(), src.ptr<float>(), p.numel);
    else if (src.dtype == DType::F64 && dst.dtype == DType::F32) convert(dst.ptr<float>(), src.ptr<double>(), p.numel);
    else if (src.dtype == DType::F64 && dst.dtype == DType::F64) convert(dst.ptr<double>(), src.ptr<double>(), p.numel);
    else fail("{}: parameter {} has dtype {}; expected f32 or f64", file.path(), p.name, dtype_name(src.dtype));
  }
  if (extra == ExtraTensors::Reject)
    for (const auto& [name, tensor] : file.tensors())
      if (!registry.contains(name)) fail("{}: unexpected tensor {} (not a parameter of this model)", file.path(), name);
}

void load_model_state(const SafetensorsFile& file, Llama& model, FlatBuffer& params, ExtraTensors extra) {
  load_params(file, model.registry(), params, ExtraTensors::Ignore);
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
  if (extra == ExtraTensors::Reject)
    for (const auto& [name, tensor] : file.tensors()) {
      bool known = model.registry().contains(name);
      for (const L3Layer& layer : model.l3_layers()) known = known || name == layer.alloc_name();
      if (!known) fail("{}: unexpected tensor {} (not a parameter of this model)", file.path(), name);
    }
}

LoadedModel load_model_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) fail("--checkpoint {}: not a folder", dir);
  const std::string config_path = (fs::path(dir) / "config.json").string();
  const std::string weights_path = (fs::path(dir) / "model.safetensors").string();
  if (!fs::exists(config_path)) fail("{}: missing (a checkpoint folder holds config.json and model.safetensors)", config_path);
  if (!fs::exists(weights_path)) fail("{}: missing (a checkpoint folder holds config.json and model.safetensors)", weights_path);
  LoadedModel loaded;
  loaded.config = config_from_json(read_json_file(config_path));
  loaded.model = std::make_unique<Llama>(loaded.config.model);
  loaded.params = FlatBuffer(loaded.model->registry().total(),
                             loaded.config.train.dtype == "f64" ? DType::F64 : DType::F32);
  load_model_state(SafetensorsFile(weights_path), *loaded.model, loaded.params);
  return loaded;
}

void write_config_json(const std::string& path, const Config& config) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp);
    out << config_to_json(config).dump(2) << "\n";
    if (!out.flush()) fail("{}: cannot write", path);
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) fail("{}: cannot write: {}", path, ec.message());
}

}  // namespace l3c
