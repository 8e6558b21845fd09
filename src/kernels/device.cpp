// Accelerator discovery and device memory; the CUDA runtime is only touched when the CUDA backend is built.
#include "kernels/device.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "core/errors.h"

#ifdef L3C_WITH_CUDA
namespace l3c::ops::cuda {
size_t workspace_bytes_for(const l3c::CudaWorkspaceShape& shape);
void reserve_workspace(size_t bytes);
int64_t host_synchronizations();
void synchronize();
void record_launches(bool on);
std::vector<std::string> take_launch_record();
}  // namespace l3c::ops::cuda
namespace l3c::cuda {
int device_count();
std::string device_description(int index);
std::pair<size_t, size_t> memory_info();
std::pair<int, int> compute_capability(int index);
void* malloc_bytes(size_t bytes, const std::string& what);
void free_bytes(void* p);
void* malloc_host(size_t bytes, const std::string& what);
void free_host(void* p);
void* create_copy_stream();
void destroy_copy_stream(void* handle);
void copy_to_device_async(void* handle, void* dst, const void* src, size_t bytes);
void copy_stream_record(void* handle);
void default_stream_wait(void* handle);
void upload_async(void* dst, const void* src, size_t bytes);
}  // namespace l3c::cuda
#endif

namespace l3c {

bool built_with_cuda() {
#ifdef L3C_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool cuda_emulated() {
#ifdef L3C_CUDA_EMULATION
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef L3C_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::string cuda_device_description(int index) {
#ifdef L3C_WITH_CUDA
  return cuda::device_description(index);
#else
  (void)index;
  return "CUDA backend not built";
#endif
}

void* cuda_malloc(size_t bytes, const std::string& what) {
#ifdef L3C_WITH_CUDA
  return cuda::malloc_bytes(bytes, what);
#else
  L3C_CHECK(false, "cuda_malloc({}) for {}: the CUDA backend is not part of this build", bytes, what);
  return nullptr;
#endif
}

namespace {
// A free that failed: logged once (an unwinding error frees many buffers), never thrown.
void report_failed_free(const char* what, const char* reason) {
  static std::atomic<bool> reported{false};
  if (reported.exchange(true)) return;
  try {
    spdlog::warn("releasing {} failed: {}; the memory is left to the end of the process (an earlier CUDA error, "
                 "reported separately, is the likely cause)", what, reason);
  } catch (...) {
  }
}
}  // namespace

void cuda_free(void* p) noexcept {
  try {
#ifdef L3C_WITH_CUDA
    cuda::free_bytes(p);
#else
    L3C_CHECK(p == nullptr, "cuda_free: the CUDA backend is not part of this build");
#endif
  } catch (const std::exception& e) {
    report_failed_free("GPU memory", e.what());
  } catch (...) {
    report_failed_free("GPU memory", "an unknown error");
  }
}

bool cuda_sync_after_launch() {
  const char* value = std::getenv("L3C_CUDA_SYNC");
  if (value == nullptr || std::strcmp(value, "0") == 0) return false;
  if (std::strcmp(value, "1") == 0) return true;
  fail("L3C_CUDA_SYNC must be 0 or 1 (1: synchronise after every kernel launch, so that an error names the "
       "kernel that failed), got \"{}\"", value);
}

std::pair<int, int> cuda_compute_capability(int index) {
#ifdef L3C_WITH_CUDA
  return cuda::compute_capability(index);
#else
  L3C_CHECK(false, "cuda_compute_capability({}): the CUDA backend is not part of this build", index);
  return {0, 0};
#endif
}

std::pair<size_t, size_t> cuda_memory_info() {
#ifdef L3C_WITH_CUDA
  return cuda::memory_info();
#else
  return {0, 0};
#endif
}

#ifdef L3C_WITH_CUDA
#define L3C_CUDA_ONLY(call) return cuda::call
#else
#define L3C_CUDA_ONLY(call) L3C_CHECK(false, "{}: the CUDA backend is not part of this build", #call)
#endif

void* cuda_malloc_host(size_t bytes, const std::string& what) {
  L3C_CUDA_ONLY(malloc_host(bytes, what));
  return nullptr;
}
void cuda_free_host(void* p) noexcept {
  try {
    L3C_CUDA_ONLY(free_host(p));
  } catch (const std::exception& e) {
    report_failed_free("pinned host memory", e.what());
  } catch (...) {
    report_failed_free("pinned host memory", "an unknown error");
  }
}
void* cuda_create_copy_stream() {
  L3C_CUDA_ONLY(create_copy_stream());
  return nullptr;
}
void cuda_destroy_copy_stream(void* stream) { L3C_CUDA_ONLY(destroy_copy_stream(stream)); }
void cuda_copy_to_device_async(void* stream, void* dst, const void* src, size_t bytes) {
  L3C_CUDA_ONLY(copy_to_device_async(stream, dst, src, bytes));
}
void cuda_copy_stream_record(void* stream) { L3C_CUDA_ONLY(copy_stream_record(stream)); }
void cuda_default_stream_wait(void* stream) { L3C_CUDA_ONLY(default_stream_wait(stream)); }
void cuda_upload_async(void* dst, const void* src, size_t bytes) { L3C_CUDA_ONLY(upload_async(dst, src, bytes)); }
#undef L3C_CUDA_ONLY

int64_t cuda_host_synchronizations() {
#ifdef L3C_WITH_CUDA
  return ops::cuda::host_synchronizations();
#else
  return 0;
#endif
}

void cuda_synchronize() {
#ifdef L3C_WITH_CUDA
  ops::cuda::synchronize();
#else
  L3C_CHECK(false, "cuda_synchronize: the CUDA backend is not part of this build");
#endif
}

void cuda_record_launches(bool on) {
#ifdef L3C_WITH_CUDA
  ops::cuda::record_launches(on);
#else
  (void)on;
#endif
}

std::vector<std::string> cuda_take_launch_record() {
#ifdef L3C_WITH_CUDA
  return ops::cuda::take_launch_record();
#else
  return {};
#endif
}

size_t cuda_workspace_bytes(const CudaWorkspaceShape& shape) {
#ifdef L3C_WITH_CUDA
  return ops::cuda::workspace_bytes_for(shape);
#else
  (void)shape;
  return 0;
#endif
}

void cuda_reserve_workspace(size_t bytes) {
#ifdef L3C_WITH_CUDA
  ops::cuda::reserve_workspace(bytes);
#else
  L3C_CHECK(bytes == 0, "cuda_reserve_workspace: the CUDA backend is not part of this build");
#endif
}

DeviceMemory::DeviceMemory(size_t bytes, MemoryKind kind, const std::string& what) {
  // Never a zero-byte allocation: an empty buffer still has an address that nothing else owns.
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  switch (kind) {
    case MemoryKind::Gpu:
      data_ = {static_cast<std::byte*>(cuda_malloc(rounded, what)), [](std::byte* p) { cuda_free(p); }};
      return;
    case MemoryKind::PinnedHost:
      data_ = {static_cast<std::byte*>(cuda_malloc_host(rounded, what)), [](std::byte* p) { cuda_free_host(p); }};
      return;
    case MemoryKind::Host:
      void* p = std::aligned_alloc(kAlignment, rounded);
      if (p == nullptr) fail("out of host memory: {} needs {}", what, format_bytes(static_cast<double>(bytes)));
      data_ = {static_cast<std::byte*>(p), [](std::byte* q) { std::free(q); }};
      return;
  }
}

}  // namespace l3c
