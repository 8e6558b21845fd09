// The host emulation of CUDA itself (src/kernels/cuda/emulation.h), on small kernels written here: it catches a
// missing __syncthreads (the result changes with the seeded order, or reads the poison of shared memory no
// thread wrote), it poisons static and dynamic shared memory at every block start, and it runs blocks and the
// threads of a phase in a seeded order (index order for seed 0). And the backend's reports of a failing kernel
// (an emulated device fault): the op and the launch site named, L3C_CUDA_SYNC, frees that never throw. Built only against the emulation (label
// "emulation"): these kernels are C++ compiled with the emulation's definitions of the CUDA keywords.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/device.h"

using Catch::Matchers::Contains;
using l3c::ops::cuda::launch;

namespace {

constexpr int kThreads = 64;

// Every thread writes its element into shared memory and reads its mirror image: correct with the barrier,
// a race without it (thread t reads what thread kThreads-1-t writes in the same phase).
__global__ void reverse_kernel(float* out, const float* in, bool barrier) {
  __shared__ float tile[kThreads];
  const int t = threadIdx.x;
  tile[t] = in[blockIdx.x * kThreads + t];
  if (barrier) __syncthreads();
  out[blockIdx.x * kThreads + t] = tile[kThreads - 1 - t];
}

// After the first barrier every thread adds its right neighbour's value: a read-after-write race between two
// barriers (the neighbour may already have added its own neighbour) unless the reads finish, at a barrier,
// before the writes.
__global__ void neighbour_sum_kernel(float* out, bool barrier) {
  __shared__ float cells[kThreads];
  const int t = threadIdx.x;
  cells[t] = static_cast<float>(t + 1);
  __syncthreads();
  const float right = cells[(t + 1) % kThreads];
  if (barrier) __syncthreads();
  cells[t] += right;
  __syncthreads();
  out[t] = cells[t];
}

// Each block reads a shared cell before writing it: the read must see the poison, not what an earlier block
// left there (static and dynamic shared memory alike).
__global__ void stale_shared_kernel(float* static_seen, float* dynamic_seen) {
  __shared__ float cell[1];
  L3C_DYNAMIC_SHARED(float, dynamic_cell);
  if (threadIdx.x == 0) {
    static_seen[blockIdx.x] = cell[0];
    dynamic_seen[blockIdx.x] = dynamic_cell[0];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    cell[0] = 1.0f;
    dynamic_cell[0] = 2.0f;
  }
}

// Records the order in which blocks, and the threads of block 0, start.
__global__ void order_kernel(int* block_rank, int* thread_rank, int* counters) {
  if (threadIdx.x == 0) block_rank[blockIdx.x] = atomicAdd(&counters[0], 1);
  if (blockIdx.x == 0) thread_rank[threadIdx.x] = atomicAdd(&counters[1], 1);
}

// Restores the process's schedule when a test that reseeds it ends.
struct SeedScope {
  uint64_t saved = l3c_emu::g_schedule.seed;
  explicit SeedScope(uint64_t seed) { l3c_emu::g_schedule.reseed(seed); }
  ~SeedScope() { l3c_emu::g_schedule.reseed(saved); }
};

std::vector<float> run_reverse(uint64_t seed, bool barrier, int blocks) {
  SeedScope scope(seed);
  std::vector<float> in(blocks * kThreads), out(blocks * kThreads, 0.0f);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i);
  launch(reverse_kernel, blocks, kThreads, 0, out.data(), in.data(), barrier);
  return out;
}

bool same_values(const std::vector<float>& a, const std::vector<float>& b) {  // NaN equal to NaN
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) return false;
  return true;
}

}  // namespace

TEST_CASE("emulation: a missing __syncthreads before reading another thread's write is caught", "[emulation]") {
  const int blocks = 3;
  std::vector<float> expect(blocks * kThreads);
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < kThreads; ++t) expect[b * kThreads + t] = static_cast<float>(b * kThreads + kThreads - 1 - t);
  for (uint64_t seed : {0, 1, 2, 3}) {
    INFO("seed " << seed);
    CHECK(same_values(run_reverse(seed, /*barrier=*/true, blocks), expect));
    // Without the barrier some threads read before their mirror thread wrote: the poison (NaN) shows.
    const std::vector<float> racy = run_reverse(seed, /*barrier=*/false, blocks);
    int poisoned = 0;
    for (float v : racy) poisoned += std::isnan(v);
    CHECK(poisoned > 0);
    CHECK(!same_values(racy, expect));
  }
  // In index order each thread runs to its end before the next starts: the first half reads poison, the second
  // half the values; a random order gives another mix.
  const std::vector<float> in_order = run_reverse(0, false, blocks);
  CHECK(std::isnan(in_order[0]));
  CHECK(in_order[kThreads - 1] == expect[kThreads - 1]);
  CHECK(!same_values(run_reverse(1, false, blocks), run_reverse(2, false, blocks)));
}

TEST_CASE("emulation: a read-after-write race between two barriers changes the result with the order",
          "[emulation]") {
  std::vector<float> expect(kThreads);
  for (int t = 0; t < kThreads; ++t) expect[t] = static_cast<float>(t + 1 + (t + 1) % kThreads + 1);
  std::set<std::vector<float>> racy_results;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    SeedScope scope(seed);
    std::vector<float> out(kThreads);
    launch(neighbour_sum_kernel, 1, kThreads, 0, out.data(), true);
    CHECK(out == expect);
    launch(neighbour_sum_kernel, 1, kThreads, 0, out.data(), false);
    racy_results.insert(out);
  }
  CHECK(racy_results.size() >= 3);  // the orders give different wrong sums
  // No order is right: some thread always runs after its right neighbour (the neighbours form a cycle).
  CHECK(racy_results.count(expect) == 0);
}

TEST_CASE("emulation: static and dynamic shared memory are poisoned at the start of every block", "[emulation]") {
  for (uint64_t seed : {0, 5}) {
    SeedScope scope(seed);
    const int blocks = 6;
    std::vector<float> static_seen(blocks, 0.0f), dynamic_seen(blocks, 0.0f);
    launch(stale_shared_kernel, blocks, 32, sizeof(float), static_seen.data(), dynamic_seen.data());
    for (int b = 0; b < blocks; ++b) {
      INFO("seed " << seed << " block " << b);
      CHECK(std::isnan(static_seen[b]));
      CHECK(std::isnan(dynamic_seen[b]));
    }
  }
}

TEST_CASE("emulation: blocks and threads run in index order for seed 0 and in a seeded order otherwise",
          "[emulation]") {
  const int blocks = 40;
  auto ranks = [&](uint64_t seed) {
    SeedScope scope(seed);
    std::vector<int> block_rank(blocks, -1), thread_rank(kThreads, -1), counters(2, 0);
    launch(order_kernel, blocks, kThreads, 0, block_rank.data(), thread_rank.data(), counters.data());
    return std::pair{block_rank, thread_rank};
  };
  std::vector<int> identity_blocks(blocks), identity_threads(kThreads);
  for (int i = 0; i < blocks; ++i) identity_blocks[i] = i;
  for (int i = 0; i < kThreads; ++i) identity_threads[i] = i;
  const auto [blocks0, threads0] = ranks(0);
  CHECK(blocks0 == identity_blocks);
  CHECK(threads0 == identity_threads);
  const auto [blocks7, threads7] = ranks(7);
  CHECK(blocks7 != identity_blocks);
  CHECK(threads7 != identity_threads);
  CHECK(std::set<int>(blocks7.begin(), blocks7.end()).size() == blocks);  // a permutation: each block once
  CHECK(ranks(7) == std::pair{blocks7, threads7});                         // the same seed, the same order
  CHECK(ranks(8).first != blocks7);
}

// ---- faults ----------------------------------------------------------------------------------------------

namespace {
// Leaves the device in the state an out-of-bounds access leaves a GPU in (a sticky error).
__global__ void faulting_kernel(int* out) {
  if (threadIdx.x == 0) {
    *out = 1;
    l3c_emu::g_device_fault = cudaErrorIllegalAddress;
  }
}
__global__ void harmless_kernel(int* out) {
  if (threadIdx.x == 0) *out = 2;
}
// Clears the emulated fault when a test ends (a GPU would need a new process).
struct FaultScope {
  ~FaultScope() { l3c_emu::g_device_fault = cudaSuccess; }
};
}  // namespace

TEST_CASE("emulation: a failing kernel's error names the op and the launch, and frees after it never throw",
          "[emulation]") {
  FaultScope clear_fault;
  unsetenv("L3C_CUDA_SYNC");
  int* buffer = static_cast<int*>(l3c::cuda_malloc(sizeof(int), "a test buffer"));
  int fault_line = 0;
  try {
    const l3c::ops::cuda::CurrentOp op("attention_forward(out, lse, q, k, v)");
    fault_line = __LINE__ + 1;
    launch(faulting_kernel, 1, 32, 0, buffer);
    FAIL("the fault was not reported");
  } catch (const l3c::InternalError& e) {
    CHECK_THAT(e.what(), Contains("CUDA error in ops::attention_forward") &&
                             Contains("test_emulation.cpp:" + std::to_string(fault_line)) &&
                             Contains("illegal memory access") && Contains("rerun with L3C_CUDA_SYNC=1"));
  }
  // Every later call returns the fault; a free in a destructor must not throw (std::terminate would replace the
  // error above), and does not.
  CHECK_NOTHROW(l3c::cuda_free(buffer));
  // A checked runtime call outside any op names the call and says where to look.
  std::vector<int> host(1);
  auto copy_back = [&] { L3C_CUDA_CHECK(cudaMemcpy(host.data(), buffer, sizeof(int), cudaMemcpyDeviceToHost)); };
  REQUIRE_THROWS_WITH(copy_back(), Contains("CUDA call failed: cudaMemcpy") && Contains("illegal memory access"));
}

TEST_CASE("emulation: with L3C_CUDA_SYNC=1 the error comes from the kernel that failed", "[emulation]") {
  FaultScope clear_fault;
  setenv("L3C_CUDA_SYNC", "1", 1);
  std::vector<int> out(1, 0);
  {
    const l3c::ops::cuda::CurrentOp op("group_by_key(order, offsets, keys)");
    launch(harmless_kernel, 1, 32, 0, out.data());  // fine: synchronised and checked
    CHECK(out[0] == 2);
    const int line = __LINE__ + 1;
    REQUIRE_THROWS_WITH(launch(faulting_kernel, 1, 32, 0, out.data()),
                        Contains("CUDA error in ops::group_by_key: the kernel launched at test_emulation.cpp:" +
                                 std::to_string(line) + " failed") &&
                            !Contains("L3C_CUDA_SYNC=1"));
  }
  setenv("L3C_CUDA_SYNC", "maybe", 1);
  l3c_emu::g_device_fault = cudaSuccess;
  REQUIRE_THROWS_WITH(launch(harmless_kernel, 1, 32, 0, out.data()), Contains("L3C_CUDA_SYNC must be 0 or 1"));
  unsetenv("L3C_CUDA_SYNC");
}
