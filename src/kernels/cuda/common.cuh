// What every CUDA kernel file shares: the CUDA headers (or the host emulation, L3C_CUDA_EMULATION), error
// checks that name the file, line and call, the kernel launcher, bf16 <-> float conversion, dtype dispatch,
// deterministic warp and block reductions, the ops' device workspace and the cuBLAS handle.
//
// All work runs on one stream, the run's (stream(), not the legacy default stream, so that a step could be
// captured in a CUDA graph), in call order: a kernel may use the workspace while the next call waits for it, and
// results never depend on timing. No kernel uses floating-point atomics: every sum is
// computed by one thread in a fixed order or by a fixed reduction tree.
#pragma once
#ifdef L3C_CUDA_EMULATION
#include "kernels/cuda/emulation.h"
#else
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace l3c::ops::cuda {

using bf16 = __nv_bfloat16;

// Raises an InternalError "file:line: call: message".
[[noreturn]] void raise_cuda_error(const char* file, int line, const char* call, const char* message);

// Runs call (of status type `type`) and raises the error above unless it returned `success`; message(status) says why.
#define L3C_CUDA_STATUS_CHECK_(call, call_text, type, success, message)                          \
  do {                                                                                         \
    const type l3c_status_ = (call);                                                           \
    if (l3c_status_ != (success))                                                              \
      ::l3c::ops::cuda::raise_cuda_error(__FILE__, __LINE__, call_text, message(l3c_status_)); \
  } while (0)
#define L3C_CUDA_CHECK(call) L3C_CUDA_STATUS_CHECK_(call, #call, cudaError_t, cudaSuccess, cudaGetErrorString)
#define L3C_CUBLAS_CHECK(call) \
  L3C_CUDA_STATUS_CHECK_(call, #call, cublasStatus_t, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)

// A launch's grid and the place in the source that launches it (the caller's file and line, taken where the grid
// converts to this type), so that an error names the kernel launch that failed.
struct LaunchGrid {
  dim3 blocks;
  const char* file;
  int line;
  LaunchGrid(dim3 b, const char* f = __builtin_FILE(), int l = __builtin_LINE()) : blocks(b), file(f), line(l) {}
  LaunchGrid(unsigned b, const char* f = __builtin_FILE(), int l = __builtin_LINE()) : blocks(b), file(f), line(l) {}
  LaunchGrid(int b, const char* f = __builtin_FILE(), int l = __builtin_LINE())
      : blocks(static_cast<unsigned>(b)), file(f), line(l) {}
};

// After a launch: raises an InternalError naming the op being run (ops.cpp's CurrentOp) and the launch site when
// the launch failed or, with L3C_CUDA_SYNC=1 (which synchronises here after every launch), the kernel failed.
void check_launch(const char* file, int line);

// The stream every op runs on (device.cu; created on first use).
cudaStream_t stream();

// The launch record (kernels/device.h, cuda_record_launches; device.cu): whether it is on, and adding a line for
// `what` queued at file:line with the bytes of its arguments (record_bytes).
bool recording_launches();
void add_launch_record(const char* what, const char* file, int line, const std::string& arguments);
// The bytes of each value in hex, a space before each. The kernels' arguments are scalars, pointers and structs
// without padding, so equal bytes are equal arguments.
template <typename... Values>
std::string record_bytes(const Values&... values) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  auto add = [&text](const auto& value) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(&value);
    text += ' ';
    for (size_t i = 0; i < sizeof value; ++i) {
      text += kDigits[bytes[i] >> 4];
      text += kDigits[bytes[i] & 15];
    }
  };
  (add(values), ...);
  return text;
}
// Adds `what` (a string literal) with the values to the launch record when it is on.
#define L3C_RECORD_QUEUED(what, ...)                                                     \
  do {                                                                                   \
    if (::l3c::ops::cuda::recording_launches())                                          \
      ::l3c::ops::cuda::add_launch_record(what, __FILE__, __LINE__,                      \
                                          ::l3c::ops::cuda::record_bytes(__VA_ARGS__));  \
  } while (0)

// Launches kernel<<<grid, block, shared_bytes>>>(args...) on the run's stream and checks the launch.
// Arguments convert to the kernel's parameter types here, so a launch reads like a call.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), LaunchGrid grid, dim3 block, size_t shared_bytes, Args... args) {
  const dim3 blocks = grid.blocks;
  if (blocks.x == 0 || blocks.y == 0 || blocks.z == 0) return;  // nothing to do
  if (recording_launches())
    add_launch_record("kernel", grid.file, grid.line,
                      record_bytes(reinterpret_cast<uintptr_t>(kernel), blocks.x, blocks.y, blocks.z, block.x, block.y,
                                   block.z, shared_bytes, static_cast<Params>(args)...));
#ifdef L3C_CUDA_EMULATION
  l3c_emu::launch(blocks, block, shared_bytes, [=] { kernel(static_cast<Params>(args)...); });
#else
  kernel<<<blocks, block, shared_bytes, stream()>>>(static_cast<Params>(args)...);
#endif
  check_launch(grid.file, grid.line);
}

// Dynamic shared memory of a kernel, as an array of `type`.
#ifdef L3C_CUDA_EMULATION
#define L3C_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::l3c_emu::dynamic_shared())
#else
#define L3C_DYNAMIC_SHARED(type, name)                                  \
  extern __shared__ __align__(16) unsigned char l3c_dynamic_shared_[]; \
  type* name = reinterpret_cast<type*>(l3c_dynamic_shared_)
#endif

// Lets a kernel use more than 48 KiB of dynamic shared memory (sm_80: up to 163 KiB, sm_90: 227 KiB).
template <typename... Params>
void allow_shared_bytes(void (*kernel)(Params...), size_t bytes) {
  if (bytes > 48 * 1024)
    L3C_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}
// launch() of a kernel whose dynamic shared memory may be above 48 KiB: allowed first.
template <typename... Params, typename... Args>
void launch_with_shared(void (*kernel)(Params...), LaunchGrid grid, dim3 block, size_t shared_bytes, Args... args) {
  allow_shared_bytes(kernel, shared_bytes);
  launch(kernel, grid, block, shared_bytes, args...);
}

// ---- element types: storage T (float or bf16), arithmetic in float ------------------------------------
__host__ __device__ __forceinline__ float to_float(float x) { return x; }
__host__ __device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
template <typename T>
__host__ __device__ __forceinline__ T from_float(float x);
template <>
__host__ __device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__host__ __device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16(x);  // round to nearest even
}

template <typename T>
struct TypeTag {
  using type = T;
};
[[noreturn]] void unsupported_dtype(const char* op, DType dtype);
// Calls fn(TypeTag<float>) or fn(TypeTag<bf16>) for an F32 / BF16 dtype; any other is an internal error.
template <typename Fn>
decltype(auto) dispatch_float(DType dtype, const char* op, Fn&& fn) {
  if (dtype == DType::F32) return fn(TypeTag<float>{});
  if (dtype == DType::BF16) return fn(TypeTag<bf16>{});
  unsupported_dtype(op, dtype);
}
// For the ops that accumulate parameter gradients: calls fn(TypeTag<T>, TypeTag<G>) with T the call's dtype and G
// the gradient's: (f32, f32), (bf16, bf16), or (bf16, f32), the mixed-precision case (fp32 gradient accumulation).
template <typename Fn>
decltype(auto) dispatch_gradient(DType dtype, DType grad_dtype, const char* op, Fn&& fn) {
  if (dtype == DType::BF16 && grad_dtype == DType::F32) return fn(TypeTag<bf16>{}, TypeTag<float>{});
  if (grad_dtype != dtype) unsupported_dtype(op, grad_dtype);
  return dispatch_float(dtype, op, [&](auto tag) { return fn(tag, tag); });
}

// ---- attention shapes --------------------------------------------------------------------------------
// The dimensions of a causal attention call: q, out (B, T, heads, hd), k, v (B, T, kv_heads, hd), lse (B, heads, T),
// and where element 0 of a row starts in each.
struct AttentionDims {
  int batch, seq, heads, kv_heads, hd;
  __host__ __device__ int group() const { return heads / kv_heads; }
  // The scores' scale 1 / sqrt(hd), computed in double and rounded once.
  float scale() const { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))); }
  // Offsets of element 0 of row t of head h in a (B, T, heads, hd) tensor and of kv head g in (B, T, Hkv, hd).
  __host__ __device__ int64_t q_offset(int b, int t, int h) const {
    return ((static_cast<int64_t>(b) * seq + t) * heads + h) * hd;
  }
  __host__ __device__ int64_t kv_offset(int b, int t, int g) const {
    return ((static_cast<int64_t>(b) * seq + t) * kv_heads + g) * hd;
  }
  __host__ __device__ int64_t lse_offset(int b, int h, int t) const {
    return (static_cast<int64_t>(b) * heads + h) * seq + t;
  }
};
// The dimensions of q and k, each at most `limit` (what the kernels' grids and int indices take); `kernels` names
// them in the error.
inline AttentionDims attention_dims(const Tensor& q, const Tensor& k, int64_t limit, const char* kernels) {
  auto narrow = [&](int64_t v) {
    L3C_CHECK(v > 0 && v <= limit, "ops::attention: dimension {} is too large for the {}", v, kernels);
    return static_cast<int>(v);
  };
  return {narrow(q.dim(0)), narrow(q.dim(1)), narrow(q.dim(2)), narrow(k.dim(2)), narrow(q.dim(3))};
}

// ---- rotary position embedding ----------------------------------------------------------------------
// The angle of pair i at position t, in double (as the CPU computes it): t * theta^(-2i / head_dim).
__device__ __forceinline__ double rope_angle(int64_t t, int64_t i, int64_t head_dim, double theta) {
  return static_cast<double>(t) * pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
}
// Rotates the pair (row[i], row[i + half]) of one head's row by the angle whose cosine and sine are c and s.
template <typename T>
__device__ __forceinline__ void rotate_pair(T* row, int64_t i, int64_t half, float c, float s) {
  const float a = to_float(row[i]), b = to_float(row[i + half]);
  row[i] = from_float<T>(a * c - b * s);
  row[i + half] = from_float<T>(b * c + a * s);
}
// The cosine and sine a pair turns by.
struct RopeTurn {
  float c, s;
};
// Rotates every pair of x (B, T, heads, head_dim), one pair per thread of a grid-stride loop: pair i < head_dim / 2
// of the head rows at batch row b and position t < T turns by turn(b, t, i) (a RopeTurn).
template <typename T, typename Turn>
__device__ __forceinline__ void rotate_pairs(T* x, int64_t batch, int64_t positions, int64_t heads, int64_t head_dim,
                                             Turn turn) {
  const int64_t half = head_dim / 2;
  const int64_t pairs = batch * positions * heads * half;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < pairs;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % half;
    const int64_t row = e / half;  // (b * T + t) * heads + h
    const int64_t bt = row / heads;
    const RopeTurn r = turn(bt / positions, bt % positions, i);
    rotate_pair(x + row * head_dim, i, half, r.c, r.s);
  }
}

// ---- deterministic reductions (fixed trees; blockDim.x a multiple of 32, 1-D blocks) --------------------
// After a butterfly every lane holds the same bits: a + b == b + a exactly.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  return v;
}
// Sums over the TPK consecutive lanes of a group (TPK a power of two <= 32); every lane of the group gets it.
template <int TPK>
__device__ __forceinline__ float group_sum(float v) {
  for (int offset = TPK / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  return v;
}

// Block-wide sum / max, returned to every thread. scratch: 32 values of shared memory. Every thread of the
// block must call it (it holds two __syncthreads).
template <typename V>
__device__ __forceinline__ V block_sum(V v, V* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // an earlier use of scratch has been read by everyone
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  V total = scratch[0];
  for (int w = 1; w < warps; ++w) total += scratch[w];
  return total;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  v = warp_max(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float result = scratch[0];
  for (int w = 1; w < warps; ++w) result = fmaxf(result, scratch[w]);
  return result;
}

// ---- groups given by offsets ----------------------------------------------------------------------------
// The group u with offsets[u] <= i < offsets[u + 1], for offsets (groups + 1) ascending with offsets[0] <= i <
// offsets[groups] (empty groups are never found): a binary search.
__device__ __forceinline__ int64_t find_group(const int32_t* offsets, int64_t groups, int64_t i) {
  int64_t lo = 0, hi = groups;  // offsets[lo] <= i < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (offsets[mid] <= i) lo = mid;
    else hi = mid;
  }
  return lo;
}

// ---- launch geometry ---------------------------------------------------------------------------------
inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}
// Grid-stride loops cap the grid: enough blocks to fill any GPU, independent of the device (so that a fixed
// partition never depends on the machine). kPartialBlocks: the fixed number of per-block partial sums of the
// two-pass reductions. (The host emulation runs every thread as a fiber: it uses small grids, unless
// L3C_EMULATION_GPU_GRIDS=1 asks for the GPU's.)
#ifdef L3C_CUDA_EMULATION
inline const unsigned kMaxGridBlocks = l3c_emu::g_gpu_grids ? 4096 : 16;
inline const int kPartialBlocks = l3c_emu::g_gpu_grids ? 1024 : 8;
#else
constexpr unsigned kMaxGridBlocks = 4096;
constexpr int kPartialBlocks = 1024;
#endif
inline unsigned capped_blocks(int64_t n, int threads) {
  const unsigned b = blocks_for(n, threads);
  return b < kMaxGridBlocks ? b : kMaxGridBlocks;
}

// ---- workspace and cuBLAS ------------------------------------------------------------------------------
// Device scratch memory shared by the ops, one buffer that grows when a call needs more (callers size it up
// front with reserve_workspace, so that a step never allocates). A call takes its pieces with Carve.
void* workspace(size_t bytes);
class Carve {
 public:
  explicit Carve(void* base) : base_(static_cast<unsigned char*>(base)) {}
  template <typename T>
  T* take(int64_t count) {
    offset_ = (offset_ + 255) / 256 * 256;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += static_cast<size_t>(count) * sizeof(T);
    return p;
  }
  size_t bytes() const { return offset_ + 256; }

 private:
  unsigned char* base_;
  size_t offset_ = 0;
};

cublasHandle_t cublas();

}  // namespace l3c::ops::cuda
