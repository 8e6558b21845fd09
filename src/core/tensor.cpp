// Tensor view helpers: names of dtypes and devices, shapes, sub-views.
#include "core/tensor.h"

namespace l3c {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

Tensor::Tensor(void* data_, DType dtype_, std::initializer_list<int64_t> dims, Device device_)
    : data(data_), dtype(dtype_), device(device_), ndim(static_cast<int>(dims.size())) {
  L3C_CHECK(ndim <= kMaxDims, "at most {} dimensions, got {}", kMaxDims, ndim);
  int i = 0;
  for (int64_t d : dims) shape[i++] = d;
}

Tensor Tensor::view(std::initializer_list<int64_t> dims) const {
  Tensor t(data, dtype, dims, device);
  L3C_CHECK(t.numel() == numel(), "view {} of a tensor {}", t.shape_string(), shape_string());
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  L3C_CHECK(ndim >= 1 && 0 <= begin && begin <= end && end <= shape[0], "rows [{}, {}) of {}", begin,
            end, shape_string());
  Tensor t = *this;
  const int64_t row_elems = numel() / (shape[0] == 0 ? 1 : shape[0]);
  // A tensor without memory (an arena that only measures) stays without: no offset from a null pointer.
  t.data = data == nullptr ? nullptr : static_cast<char*>(data) + begin * row_elems * dtype_size(dtype);
  t.shape[0] = end - begin;
  return t;
}

std::string Tensor::shape_string() const {
  std::string s = "(";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

}  // namespace l3c
