// Which accelerators this build can use, and device memory for the buffers that live on them. Without the
// CUDA backend (L3C_CUDA=OFF) or without a GPU, cuda_device_count() is 0, and the memory functions are
// internal errors (nothing calls them unless a GPU was found).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace l3c {

bool built_with_cuda();
// True when the CUDA backend runs on the host emulation (L3C_CUDA_EMULATION, for tests without a GPU).
bool cuda_emulated();
int cuda_device_count();
// "NVIDIA H100 80GB HBM3, 79.1 GiB, sm_90" for device `index`.
std::string cuda_device_description(int index);

// The compute capability (major, minor) of GPU `index`: {9, 0} for sm_90.
std::pair<int, int> cuda_compute_capability(int index);
// L3C_CUDA_SYNC: unset or "0", kernels run asynchronously (a failing kernel's error shows at a later call);
// "1", the backend synchronises after every kernel launch, so that the error names the op and the launch that
// failed (slower: for finding faults). Any other value is a UserError.
bool cuda_sync_after_launch();
// Device memory: a UserError naming `what`, the bytes asked for and the bytes free when the GPU cannot provide
// them, with what to change (micro-batch, sequence length, recomputation, model size).
void* cuda_malloc(size_t bytes, const std::string& what);
// Never throws (it runs in destructors, also while an exception unwinds): a failure, which only a GPU already in
// an error state gives, is logged once and the memory left to the process's end; the earlier error is the one
// reported.
void cuda_free(void* p) noexcept;
// (free, total) bytes of the current GPU.
std::pair<size_t, size_t> cuda_memory_info();

// Pinned (page-locked) host memory, which the GPU copies from asynchronously; UserError naming `what` when refused.
void* cuda_malloc_host(size_t bytes, const std::string& what);
void cuda_free_host(void* p) noexcept;  // never throws, as cuda_free
// Queues a copy of `bytes` from pinned host memory to device memory on the stream the ops run on, in order with
// them, and returns at once (the training step's token uploads): src must not change until the device has passed
// this point, which a later read-back or synchronisation shows.
void cuda_upload_async(void* dst, const void* src, size_t bytes);
// A copy stream beside the stream the ops run on (inference: L3 rows served from host memory). Copies issued on it
// overlap the ops' kernels; record marks the copies issued so far, and default_stream_wait makes the ops issued
// afterwards wait for them (on the GPU, without blocking the host).
void* cuda_create_copy_stream();
void cuda_destroy_copy_stream(void* stream);
void cuda_copy_to_device_async(void* stream, void* dst, const void* src, size_t bytes);  // src: pinned host memory
void cuda_copy_stream_record(void* stream);
void cuda_default_stream_wait(void* stream);
// How many times so far the host has waited for the GPU (blocking copies either way, read-backs, synchronisations,
// frees); 0 without the backend. A test reads it before and after a piece of code to show that it never waits.
// Each of these waits for all the work queued before it, so a count that has grown since an upload shows that the
// device has passed it.
int64_t cuda_host_synchronizations();
// Waits until the GPU has run everything queued so far (one of the waits counted above).
void cuda_synchronize();
// A record of what the host queues on the ops' stream, for tests that show that a training step queues the same
// work with the same arguments at every step (what replaying a step captured in a CUDA graph needs): while it is on,
// every kernel launch, cuBLAS product, asynchronous copy and memset adds a line (the place in the source that
// queued it, its grid and the bytes of each argument; blocking copies are waits, counted above, not queued work).
// cuda_take_launch_record returns the lines added since it was last called and clears them.
void cuda_record_launches(bool on);
std::vector<std::string> cuda_take_launch_record();

// The CUDA ops' workspace: scratch shared by the ops (the classifier's logits block, L3's softmax gradients,
// partial sums, the RoPE table). cuda_workspace_bytes is what the largest call of a training step needs for a
// model of these sizes; reserving it up front means a step never allocates (0 without the backend).
struct CudaWorkspaceShape {
  int64_t rows = 0;         // positions per micro-batch (B * T)
  int64_t seq_len = 0, head_dim = 0, vocab = 0;
  int64_t widest_norm = 0;  // the largest RMSNorm width (d_model, or L3's d_up)
  int64_t l3_width = 0;     // L3's k (0 without L3)
  int64_t moe_experts = 0, moe_top_k = 0;  // the MoE layers' E and top_k (0 without MoE)
  DType dtype = DType::F32;
};
size_t cuda_workspace_bytes(const CudaWorkspaceShape& shape);
void cuda_reserve_workspace(size_t bytes);

// Where owned memory lives: host memory, host memory pinned for the GPU's asynchronous copies, or GPU memory.
enum class MemoryKind { Host, PinnedHost, Gpu };

// Memory owned by one object and freed with it: every flat buffer, arena and table store holds one. Host memory
// is 64-byte aligned (the kernels' vector code takes the same path on every buffer, which bit-exact resume needs).
// Running out is a UserError naming `what` and the bytes it needed.
class DeviceMemory {
 public:
  static constexpr size_t kAlignment = 64;

  DeviceMemory() = default;
  DeviceMemory(size_t bytes, MemoryKind kind, const std::string& what);
  // Host memory on the CPU, GPU memory on CUDA.
  DeviceMemory(size_t bytes, Device device, const std::string& what)
      : DeviceMemory(bytes, device == Device::CUDA ? MemoryKind::Gpu : MemoryKind::Host, what) {}

  std::byte* data() const { return data_.get(); }

 private:
  std::unique_ptr<std::byte, void (*)(std::byte*)> data_{nullptr, nullptr};
};

}  // namespace l3c
