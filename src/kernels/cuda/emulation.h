// A host emulation of the part of CUDA the kernels use, so that they can be executed and checked on a
// machine without a GPU: with L3C_CUDA_EMULATION defined, the .cu files compile as C++ with this header in place
// of the CUDA headers (CMake builds them so into l3c_lib_emulated, for the emulated/ GPU tests).
//
// Every CUDA thread is a fiber (ucontext) with its own stack. All blocks run on one host thread of their own (the
// kernel thread; the launching thread waits); a fiber runs until it waits at __syncthreads or a warp collective (__shfl_*_sync, __ballot_sync, __syncwarp),
// which are barriers between fibers. The order is random and seeded: the blocks of a grid run one after another
// in a shuffled order, and in every round the fibers that can run (those not waiting at an unfinished barrier)
// run in a shuffled order, so that the threads of a phase between two barriers interleave differently from seed
// to seed. L3C_EMULATION_SEED (an unsigned integer; default 1) picks the order; 0 runs blocks and threads in
// index order. Device memory is host memory, filled with 0xFF bytes (NaN for floats) when allocated, so reading
// memory no kernel wrote shows; shared memory, dynamic and static (`__shared__` arrays), is filled the same way
// at the start of every block, so a block that reads shared memory it has not written reads NaN. cuBLAS GEMMs are
// plain loops over the column-major BLAS definition. Atomics exist for integers only (floating atomics would make
// results depend on scheduling, which the backend never does). Grids are capped small by default (see
// kMaxGridBlocks in common.cuh); L3C_EMULATION_GPU_GRIDS=1 gives the grids of the GPU.
//
// What it checks: the kernels' indexing, reductions, masking and barrier structure, run as written (a barrier
// some threads never reach, or a warp collective that not all 32 lanes reach, is reported as a deadlock), and
// races between the threads of a block through shared memory, in two ways: a thread that reads what another
// thread writes in the same phase (a missing __syncthreads) sees the old value under some seeds and the new one
// under others, so the result changes with L3C_EMULATION_SEED (the tests run under several seeds); and a value
// read before any thread of the block wrote it is NaN. A race is not reported where it happens: it shows as a
// result that differs from the CPU reference or between seeds (lanes of one warp interleave the same way between
// two collectives, so a missing __syncwarp shows too). What it cannot check: races through global memory between
// blocks (blocks run one at a time, whole), and performance. It is slow: for tests on small shapes only.
#pragma once
#include <dlfcn.h>
#include <link.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

// ---- runtime API subset ----------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrMultiProcessorCount = 16 };
using cudaStream_t = void*;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor, multiProcessorCount;
};

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
namespace l3c_emu {
// A fault of the device, as a kernel that reads out of bounds leaves it on a GPU: sticky, every later runtime
// call that waits for the device returns it. Tests set it (l3c_emu::g_device_fault) to check how the backend
// reports a failing kernel, and clear it afterwards, which a GPU cannot (its context is lost).
inline cudaError_t g_device_fault = cudaSuccess;
}  // namespace l3c_emu
inline cudaError_t cudaGetLastError() { return l3c_emu::g_device_fault; }
inline cudaError_t cudaPeekAtLastError() { return l3c_emu::g_device_fault; }
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline constexpr size_t kEmulatedMemory = size_t{16} << 30;
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int) {
  std::memset(prop, 0, sizeof *prop);
  std::snprintf(prop->name, sizeof prop->name, "CUDA emulation on the host");
  prop->totalGlobalMem = kEmulatedMemory;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 4;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 227 * 1024 : 4;
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = kEmulatedMemory;
  *total_bytes = kEmulatedMemory;
  return cudaSuccess;
}
inline cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = nullptr;
  if (bytes > kEmulatedMemory) return cudaErrorMemoryAllocation;
  // Exactly the bytes asked for (no rounding up), so that a memory checker (-fsanitize=address) sees any access
  // past the end; malloc's 16-byte alignment is all the kernels assume.
  void* p = std::malloc(std::max<size_t>(bytes, 1));
  if (p == nullptr) return cudaErrorMemoryAllocation;
  std::memset(p, 0xFF, std::max<size_t>(bytes, 1));  // NaN for floats: memory no kernel wrote shows in results
  *ptr = p;
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* ptr) {
  if (l3c_emu::g_device_fault != cudaSuccess) return l3c_emu::g_device_fault;  // as a GPU: freed with the context
  std::free(ptr);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (l3c_emu::g_device_fault != cudaSuccess) return l3c_emu::g_device_fault;
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t = nullptr) {
  return cudaMemcpy(dst, src, bytes, kind);
}
inline cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t = nullptr) {
  return cudaMemset(dst, value, bytes);
}
inline cudaError_t cudaDeviceSynchronize() { return l3c_emu::g_device_fault; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return l3c_emu::g_device_fault; }
// Streams and events: every call runs to completion when made, so a stream is a name and an event is always done.
using cudaEvent_t = void*;
enum { cudaStreamDefault = 0, cudaStreamNonBlocking = 1, cudaEventDisableTiming = 2, cudaHostAllocDefault = 0 };
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  static char name;
  *stream = &name;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  static char name;
  *event = &name;
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = nullptr) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned = 0) { return cudaSuccess; }
// Pinned host memory is host memory.
inline cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned) {
  *ptr = std::malloc(std::max<size_t>(bytes, 1));
  return *ptr == nullptr ? cudaErrorMemoryAllocation : cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F*, cudaFuncAttribute, int) {
  return cudaSuccess;
}

// ---- bfloat16 ------------------------------------------------------------------------------------------
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}

namespace l3c_emu {

// ---- the seeded order ------------------------------------------------------------------------------------
// The seed of L3C_EMULATION_SEED (1 when unset), read once; a value that is not an unsigned integer ends the
// process with a message.
inline uint64_t seed_from_environment() {
  const char* text = std::getenv("L3C_EMULATION_SEED");
  if (text == nullptr || *text == '\0') return 1;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (*end != '\0' || text[0] == '-' || text[0] == '+') {
    std::fprintf(stderr, "CUDA emulation: L3C_EMULATION_SEED must be an unsigned integer, got '%s'\n", text);
    std::exit(2);
  }
  return value;
}
// L3C_EMULATION_GPU_GRIDS: 1 gives the grid sizes of the GPU (common.cuh), unset or 0 small ones.
inline bool gpu_grids_from_environment() {
  const char* text = std::getenv("L3C_EMULATION_GPU_GRIDS");
  if (text == nullptr || *text == '\0' || std::strcmp(text, "0") == 0) return false;
  if (std::strcmp(text, "1") == 0) return true;
  std::fprintf(stderr, "CUDA emulation: L3C_EMULATION_GPU_GRIDS must be 0 or 1, got '%s'\n", text);
  std::exit(2);
}
inline const bool g_gpu_grids = gpu_grids_from_environment();

// The schedule's random numbers (SplitMix64), one stream for the whole process: the same seed and the same
// sequence of launches give the same schedule.
struct Schedule {
  uint64_t seed = seed_from_environment();
  uint64_t state = seed;
  bool in_order() const { return seed == 0; }
  void reseed(uint64_t new_seed) { seed = state = new_seed; }  // for tests that compare orders in one process
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  template <typename T>
  void shuffle(std::vector<T>& items) {  // Fisher-Yates; index order when the seed is 0
    if (in_order()) return;
    for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[next() % i]);
  }
};
inline Schedule g_schedule;

// ---- static shared memory ------------------------------------------------------------------------------
// `__shared__ T name[n];` declares a static thread_local variable, and every block runs on one host thread of
// its own (the kernel thread), on which nothing else runs: the static thread-local storage of the executable
// (its PT_TLS segment) holds on that thread only the kernels' shared variables, and launch() fills all of it with
// 0xFF bytes at the start of every block. (The other thread_local variables of the program get a copy there
// too, which no code on that thread ever uses.)
struct ThreadStorage {
  unsigned char* begin = nullptr;
  size_t bytes = 0;
};
// The calling thread's block of the executable's static thread-local storage.
inline ThreadStorage executable_thread_storage() {
  ThreadStorage storage;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        for (int i = 0; i < info->dlpi_phnum; ++i)
          if (info->dlpi_phdr[i].p_type == PT_TLS) static_cast<ThreadStorage*>(out)->bytes = info->dlpi_phdr[i].p_memsz;
        return 1;  // the first object listed is the executable
      },
      &storage);
  void* executable = dlopen(nullptr, RTLD_NOW);
  void* block = nullptr;
  if (executable == nullptr || dlinfo(executable, RTLD_DI_TLS_DATA, &block) != 0) block = nullptr;
  if (executable != nullptr) dlclose(executable);
  if (block == nullptr) storage.bytes = 0;
  storage.begin = static_cast<unsigned char*>(block);
  return storage;
}
// Fills [begin, begin + bytes) with 0xFF bytes (NaN for floats), as volatile stores: not a memset, which a
// memory checker may watch.
inline void poison_bytes(unsigned char* begin, size_t bytes) {
  for (volatile unsigned char *p = begin, *end = begin + bytes; p < end; ++p) *p = 0xFF;
}

// The host thread that runs every block, one job (a grid) at a time, while the caller waits.
class KernelThread {
 public:
  static KernelThread& instance() {
    static KernelThread thread;
    return thread;
  }
  void run(const std::function<void()>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = &job;
    changed_.notify_all();
    changed_.wait(lock, [&] { return job_ == nullptr; });
  }
  // The kernels' static shared memory, on the kernel thread.
  const ThreadStorage& shared_storage() const { return storage_; }
  ~KernelThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

 private:
  KernelThread() : thread_([this] { serve(); }) {}
  void serve() {
    std::unique_lock<std::mutex> lock(mutex_);
    storage_ = executable_thread_storage();
    for (;;) {
      changed_.wait(lock, [&] { return stop_ || job_ != nullptr; });
      if (job_ == nullptr) return;
      (*job_)();
      job_ = nullptr;
      changed_.notify_all();
    }
  }
  std::mutex mutex_;
  std::condition_variable changed_;
  const std::function<void()>* job_ = nullptr;
  bool stop_ = false;
  ThreadStorage storage_;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace l3c_emu

#define __shared__ static thread_local

namespace l3c_emu {

// ---- fibers ------------------------------------------------------------------------------------------
struct Fiber {
  ucontext_t context;
  uint3 thread_idx;
  int linear = 0;
  bool done = false;
  // While it waits at a barrier: the barrier's generation counter and its value when the fiber arrived; the
  // scheduler passes over the fiber until the counter moves.
  const uint64_t* waits_on = nullptr;
  uint64_t waited_generation = 0;
  bool runnable() const { return !done && (waits_on == nullptr || *waits_on != waited_generation); }
};

struct Warp {
  int arrived = 0;
  uint64_t generation = 0;
  uint64_t values[32];
  uint64_t snapshot[32];
};

struct Block {
  dim3 grid_dim, block_dim;
  uint3 block_idx;
  int threads = 0, live = 0;
  int barrier_arrived = 0;
  uint64_t barrier_generation = 0;
  uint64_t progress = 0;  // arrivals at barriers and finished fibers: a round without progress is a deadlock
  std::vector<Warp> warps;
  const std::function<void()>* body = nullptr;
};

inline Block* g_block = nullptr;
inline Fiber* g_fiber = nullptr;
inline ucontext_t g_scheduler;
inline std::vector<unsigned char> g_dynamic_shared;
inline constexpr size_t kStackBytes = 256 * 1024;
inline std::vector<std::unique_ptr<char[]>> g_stacks;

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "CUDA emulation: %s (block %u,%u,%u thread %u,%u,%u)\n", what,
               g_block ? g_block->block_idx.x : 0u, g_block ? g_block->block_idx.y : 0u,
               g_block ? g_block->block_idx.z : 0u, g_fiber ? g_fiber->thread_idx.x : 0u,
               g_fiber ? g_fiber->thread_idx.y : 0u, g_fiber ? g_fiber->thread_idx.z : 0u);
  std::abort();
}

inline void yield() { swapcontext(&g_fiber->context, &g_scheduler); }

// Waits until *generation moves past `arrived` (another fiber completes the barrier).
inline void wait_for(const uint64_t* generation, uint64_t arrived) {
  g_fiber->waits_on = generation;
  g_fiber->waited_generation = arrived;
  while (*generation == arrived) yield();
  g_fiber->waits_on = nullptr;
}

inline void fiber_entry() {
  try {
    (*g_block->body)();
  } catch (...) {
    die("an exception escaped a kernel");
  }
  g_fiber->done = true;
  --g_block->live;
  ++g_block->progress;
}  // returns to g_scheduler through uc_link

inline unsigned char* dynamic_shared() { return g_dynamic_shared.data(); }

// Makes f thread t of a block, ready to enter the kernel. (Not inlined into launch: getcontext returns twice,
// which would make the compiler doubt every local variable of its caller.)
[[gnu::noinline]] inline void start_fiber(Fiber& f, unsigned t, dim3 block_dim) {
  f.done = false;
  f.waits_on = nullptr;
  f.linear = static_cast<int>(t);
  f.thread_idx = {t % block_dim.x, t / block_dim.x % block_dim.y, t / (block_dim.x * block_dim.y)};
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = g_stacks[t].get();
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = &g_scheduler;
  makecontext(&f.context, fiber_entry, 0);
}

// Runs body once per thread of every block: the blocks in the schedule's order, and in every round the fibers
// that can run in the schedule's order.
// (On the kernel thread.)
inline void run_grid(dim3 grid, dim3 block_dim, size_t shared_bytes, const std::function<void()>& body) {
  const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
  const ThreadStorage& static_shared = KernelThread::instance().shared_storage();
  while (g_stacks.size() < threads) g_stacks.push_back(std::make_unique<char[]>(kStackBytes));
  std::vector<Fiber> fibers(threads);
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<uint64_t> block_order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) block_order[i] = i;
  g_schedule.shuffle(block_order);
  std::vector<Fiber*> round;
  round.reserve(threads);
  for (const uint64_t linear_block : block_order) {
    Block block;
    block.grid_dim = grid;
    block.block_dim = block_dim;
    block.block_idx = {static_cast<unsigned>(linear_block % grid.x), static_cast<unsigned>(linear_block / grid.x % grid.y),
                       static_cast<unsigned>(linear_block / (uint64_t{grid.x} * grid.y))};
    block.threads = block.live = static_cast<int>(threads);
    block.warps.assign((threads + 31) / 32, Warp{});
    block.body = &body;
    g_block = &block;
    g_dynamic_shared.assign(shared_bytes + 16, 0xFF);
    poison_bytes(static_shared.begin, static_shared.bytes);
    for (unsigned t = 0; t < threads; ++t) start_fiber(fibers[t], t, block_dim);
    while (block.live > 0) {
      const uint64_t before = block.progress;
      round.clear();
      for (Fiber& f : fibers)
        if (f.runnable()) round.push_back(&f);
      g_schedule.shuffle(round);
      for (Fiber* f : round) {
        g_fiber = f;
        swapcontext(&g_scheduler, &f->context);
      }
      g_fiber = nullptr;
      if (block.live > 0 && block.progress == before)
        die("deadlock: threads wait at a barrier (__syncthreads or a warp collective) others never reach");
    }
    g_block = nullptr;
  }
}

inline void launch(dim3 grid, dim3 block_dim, size_t shared_bytes, const std::function<void()>& body) {
  const unsigned threads = block_dim.x * block_dim.y * block_dim.z;
  if (threads == 0 || threads > 1024) die("a block must have 1 to 1024 threads");
  if (grid.y > 65535 || grid.z > 65535) die("grid.y and grid.z must be at most 65535");
  if (shared_bytes > 227 * 1024) die("more than 227 KiB of dynamic shared memory");
  KernelThread::instance().run([&] { run_grid(grid, block_dim, shared_bytes, body); });
}

// ---- barriers ------------------------------------------------------------------------------------------
inline void syncthreads() {
  Block& b = *g_block;
  if (b.live != b.threads) die("__syncthreads after some threads of the block returned");
  const uint64_t generation = b.barrier_generation;
  ++b.progress;
  if (++b.barrier_arrived == b.live) {
    b.barrier_arrived = 0;
    ++b.barrier_generation;
    return;
  }
  wait_for(&b.barrier_generation, generation);
}

// Every lane of the warp deposits a value; returns the values of all lanes once all have arrived. The
// kernels only use full-warp collectives (mask 0xffffffff, block sizes that are multiples of 32).
inline const uint64_t* warp_gather(unsigned mask, uint64_t value) {
  Block& b = *g_block;
  if (mask != 0xFFFFFFFFu) die("warp collectives must name all 32 lanes");
  if (b.threads % 32 != 0) die("warp collectives need a block size that is a multiple of 32");
  Warp& w = b.warps[g_fiber->linear / 32];
  const int lane = g_fiber->linear % 32;
  const uint64_t generation = w.generation;
  w.values[lane] = value;
  ++b.progress;
  if (++w.arrived == 32) {
    w.arrived = 0;
    std::memcpy(w.snapshot, w.values, sizeof w.values);
    ++w.generation;
  } else {
    wait_for(&w.generation, generation);
  }
  return w.snapshot;  // read before this fiber waits again: the next collective cannot complete earlier
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp values are at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  return bits;
}
template <typename T>
inline T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

inline int lane_id() { return g_fiber->linear % 32; }

}  // namespace l3c_emu

#define threadIdx (::l3c_emu::g_fiber->thread_idx)
#define blockIdx (::l3c_emu::g_block->block_idx)
#define blockDim (::l3c_emu::g_block->block_dim)
#define gridDim (::l3c_emu::g_block->grid_dim)
#define warpSize 32

inline void __syncthreads() { l3c_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) { l3c_emu::warp_gather(mask, 0); }
inline void __threadfence() {}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) l3c_emu::die("__shfl_xor_sync: only width 32");
  const uint64_t* all = l3c_emu::warp_gather(mask, l3c_emu::to_bits(v));
  return l3c_emu::from_bits<T>(all[(l3c_emu::lane_id() ^ lane_mask) & 31]);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  if (width != 32) l3c_emu::die("__shfl_sync: only width 32");
  const uint64_t* all = l3c_emu::warp_gather(mask, l3c_emu::to_bits(v));
  return l3c_emu::from_bits<T>(all[src_lane & 31]);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) l3c_emu::die("__shfl_down_sync: only width 32");
  const uint64_t* all = l3c_emu::warp_gather(mask, l3c_emu::to_bits(v));
  const int src = l3c_emu::lane_id() + static_cast<int>(delta);
  return src < 32 ? l3c_emu::from_bits<T>(all[src]) : v;
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const uint64_t* all = l3c_emu::warp_gather(mask, predicate ? 1 : 0);
  unsigned bits = 0;
  for (int i = 0; i < 32; ++i)
    if (all[i]) bits |= 1u << i;
  return bits;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }

// Integer atomics only: one fiber runs at a time and none waits inside, so these are atomic.
inline int atomicAdd(int* address, int value) {
  const int old = *address;
  *address = old + value;
  return old;
}
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  const unsigned old = *address;
  *address = old + value;
  return old;
}
inline int atomicOr(int* address, int value) {
  const int old = *address;
  *address = old | value;
  return old;
}

// ---- cuBLAS subset: GEMM with the column-major BLAS definition -----------------------------------------
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_PEDANTIC_MATH = 2 };
struct cublasContext {};
using cublasHandle_t = cublasContext*;

inline const char* cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE";
}
inline cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

namespace l3c_emu {
inline double load_element(const void* p, cudaDataType type, int64_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(p)[i];
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
inline void store_element(void* p, cudaDataType type, int64_t i, float v) {
  if (type == CUDA_R_32F) static_cast<float*>(p)[i] = v;
  else static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
}
}  // namespace l3c_emu

// C (m x n, ldc) = alpha op(A) op(B) + beta C; op(A) m x k, op(B) k x n; all column-major. With beta 0, C is
// not read (BLAS semantics). Accumulates in double, rounds once.
inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                                   int k, const void* alpha, const void* A, cudaDataType a_type, int lda,
                                   const void* B, cudaDataType b_type, int ldb, const void* beta, void* C,
                                   cudaDataType c_type, int ldc, cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (compute != CUBLAS_COMPUTE_32F || m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max(1, transa == CUBLAS_OP_N ? m : k) || ldb < std::max(1, transb == CUBLAS_OP_N ? k : n) ||
      ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  const float a_scale = *static_cast<const float*>(alpha), b_scale = *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double acc = 0.0;
      for (int p = 0; p < k; ++p) {
        const int64_t ai = transa == CUBLAS_OP_N ? i + static_cast<int64_t>(p) * lda : p + static_cast<int64_t>(i) * lda;
        const int64_t bi = transb == CUBLAS_OP_N ? p + static_cast<int64_t>(j) * ldb : j + static_cast<int64_t>(p) * ldb;
        acc += l3c_emu::load_element(A, a_type, ai) * l3c_emu::load_element(B, b_type, bi);
      }
      const int64_t ci = i + static_cast<int64_t>(j) * ldc;
      double value = a_scale * acc;
      if (b_scale != 0.0f) value += b_scale * l3c_emu::load_element(C, c_type, ci);
      l3c_emu::store_element(C, c_type, ci, static_cast<float>(value));
    }
  return CUBLAS_STATUS_SUCCESS;
}
#include "kernels/cuda/emulation_wmma.h"  // nvcuda::wmma: the tensor-core warp matrix functions
