// Arena: bump allocation over one aligned host buffer.
#include "core/arena.h"

#include <cstdlib>
#include <new>

#include <fmt/format.h>

#include "core/checked.h"
#include "kernels/device.h"

namespace l3c {

void Arena::FreeDeleter::operator()(std::byte* p) const {
  if (device == Device::CUDA) cuda_free(p);
  else std::free(p);
}

Arena::Arena(size_t capacity_bytes, std::string name, Device device)
    : device_(device), capacity_(capacity_bytes), name_(std::move(name)) {
  const size_t rounded = (capacity_bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (device == Device::CUDA) {
    storage_ = std::unique_ptr<std::byte, FreeDeleter>(
        static_cast<std::byte*>(cuda_malloc(rounded == 0 ? kAlignment : rounded, "the " + name_ + " arena")),
        FreeDeleter{Device::CUDA});
    return;
  }
  void* p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (p == nullptr)
    fail("out of memory: the {} arena needs {}; lower train.micro_batch or data.seq_len", name_,
         format_bytes(static_cast<double>(capacity_bytes)));
  storage_.reset(static_cast<std::byte*>(p));
}

Tensor Arena::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dtype, shape, device_);
  // Shapes follow from config sizes: a sum that does not fit is an error, never a wrapped-around offset.
  const size_t offset = (used_ + kAlignment - 1) / kAlignment * kAlignment;
  const auto numel = static_cast<size_t>(checked_numel(std::span(shape.begin(), shape.size()), "activation memory"));
  const size_t end = checked_add(offset, checked_mul(numel, dtype_size(dtype), "activation memory"), "activation memory");
  if (!measuring()) {
    L3C_CHECK(end <= capacity_, "{} arena overflow: {} of {} bytes", name_, end, capacity_);
    t.data = storage_.get() + offset;
  }
  used_ = end;
  if (used_ > peak_) peak_ = used_;
  return t;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[u]);
}

}  // namespace l3c
