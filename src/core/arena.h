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
#include <memory>
#include <string>

#include "core/tensor.h"

namespace l3c {

class Arena {
 public:
  static constexpr size_t kAlignment = 64;  // bytes; every tensor starts on a cache line

  Arena() = default;                         // measuring mode: counts, allocates nothing
  Arena(size_t capacity_bytes, std::string name, Device device = Device::CPU);  // backing mode

  bool measuring() const { return storage_ == nullptr; }
  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape);
  void reset() { used_ = 0; }

  size_t used() const { return used_; }
  size_t peak() const { return peak_; }
  size_t capacity() const { return capacity_; }
  Device device() const { return device_; }

 private:
  struct FreeDeleter {
    FreeDeleter() : device(Device::CPU) {}
    explicit FreeDeleter(Device d) : device(d) {}
    Device device;
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte, FreeDeleter> storage_;
  Device device_ = Device::CPU;
  size_t capacity_ = 0;
  size_t used_ = 0;
  size_t peak_ = 0;
  std::string name_;
};

// "1.50 GiB", "12.0 MiB", "512 B".
std::string format_bytes(double bytes);

}  // namespace l3c
