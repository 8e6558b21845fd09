// Arena: bump allocation over one block of device memory.
#include "kernels/arena.h"

#include "core/checked.h"

namespace l3c {

Arena::Arena(size_t capacity_bytes, std::string name, Device device)
    : storage_(capacity_bytes, device, "the " + name + " arena"), device_(device), capacity_(capacity_bytes),
      name_(std::move(name)) {}

Tensor Arena::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dtype, shape, device_);
  // Shapes follow from config sizes: a sum that does not fit is an error, never a wrapped-around offset.
  const size_t offset = (used_ + kAlignment - 1) / kAlignment * kAlignment;
  const auto numel = static_cast<size_t>(checked_numel(std::span(shape.begin(), shape.size()), "activation memory"));
  const size_t end = checked_add(offset, checked_mul(numel, dtype_size(dtype), "activation memory"), "activation memory");
  if (!measuring()) {
    L3C_CHECK(end <= capacity_, "{} arena overflow: {} of {} bytes", name_, end, capacity_);
    t.data = storage_.data() + offset;
  }
  used_ = end;
  if (used_ > peak_) peak_ = used_;
  return t;
}

}  // namespace l3c
