// The flat parameter registry: every parameter of a model is a named view (Hugging Face names, see
// MODEL.md) into one contiguous buffer. Gradients and AdamW moments are buffers of the same layout,
// so the optimizer, clipping, all-reduce and checkpoints each walk one buffer, not a list of tensors.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/device.h"

namespace l3c {

// NormalIdentity: a 2-D (rows, cols) weight whose columns [identity_column, identity_column + rows) start as the
// identity matrix and whose other columns are normal(0, init_std) (an L3 layer's W_mix with mix_init identity).
enum class InitKind { Normal, Ones, Zeros, NormalIdentity };

struct ParamInfo {
  std::string name;             // "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  int64_t offset = 0;           // in elements, into the flat buffer
  int64_t numel = 0;
  InitKind init = InitKind::Normal;
  double init_std = 0.0;        // for InitKind::Normal and NormalIdentity
  int64_t identity_column = 0;  // for InitKind::NormalIdentity: the first column of the identity block
  bool decay = true;            // AdamW weight decay applies (2-D weights by default)
  std::string group;            // component, for `inspect`: "embedding", "attention", "ffn", "norm", "lm_head"
};

class ParamRegistry {
 public:
  // Appends a parameter after the previous one. Weight decay defaults to "2-D or more".
  void add(std::string name, std::vector<int64_t> shape, InitKind init, double init_std, std::string group);
  // A (rows, cols) weight: normal(0, init_std), except columns [identity_column, identity_column + rows),
  // which start as the identity.
  void add_normal_identity(std::string name, int64_t rows, int64_t cols, int64_t identity_column, double init_std,
                           std::string group);

  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& find(const std::string& name) const;  // UserError naming the parameter if absent
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  int64_t total() const { return total_; }

 private:
  std::vector<ParamInfo> params_;
  std::map<std::string, size_t> index_;
  int64_t total_ = 0;
};

// Memory for one flat buffer (parameters, gradients or an optimizer moment): host memory, 64-byte aligned,
// or one device allocation on the GPU (Device::CUDA; running out is a UserError naming the buffer).
class FlatBuffer {
 public:
  FlatBuffer() = default;
  FlatBuffer(int64_t numel, DType dtype, Device device = Device::CPU);  // zero-filled

  Tensor all() const { return Tensor(data_.data(), dtype_, {numel_}, device_); }
  // The parameter's view with its shape (1-4 dims).
  Tensor view(const ParamInfo& p) const;
  int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  template <typename T> T* ptr() const { return all().ptr<T>(); }

 private:
  DeviceMemory data_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

// Fills params by each parameter's InitKind; normal draws come from the counter-based generator keyed
// by (seed, parameter index, element index), so initialisation is the same on any thread count. Elements past
// the registry's (padding) are left as they are.
void init_params(const ParamRegistry& registry, FlatBuffer& params, uint64_t seed);

}  // namespace l3c
