// Tensor: a non-owning view of typed memory with a shape and a device. Storage is owned elsewhere
// (the parameter buffer, an activation arena); views are cheap to copy and never free anything.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/errors.h"

namespace l3c {

enum class DType : uint8_t { F32, F64, BF16, I32 };
enum class Device : uint8_t { CPU, CUDA };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::I32: return 4;
  }
  return 0;
}
const char* dtype_name(DType t);
const char* device_name(Device d);

// Maps a C++ type to its DType (used by Tensor::ptr<T>() to check the view's type).
template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }

struct Tensor {
  static constexpr int kMaxDims = 4;
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};

  Tensor() = default;
  Tensor(void* data_, DType dtype_, std::initializer_list<int64_t> dims, Device device_ = Device::CPU);

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  bool empty() const { return data == nullptr; }

  template <typename T> T* ptr() const {
    L3C_CHECK(dtype == dtype_of<T>(), "tensor holds {}, accessed as another type", dtype_name(dtype));
    return static_cast<T*>(data);
  }
  // The same memory seen with another shape of the same number of elements.
  Tensor view(std::initializer_list<int64_t> dims) const;
  // Rows [begin, end) of the first dimension.
  Tensor rows(int64_t begin, int64_t end) const;
  std::string shape_string() const;  // "(2, 16, 64)"
};

}  // namespace l3c
