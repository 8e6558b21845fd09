// Arena: one allocation carved into tensors by a bump pointer, reset every step. Activations and
// their gradients live here, so a step never calls malloc. The allocation is host memory, or one device
// allocation on the GPU (Device::CUDA), sized up front; running out of GPU memory is a UserError that says
// how much was needed and what to change.
//
// An arena can first run in measuring mode (no memory; allocations only count bytes): the model
// performs its allocation sequence once to learn its exact footprint, which is both what
// `l3c inspect` reports and what the real arena reserves.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/tensor.h"
#include "kernels/device.h"

namespace l3c {

class Arena {
 public:
  static constexpr size_t kAlignment = DeviceMemory::kAlignment;  // bytes; every tensor starts on a cache line

  Arena() = default;                         // measuring mode: counts, allocates nothing
  Arena(size_t capacity_bytes, std::string name, Device device = Device::CPU);  // backing mode

  bool measuring() const { return storage_.data() == nullptr; }
  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape);
  void reset() { used_ = 0; }

  size_t used() const { return used_; }
  size_t peak() const { return peak_; }
  size_t capacity() const { return capacity_; }
  Device device() const { return device_; }

 private:
  DeviceMemory storage_;
  Device device_ = Device::CPU;
  size_t capacity_ = 0;
  size_t used_ = 0;
  size_t peak_ = 0;
  std::string name_;
};

}  // namespace l3c
