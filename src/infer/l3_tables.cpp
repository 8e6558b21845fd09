// L3 tables on the device, in host memory or mapped from the checkpoint, and the rows of a step.
#include "infer/l3_tables.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdlib>
#include <numeric>

#include "core/errors.h"
#include "kernels/device.h"
#include "kernels/ops.h"

namespace l3c {

L3StepGroups L3StepGroups::of(std::span<const int32_t> tokens) {
  L3StepGroups g;
  g.tokens.assign(tokens.begin(), tokens.end());
  std::sort(g.tokens.begin(), g.tokens.end());
  g.tokens.erase(std::unique(g.tokens.begin(), g.tokens.end()), g.tokens.end());
  const auto group_of = [&](int32_t token) {
    return static_cast<size_t>(std::lower_bound(g.tokens.begin(), g.tokens.end(), token) - g.tokens.begin());
  };
  // A counting sort by group: positions of one token keep their order (as ops::group_by_key does).
  g.group_offsets.assign(g.tokens.size() + 1, 0);
  for (int32_t token : tokens) ++g.group_offsets[group_of(token) + 1];
  std::partial_sum(g.group_offsets.begin(), g.group_offsets.end(), g.group_offsets.begin());
  std::vector<int32_t> next(g.group_offsets.begin(), g.group_offsets.end() - 1);
  g.order.resize(tokens.size());
  for (size_t n = 0; n < tokens.size(); ++n) g.order[next[group_of(tokens[n])]++] = static_cast<int32_t>(n);
  return g;
}

L3StepRows L3StepRows::of(const L3StepGroups& groups, const L3Rows& allocation) {
  L3StepRows r;
  r.row_offsets.assign(groups.tokens.size() + 1, 0);
  for (size_t g = 0; g < groups.tokens.size(); ++g) {
    const int32_t u = groups.tokens[g];
    const int32_t first = allocation.row_offsets[u], count = allocation.counts[u];
    r.row_offsets[g + 1] = r.row_offsets[g] + count;
    for (int32_t i = 0; i < count; ++i) r.table_rows.push_back(first + i);
  }
  return r;
}

namespace {
// dst (any device, any float dtype) = src (host memory, any float dtype), converting on the host when the dtypes differ.
void upload_converted(Tensor dst, Tensor src) {
  if (src.dtype == dst.dtype) return ops::copy(dst, src);
  if (dst.device == Device::CPU) return ops::convert(dst, src);
  std::vector<std::byte> host(dst.bytes());
  Tensor converted(host.data(), dst.dtype, {dst.numel()});
  ops::convert(converted, src.view({src.numel()}));
  ops::copy(dst.view({dst.numel()}), converted);
}

Tensor with_data(Tensor like, void* data, DType dtype, Device device) {
  like.data = data;
  like.dtype = dtype;
  like.device = device;
  return like;
}
}  // namespace

L3TableStore::L3TableStore(L3TableMode mode, Device device, DType dtype, Tensor w_k, Tensor w_v,
                           std::shared_ptr<const SafetensorsFile> file)
    : mode_(mode), device_(device), dtype_(dtype), tied_(w_v.data == w_k.data), file_(std::move(file)) {
  if (mode == L3TableMode::Mmap) {
    L3C_CHECK(file_ != nullptr, "L3 tables in mmap mode need the file they are mapped from");
    w_k_ = w_k;
    w_v_ = w_v;
  } else {
    // Device: next to the trunk; host: host memory, pinned for asynchronous copies when the trunk is on a GPU.
    const Device where = mode == L3TableMode::Device ? device : Device::CPU;
    const MemoryKind kind = device != Device::CUDA            ? MemoryKind::Host
                            : mode == L3TableMode::Device ? MemoryKind::Gpu
                                                          : MemoryKind::PinnedHost;
    auto place = [&](const Tensor& source) {
      const size_t bytes = static_cast<size_t>(source.numel()) * dtype_size(dtype);
      owned_.emplace_back(bytes, kind, "L3 table");
      Tensor placed = with_data(source, owned_.back().data(), dtype, where);
      upload_converted(placed, source);
      return placed;
    };
    w_k_ = place(w_k);
    w_v_ = tied_ ? w_k_ : place(w_v);
  }
  if (device_ == Device::CUDA && mode_ != L3TableMode::Device) copy_stream_ = cuda_create_copy_stream();
}

L3TableStore::~L3TableStore() {
  if (copy_stream_ != nullptr) cuda_destroy_copy_stream(copy_stream_);
}

size_t L3TableStore::resident_bytes() const {
  if (mode_ == L3TableMode::Mmap) return 0;
  return w_k_.bytes() + (tied_ ? 0 : w_v_.bytes());
}

size_t L3TableStore::step_bytes(int64_t rows) const {
  const size_t element = dtype_size(w_k_.dtype);
  return static_cast<size_t>(rows) * element * static_cast<size_t>(d_k() + (tied_ ? 0 : d_v()));
}

void L3TableStore::copy_rows_to_host(const L3StepRows& rows, const Tensor& table, Tensor step) const {
  for (size_t g = 0; g + 1 < rows.row_offsets.size(); ++g) {
    const int64_t r0 = rows.row_offsets[g], r1 = rows.row_offsets[g + 1];
    if (r1 == r0) continue;
    const int64_t first = rows.table_rows[r0];
    const Tensor source = table.rows(first, first + (r1 - r0));
    const Tensor target = step.rows(r0, r1);
    if (source.dtype == target.dtype) ops::copy(target, source);
    else ops::convert(target, source);
  }
}

void L3TableStore::drop_page_cache() {
  if (mode_ != L3TableMode::Mmap) return;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  for (const Tensor* table : {&w_k_, &w_v_}) {
    const auto begin = reinterpret_cast<uintptr_t>(table->data), aligned = begin / page * page;
    ::madvise(reinterpret_cast<void*>(aligned), begin - aligned + table->bytes(), MADV_DONTNEED);
  }
  const int fd = ::open(file_->path().c_str(), O_RDONLY);
  if (fd < 0) fail("{}: cannot open: {}", file_->path(), std::strerror(errno));
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

void L3TableStore::prefetch(const L3StepRows& rows, Tensor step_k, Tensor step_v) {
  if (mode_ == L3TableMode::Device) return;
  if (device_ == Device::CPU) {
    if (mode_ != L3TableMode::Mmap) return;
    // Ask the kernel to read the rows' pages ahead, so that the gather at the L3 layer finds them in memory.
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    for (const Tensor* table : {&w_k_, &w_v_}) {
      const size_t row_bytes = static_cast<size_t>(table->dim(1)) * dtype_size(table->dtype);
      for (size_t g = 0; g + 1 < rows.row_offsets.size(); ++g) {
        const int64_t r0 = rows.row_offsets[g], r1 = rows.row_offsets[g + 1];
        if (r1 == r0) continue;
        const auto begin = reinterpret_cast<uintptr_t>(table->data) + rows.table_rows[r0] * row_bytes;
        const uintptr_t aligned = begin / page * page;
        ::madvise(reinterpret_cast<void*>(aligned), begin - aligned + (r1 - r0) * row_bytes, MADV_WILLNEED);
      }
      if (tied_) break;
    }
    return;
  }
  // On the GPU: copy the rows on the side stream, from the pinned tables (host) or through pinned staging (mmap).
  const size_t k_bytes = static_cast<size_t>(rows.rows() * d_k()) * dtype_size(dtype_);
  const size_t v_bytes = tied_ ? 0 : static_cast<size_t>(rows.rows() * d_v()) * dtype_size(dtype_);
  if (mode_ == L3TableMode::Host) {
    for (const auto& [table, step] : {std::pair{&w_k_, step_k}, std::pair{&w_v_, step_v}}) {
      const size_t row_bytes = static_cast<size_t>(table->dim(1)) * dtype_size(dtype_);
      for (size_t g = 0; g + 1 < rows.row_offsets.size(); ++g) {
        const int64_t r0 = rows.row_offsets[g], r1 = rows.row_offsets[g + 1];
        cuda_copy_to_device_async(copy_stream_, static_cast<std::byte*>(step.data) + r0 * row_bytes,
                                  static_cast<const std::byte*>(table->data) + rows.table_rows[r0] * row_bytes,
                                  (r1 - r0) * row_bytes);
      }
      if (tied_) break;
    }
  } else {
    if (staging_bytes_ < k_bytes + v_bytes) {
      staging_ = DeviceMemory(k_bytes + v_bytes, MemoryKind::PinnedHost, "L3 row staging");
      staging_bytes_ = k_bytes + v_bytes;
    }
    copy_rows_to_host(rows, w_k_, with_data(step_k, staging_.data(), dtype_, Device::CPU));
    if (!tied_) copy_rows_to_host(rows, w_v_, with_data(step_v, staging_.data() + k_bytes, dtype_, Device::CPU));
    cuda_copy_to_device_async(copy_stream_, step_k.data, staging_.data(), k_bytes);
    if (!tied_) cuda_copy_to_device_async(copy_stream_, step_v.data, staging_.data() + k_bytes, v_bytes);
  }
  cuda_copy_stream_record(copy_stream_);
  prefetched_ = true;
}

void L3TableStore::gather(const L3StepRows& rows, Tensor step_k, Tensor step_v, Tensor table_rows_on_device) {
  if (device_ == Device::CPU) {
    copy_rows_to_host(rows, w_k_, step_k);
    if (!tied_) copy_rows_to_host(rows, w_v_, step_v);
    return;
  }
  if (mode_ == L3TableMode::Device) {
    ops::gather_rows(step_k, w_k_, table_rows_on_device);
    if (!tied_) ops::gather_rows(step_v, w_v_, table_rows_on_device);
    return;
  }
  if (!prefetched_) prefetch(rows, step_k, step_v);
  cuda_default_stream_wait(copy_stream_);
  prefetched_ = false;
}

}  // namespace l3c
