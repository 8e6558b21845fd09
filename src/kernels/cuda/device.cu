// CUDA runtime: GPU discovery, device memory with errors that say what to change, the ops' workspace, the
// cuBLAS handle, the GPU's tensor-core check, the error reporting of the L3C_CUDA_CHECK / L3C_CUBLAS_CHECK macros,
// and the record of the work queued (cuda_record_launches).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/errors.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"
#include "kernels/device.h"

namespace l3c::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error: no driver or no device means no GPU
    return 0;
  }
  return count;
}

std::string device_description(int index) {
  cudaDeviceProp prop{};
  char text[512];
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) {
    cudaGetLastError();
    std::snprintf(text, sizeof text, "device %d: unavailable", index);
  } else {
    std::snprintf(text, sizeof text, "%s, %.1f GiB, sm_%d%d", prop.name, prop.totalGlobalMem / 1073741824.0, prop.major,
                  prop.minor);
  }
  return text;
}

std::pair<int, int> compute_capability(int index) {
  cudaDeviceProp prop{};
  L3C_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return {prop.major, prop.minor};
}

std::pair<size_t, size_t> memory_info() {
  size_t free_bytes = 0, total_bytes = 0;
  L3C_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return {free_bytes, total_bytes};
}

void* malloc_bytes(size_t bytes, const std::string& what) {
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    cudaGetLastError();
    fail("out of GPU memory: {} needs {}, but only {} of the GPU's {} is free ({}); lower train.micro_batch or "
         "data.seq_len, turn on train.recompute, or choose a smaller model",
         what, format_bytes(static_cast<double>(bytes)), format_bytes(static_cast<double>(free_bytes)),
         format_bytes(static_cast<double>(total_bytes)), cudaGetErrorString(status));
  }
  return p;
}

void free_bytes(void* p) {
  if (p == nullptr) return;
  ops::cuda::count_host_synchronization();  // cudaFree waits for the device
  L3C_CUDA_CHECK(cudaFree(p));
}

void* malloc_host(size_t bytes, const std::string& what) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();
    fail("out of pinned host memory: {} needs {}", what, format_bytes(static_cast<double>(bytes)));
  }
  return p;
}

void free_host(void* p) {
  if (p != nullptr) L3C_CUDA_CHECK(cudaFreeHost(p));
}

// A copy stream and the event that marks the end of the copies issued on it so far.
struct CopyStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t done = nullptr;
};

void* create_copy_stream() {
  auto* copies = new CopyStream;
  L3C_CUDA_CHECK(cudaStreamCreateWithFlags(&copies->stream, cudaStreamNonBlocking));
  L3C_CUDA_CHECK(cudaEventCreateWithFlags(&copies->done, cudaEventDisableTiming));
  return copies;
}

void destroy_copy_stream(void* handle) {
  auto* copies = static_cast<CopyStream*>(handle);
  cudaStreamSynchronize(copies->stream);
  cudaEventDestroy(copies->done);
  cudaStreamDestroy(copies->stream);
  delete copies;
}

void copy_to_device_async(void* handle, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  L3C_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<CopyStream*>(handle)->stream));
}

void copy_stream_record(void* handle) {
  auto* copies = static_cast<CopyStream*>(handle);
  L3C_CUDA_CHECK(cudaEventRecord(copies->done, copies->stream));
}

void default_stream_wait(void* handle) {
  L3C_CUDA_CHECK(cudaStreamWaitEvent(ops::cuda::stream(), static_cast<CopyStream*>(handle)->done, 0));
}

void upload_async(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  L3C_RECORD_QUEUED("upload", dst, src, bytes);
  L3C_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ops::cuda::stream()));
}

}  // namespace l3c::cuda

namespace l3c::ops::cuda {

namespace {
thread_local const char* t_current_op = nullptr;  // the call as written in ops.cpp, or null outside an op

// " in ops::attention_forward" while an op runs, else "".
std::string in_current_op() {
  if (t_current_op == nullptr) return "";
  const char* open = std::strchr(t_current_op, '(');
  return " in ops::" + std::string(t_current_op, open ? open - t_current_op : std::strlen(t_current_op));
}

const char* file_name(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

// Kernels run asynchronously: an error a call returns may be an earlier kernel's.
std::string asynchronous_hint() {
  return l3c::cuda_sync_after_launch()
             ? ""
             : " (kernels run asynchronously, so the failure may be an earlier kernel's: rerun with L3C_CUDA_SYNC=1 "
               "to name the kernel that failed)";
}
}  // namespace

namespace {
std::atomic<bool> g_recording{false};
std::mutex g_record_mutex;
std::vector<std::string> g_record;  // guarded by g_record_mutex
}  // namespace

bool recording_launches() { return g_recording.load(std::memory_order_relaxed); }

void add_launch_record(const char* what, const char* file, int line, const std::string& arguments) {
  const std::lock_guard<std::mutex> lock(g_record_mutex);
  g_record.push_back(fmt::format("{} at {}:{}:{}", what, file_name(file), line, arguments));
}

void record_launches(bool on) { g_recording.store(on, std::memory_order_relaxed); }

std::vector<std::string> take_launch_record() {
  const std::lock_guard<std::mutex> lock(g_record_mutex);
  return std::exchange(g_record, {});
}

CurrentOp::CurrentOp(const char* call) : previous_(t_current_op) { t_current_op = call; }
CurrentOp::~CurrentOp() { t_current_op = previous_; }

void raise_cuda_error(const char* file, int line, const char* call, const char* message) {
  const bool cublas = std::strncmp(call, "cublas", 6) == 0;
  throw InternalError(fmt::format("{}:{}: CUDA call failed{}: {}: {}{}", file_name(file), line, in_current_op(), call,
                                  message, cublas ? "" : asynchronous_hint()));
}

void check_launch(const char* file, int line) {
  const bool synchronous = l3c::cuda_sync_after_launch();
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess && synchronous) status = cudaDeviceSynchronize();
  if (status == cudaSuccess) return;
  // Synchronised after every launch, the launches before this one were found fine: this kernel failed.
  if (synchronous)
    throw InternalError(fmt::format("CUDA error{}: the kernel launched at {}:{} failed: {}", in_current_op(),
                                    file_name(file), line, cudaGetErrorString(status)));
  throw InternalError(fmt::format("CUDA error{}, seen when launching the kernel at {}:{}: {}{}", in_current_op(),
                                  file_name(file), line, cudaGetErrorString(status), asynchronous_hint()));
}

void unsupported_dtype(const char* op, DType dtype) {
  L3C_CHECK(false, "ops::{}: the CUDA backend computes in f32 or bf16, got {}", op, dtype_name(dtype));
  __builtin_unreachable();
}

cudaStream_t stream() {
  // A blocking stream (not cudaStreamNonBlocking): work on the legacy default stream (a synchronous cudaMemcpy, an
  // event NCCL records there) still orders itself after the work queued here, as it did when everything ran there.
  static cudaStream_t run_stream = [] {
    cudaStream_t s = nullptr;
    L3C_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamDefault));
    return s;
  }();
  return run_stream;
}

namespace {
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};
Workspace& the_workspace() {
  static Workspace w;
  return w;
}
}  // namespace

void reserve_workspace(size_t bytes) {
  Workspace& w = the_workspace();
  if (bytes <= w.bytes) return;
  // cudaFree waits for the work queued before it, so no kernel still uses the old buffer.
  l3c::cuda::free_bytes(w.data);
  w.data = nullptr;
  w.bytes = 0;
  w.data = l3c::cuda::malloc_bytes(bytes, "the CUDA ops' workspace");
  w.bytes = bytes;
}

size_t workspace_capacity() { return the_workspace().bytes; }

void* workspace(size_t bytes) {
  reserve_workspace(bytes);
  return the_workspace().data;
}

size_t workspace_bytes_for(const l3c::CudaWorkspaceShape& s) {
  // Mirrors what each op takes (the files named): the largest is reserved; more is allocated if ever needed.
  const size_t pad = 1024;
  size_t bytes = classifier_workspace_bytes(s.rows, s.vocab, s.dtype);                                // classifier.cu
  bytes = std::max(bytes, static_cast<size_t>(s.rows + s.vocab + 1) * sizeof(int32_t) + pad);          // embedding.cu
  bytes = std::max(bytes, static_cast<size_t>((s.rows + 63) / 64 * s.widest_norm) * sizeof(double) + pad);  // rmsnorm.cu
  bytes = std::max(bytes, static_cast<size_t>(s.seq_len * s.head_dim) * sizeof(float) + pad);         // rope.cu
  bytes = std::max(bytes, static_cast<size_t>(s.rows * s.l3_width) * sizeof(float) + pad);           // l3.cu
  bytes = std::max(bytes, static_cast<size_t>(kPartialBlocks + 1) * sizeof(double) + pad);            // elementwise.cu
  bytes = std::max(bytes, moe_workspace_bytes(s.rows * s.moe_top_k, s.moe_experts));                  // moe.cu
  return bytes;
}

void synchronize() {
  count_host_synchronization();
  L3C_CUDA_CHECK(cudaDeviceSynchronize());
}

namespace {
std::atomic<int64_t> g_host_synchronizations{0};
}  // namespace
void count_host_synchronization() { g_host_synchronizations.fetch_add(1, std::memory_order_relaxed); }
int64_t host_synchronizations() { return g_host_synchronizations.load(std::memory_order_relaxed); }

bool gpu_has_bf16_tensor_cores() {
  static const bool has = [] {
    int device = 0;
    L3C_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop;
    L3C_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    return prop.major >= 8;
  }();
  return has;
}

cublasHandle_t cublas() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    L3C_CUBLAS_CHECK(cublasCreate(&h));
    L3C_CUBLAS_CHECK(cublasSetStream(h, stream()));
    // fp32 products stay fp32 (no TF32), so fp32 mode compares exactly with the CPU; bf16 products use
    // tensor cores with fp32 accumulation (CUBLAS_COMPUTE_32F).
    L3C_CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    return h;
  }();
  return handle;
}

}  // namespace l3c::ops::cuda
