// Parameter registry, flat buffers and initialisation.
#include "model/params.h"

#include "core/checked.h"
#include "core/limits.h"
#include "core/rng.h"
#include "kernels/device.h"
#include "kernels/ops.h"

namespace l3c {

void ParamRegistry::add(std::string name, std::vector<int64_t> shape, InitKind init, double init_std,
                        std::string group) {
  L3C_CHECK(!contains(name), "parameter {} registered twice", name);
  L3C_CHECK(!shape.empty() && shape.size() <= Tensor::kMaxDims, "parameter {}: bad rank", name);
  // Sizes come from a config: a model too large to describe is refused before its buffers exist.
  if (static_cast<int64_t>(params_.size()) >= limits::kMaxParamTensors)
    fail("the model has more than {} parameter tensors (at {}); lower model.n_layers or model.moe.experts",
         limits::kMaxParamTensors, name);
  ParamInfo p;
  p.numel = checked_numel(shape, fmt::format("parameter {}: the element count of its shape", name));
  if (checked_add(total_, p.numel, "the model's parameter count") > limits::kMaxParameters)
    fail("the model has more than {} parameters (at {}, {} elements); choose smaller model sizes",
         limits::kMaxParameters, name, p.numel);
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.offset = total_;
  p.init = init;
  p.init_std = init_std;
  p.decay = p.shape.size() >= 2;
  p.group = std::move(group);
  total_ += p.numel;
  index_[p.name] = params_.size();
  params_.push_back(std::move(p));
}

void ParamRegistry::add_normal_identity(std::string name, int64_t rows, int64_t cols, int64_t identity_column,
                                        double init_std, std::string group) {
  L3C_CHECK(identity_column >= 0 && identity_column + rows <= cols, "parameter {}: identity block [{}, {}) outside "
            "{} columns", name, identity_column, identity_column + rows, cols);
  add(std::move(name), {rows, cols}, InitKind::NormalIdentity, init_std, std::move(group));
  params_.back().identity_column = identity_column;
}

const ParamInfo& ParamRegistry::find(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("unknown parameter: {}", name);
  return params_[it->second];
}

FlatBuffer::FlatBuffer(int64_t numel, DType dtype, Device device)
    : data_(static_cast<size_t>(numel) * dtype_size(dtype), device,
            fmt::format("a {}-element {} buffer", numel, dtype_name(dtype))),
      numel_(numel), dtype_(dtype), device_(device) {
  ops::fill_zero(all());
}

Tensor FlatBuffer::view(const ParamInfo& p) const {
  L3C_CHECK(p.offset + p.numel <= numel_, "parameter {} outside the buffer", p.name);
  Tensor t(data_.data() + p.offset * dtype_size(dtype_), dtype_, {1}, device_);
  t.ndim = static_cast<int>(p.shape.size());
  for (int i = 0; i < t.ndim; ++i) t.shape[i] = p.shape[i];
  return t;
}

namespace {
template <typename T>
void init_typed(const ParamRegistry& registry, T* base, uint64_t seed) {
  const auto& params = registry.params();
  for (size_t index = 0; index < params.size(); ++index) {
    const ParamInfo& p = params[index];
    T* w = base + p.offset;
    if (p.init == InitKind::Normal) {
      const Philox rng(seed, RngPurpose::Init, index);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < p.numel; ++i) w[i] = static_cast<T>(p.init_std * rng.normal(static_cast<uint64_t>(i)));
    } else if (p.init == InitKind::NormalIdentity) {
      // The same draws as Normal outside the identity block, so that only the block differs.
      const Philox rng(seed, RngPurpose::Init, index);
      const int64_t rows = p.shape[0], cols = p.shape[1], first = p.identity_column;
#pragma omp parallel for schedule(static)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t i = r * cols + c;
          w[i] = c >= first && c < first + rows ? static_cast<T>(c - first == r ? 1 : 0)
                                                : static_cast<T>(p.init_std * rng.normal(static_cast<uint64_t>(i)));
        }
    } else {
      const T value = p.init == InitKind::Ones ? T(1) : T(0);
      for (int64_t i = 0; i < p.numel; ++i) w[i] = value;
    }
  }
}
}  // namespace

void init_params(const ParamRegistry& registry, FlatBuffer& params, uint64_t seed) {
  // A buffer may be longer than the registry (ZeRO-1 pads it to a multiple of the world size): the padding stays 0.
  L3C_CHECK(params.numel() >= registry.total(), "buffer size {} < registry {}", params.numel(), registry.total());
  if (params.device() != Device::CPU || params.dtype() == DType::BF16) {
    // Drawn on the host in f32 (the same values as a CPU run), then copied over and converted.
    FlatBuffer host(params.numel(), DType::F32);
    init_params(registry, host, seed);
    if (params.dtype() == DType::F32) {
      ops::copy(params.all(), host.all());
      return;
    }
    FlatBuffer staged(params.numel(), DType::F32, params.device());
    ops::copy(staged.all(), host.all());
    ops::convert(params.all(), staged.all());
    return;
  }
  switch (params.dtype()) {
    case DType::F32: init_typed(registry, params.ptr<float>(), seed); break;
    case DType::F64: init_typed(registry, params.ptr<double>(), seed); break;
    default: L3C_CHECK(false, "parameters must be f32 or f64, got {}", dtype_name(params.dtype()));
  }
}

}  // namespace l3c
