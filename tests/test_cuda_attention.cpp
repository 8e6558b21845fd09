// The tensor-core attention kernels (src/kernels/cuda/attention_flash.cu: WMMA bf16 tiles, fp32 accumulation)
// against the CPU op and against the CUDA-core kernel in fp32 on the same bf16-rounded inputs, forward (out, lse)
// and backward (dq, dk, dv): T not a multiple of the 64-row tile, several heads, GQA groups, head_dim 64 and 128;
// which kernel the op chooses; a bf16 training step through it against the CPU; deterministic results. The emulated/ twins run the kernels on the host emulation
// of CUDA with its WMMA fragments (src/kernels/cuda/emulation_wmma.h); shapes are small for that reason. The
// emulation's own WMMA semantics and checks are tested at the end (emulated build only).
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/ops.h"
#include "step_probe.h"

using namespace l3c;
using namespace l3c::test;

#ifdef L3C_WITH_CUDA
namespace {

using ops::cuda::AttentionKernel;

// Tolerances, relative to the reference's norm. Both references compute in f32 from the same bf16 inputs; the
// tensor-core kernels round the probabilities P (forward, dK/dV) and dS (backward) to bf16 before their second
// product, each at most 2^-9 relative per element, and round every output to bf16 once (2^-9). Measured on these
// shapes: out 1.2e-3 to 1.8e-3, dq, dk, dv 1.9e-3 to 2.4e-3; a wrong mask, tile or GQA head is off by far more.
constexpr double kOutputTolerance = 5e-3;
constexpr double kGradientTolerance = 1e-2;  // dS = P (dP - D) subtracts nearly equal values before its rounding
// Where a gradient is zero in exact arithmetic (T = 1: one key per row, so P = 1 and dP = D), one side may give exact
// zeros and the other f32 rounding noise (the CPU's dot products, ~1e-7 per element with or without FMA): no relative
// error compares those, so the gradients are compared with an absolute floor per element besides.
constexpr double kGradientFloor = 1e-6;
// lse: computed from f32 scores of exact bf16 products, so only the order of f32 additions differs (measured 5e-8).
constexpr double kLseTolerance = 1e-6;

struct Shape {
  int64_t batch, seq, heads, kv_heads, hd;
};

// A device copy of a host tensor in f32 (for the CUDA-core reference) or as it is.
DeviceTensor f32_on_device(const TestTensor& host) { return DeviceTensor(host.converted(DType::F32).tensor()); }

bool gradient_close(const DeviceTensor& gpu, const std::vector<double>& reference) {
  return close_values(gpu.values(), reference, kGradientTolerance, kGradientFloor);
}

double relative_error(const DeviceTensor& gpu, const TestTensor& reference) {
  return norm_relative_error(gpu.values(), reference.values());
}
double relative_error(const DeviceTensor& gpu, const DeviceTensor& reference) {
  return norm_relative_error(gpu.values(), reference.values());
}

void check_tensor_core_attention(Shape s, uint64_t seed, double input_scale = 1.0) {
  INFO("B " << s.batch << " T " << s.seq << " H " << s.heads << " Hkv " << s.kv_heads << " hd " << s.hd << " scale "
            << input_scale);
  const DType bf16 = DType::BF16;
  // q, k, v in bf16 on the device; .cpu holds the same (rounded) values in f32.
  Pair q = random_pair(bf16, {s.batch, s.seq, s.heads, s.hd}, seed, input_scale);
  Pair k = random_pair(bf16, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 1, input_scale);
  Pair v = random_pair(bf16, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 2);

  // Forward: tensor cores (bf16), the CPU op (f32), the CUDA-core kernel (f32) on the same values.
  DeviceTensor out(bf16, {s.batch, s.seq, s.heads, s.hd}), lse(DType::F32, {s.batch, s.heads, s.seq});
  ops::cuda::attention_forward(out, lse, q.gpu, k.gpu, v.gpu, AttentionKernel::TensorCores);
  TestTensor out_cpu(DType::F32, {s.batch, s.seq, s.heads, s.hd}), lse_cpu(DType::F32, {s.batch, s.heads, s.seq});
  ops::attention_forward(out_cpu, lse_cpu, q.cpu, k.cpu, v.cpu);
  DeviceTensor q32 = f32_on_device(q.cpu), k32 = f32_on_device(k.cpu), v32 = f32_on_device(v.cpu);
  DeviceTensor out32(DType::F32, {s.batch, s.seq, s.heads, s.hd}), lse32(DType::F32, {s.batch, s.heads, s.seq});
  ops::cuda::attention_forward(out32, lse32, q32, k32, v32, AttentionKernel::CudaCores);
  CHECK(relative_error(out, out_cpu) <= kOutputTolerance);
  CHECK(relative_error(out, out32) <= kOutputTolerance);
  CHECK(relative_error(lse, lse_cpu) <= kLseTolerance);
  CHECK(relative_error(lse, lse32) <= kLseTolerance);

  // Backward from the same out (the CPU's, rounded to bf16) and lse (the CPU's) on every side.
  const TestTensor out_rounded = out_cpu.converted(bf16).converted(DType::F32);
  DeviceTensor out_ref(out_cpu.converted(bf16).tensor()), out_ref32 = f32_on_device(out_rounded);
  DeviceTensor lse_ref(lse_cpu);
  Pair dout = random_pair(bf16, {s.batch, s.seq, s.heads, s.hd}, seed + 3);
  DeviceTensor dout32 = f32_on_device(dout.cpu);
  // Filled with garbage first: the kernels overwrite every element.
  Pair dq = random_pair(bf16, {s.batch, s.seq, s.heads, s.hd}, seed + 4);
  Pair dk = random_pair(bf16, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 5);
  Pair dv = random_pair(bf16, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 6);
  ops::cuda::attention_backward(dq.gpu, dk.gpu, dv.gpu, dout.gpu, q.gpu, k.gpu, v.gpu, out_ref, lse_ref,
                                AttentionKernel::TensorCores);
  ops::attention_backward(dq.cpu, dk.cpu, dv.cpu, dout.cpu, q.cpu, k.cpu, v.cpu, out_rounded, lse_cpu);
  DeviceTensor dq32(DType::F32, {s.batch, s.seq, s.heads, s.hd});
  DeviceTensor dk32(DType::F32, {s.batch, s.seq, s.kv_heads, s.hd}), dv32(DType::F32, {s.batch, s.seq, s.kv_heads, s.hd});
  ops::cuda::attention_backward(dq32, dk32, dv32, dout32, q32, k32, v32, out_ref32, lse_ref, AttentionKernel::CudaCores);
  INFO("dq " << relative_error(dq.gpu, dq.cpu) << " dk " << relative_error(dk.gpu, dk.cpu) << " dv "
             << relative_error(dv.gpu, dv.cpu) << " out " << relative_error(out, out_cpu));
  CHECK(gradient_close(dq.gpu, dq.cpu.values()));
  CHECK(gradient_close(dk.gpu, dk.cpu.values()));
  CHECK(gradient_close(dv.gpu, dv.cpu.values()));
  CHECK(gradient_close(dq.gpu, dq32.values()));
  CHECK(gradient_close(dk.gpu, dk32.values()));
  CHECK(gradient_close(dv.gpu, dv32.values()));
}

}  // namespace

TEST_CASE("cuda: tensor-core attention matches the CPU and the fp32 kernel, head_dim 64", "[cuda]") {
  require_gpu();
  check_tensor_core_attention({1, 70, 4, 2, 64}, 500);  // GQA 2, two tiles, the second with 6 rows
  check_tensor_core_attention({2, 21, 3, 3, 64}, 510);  // GQA 1, two sequences, less than one tile
  check_tensor_core_attention({1, 1, 2, 1, 64}, 520);   // T = 1: each row sees one key
}

TEST_CASE("cuda: tensor-core attention matches the CPU and the fp32 kernel, head_dim 128", "[cuda]") {
  require_gpu();
  check_tensor_core_attention({1, 67, 4, 1, 128}, 530);  // GQA 4 (one kv head), two tiles
}

TEST_CASE("cuda: tensor-core attention stays finite and accurate for large scores", "[cuda]") {
  require_gpu();
  check_tensor_core_attention({1, 40, 2, 2, 64}, 540, 4.0);  // scores ~ 16 sqrt(hd) / sqrt(hd): sharp softmax
}

TEST_CASE("cuda: attention uses tensor cores for bf16 with head_dim 64 or 128, else the CUDA-core kernel", "[cuda]") {
  require_gpu();
  CHECK(ops::cuda::tensor_core_attention_supports(DType::BF16, 64));
  CHECK(ops::cuda::tensor_core_attention_supports(DType::BF16, 128));
  CHECK_FALSE(ops::cuda::tensor_core_attention_supports(DType::BF16, 96));
  CHECK_FALSE(ops::cuda::tensor_core_attention_supports(DType::BF16, 256));
  CHECK_FALSE(ops::cuda::tensor_core_attention_supports(DType::F32, 64));
  // Every GPU the build targets (sm_80, sm_90) and the emulation have bf16 tensor cores.
  CHECK(ops::cuda::attention_kernel_for(DType::BF16, 64) == AttentionKernel::TensorCores);
  CHECK(ops::cuda::attention_kernel_for(DType::BF16, 128) == AttentionKernel::TensorCores);
  CHECK(ops::cuda::attention_kernel_for(DType::BF16, 32) == AttentionKernel::CudaCores);
  CHECK(ops::cuda::attention_kernel_for(DType::F32, 64) == AttentionKernel::CudaCores);

  // The op (ops.h) gives the tensor-core kernel's bits for bf16 at head_dim 64, the CUDA-core kernel's at 32.
  for (int64_t hd : {64, 32}) {
    INFO("hd " << hd);
    const int64_t B = 1, T = 20, H = 2, Hkv = 1;
    Pair q = random_pair(DType::BF16, {B, T, H, hd}, 600), k = random_pair(DType::BF16, {B, T, Hkv, hd}, 601);
    Pair v = random_pair(DType::BF16, {B, T, Hkv, hd}, 602);
    DeviceTensor out_op(DType::BF16, {B, T, H, hd}), lse_op(DType::F32, {B, H, T});
    DeviceTensor out_named(DType::BF16, {B, T, H, hd}), lse_named(DType::F32, {B, H, T});
    ops::attention_forward(out_op, lse_op, q.gpu, k.gpu, v.gpu);
    const AttentionKernel expected = hd == 64 ? AttentionKernel::TensorCores : AttentionKernel::CudaCores;
    ops::cuda::attention_forward(out_named, lse_named, q.gpu, k.gpu, v.gpu, expected);
    CHECK(same_bits(out_op.host(), out_named.host()));
    CHECK(same_bits(lse_op.host(), lse_named.host()));
  }
}

namespace {
// One training step (step_probe.h: the update is the gradient) of a one-layer model whose 2 query heads of 64 share
// one kv head, on a fixed batch of 2 x 80 tokens (two attention tiles, the second of 16 rows), with the attention
// projections alone trainable: q_proj's gradient comes only through attention's dq (k_proj: dk, v_proj: dv).
StepProbe train_attention_model(const std::string& device, const std::string& precision) {
  const int64_t B = 2, T = 80, V = 64;
  Config c = one_layer_model(V, 128, 2, 1, 64);
  c.model.init_std = 0.2;  // scores of order 1, so that the softmax is far from uniform and q, k matter
  set_step_probe(c, B, T, device, precision, {"model.layers.0.self_attn."});
  return run_step_probe(c, ProbeBatch(B, T, V, 900));
}
}  // namespace

TEST_CASE("cuda: bf16 training at head_dim 64 runs on tensor-core attention and tracks the CPU", "[cuda]") {
  require_gpu();
  REQUIRE(ops::cuda::attention_kernel_for(DType::BF16, 64) == AttentionKernel::TensorCores);
  const StepProbe cpu = train_attention_model("cpu", "fp32");
  const StepProbe gpu = train_attention_model("cuda", "bf16");
  // bf16 parameters, activations and products against fp32 throughout. Measured: loss within 0.1%; gradients of
  // q_proj and k_proj 3.5%, v_proj and o_proj 2% (the CUDA-core kernels in bf16 give the same to 0.1%); with dq
  // missing one key per tile, q_proj's is 27%.
  check_tracks_cpu(gpu, cpu,
                   {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                    "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight"},
                   0.08);
}

TEST_CASE("cuda: tensor-core attention forward and backward are the same bits twice", "[cuda]") {
  require_gpu();
  const int64_t B = 1, T = 70, H = 2, Hkv = 1, hd = 64;
  Pair q = random_pair(DType::BF16, {B, T, H, hd}, 700), k = random_pair(DType::BF16, {B, T, Hkv, hd}, 701);
  Pair v = random_pair(DType::BF16, {B, T, Hkv, hd}, 702), dout = random_pair(DType::BF16, {B, T, H, hd}, 703);
  std::vector<TestTensor> results;
  for (int run = 0; run < 2; ++run) {
    DeviceTensor out(DType::BF16, {B, T, H, hd}), lse(DType::F32, {B, H, T});
    DeviceTensor dq(DType::BF16, {B, T, H, hd}), dk(DType::BF16, {B, T, Hkv, hd}), dv(DType::BF16, {B, T, Hkv, hd});
    ops::cuda::attention_forward(out, lse, q.gpu, k.gpu, v.gpu, AttentionKernel::TensorCores);
    ops::cuda::attention_backward(dq, dk, dv, dout.gpu, q.gpu, k.gpu, v.gpu, out, lse, AttentionKernel::TensorCores);
    for (const DeviceTensor* t : {&out, &lse, &dq, &dk, &dv}) results.push_back(t->host());
  }
  for (size_t i = 0; i < results.size() / 2; ++i) CHECK(same_bits(results[i], results[i + results.size() / 2]));
}

TEST_CASE("cuda: the tensor-core attention kernels refuse inputs they do not take", "[cuda]") {
  require_gpu();
  Pair q = random_pair(DType::F32, {1, 8, 2, 64}, 800), k = random_pair(DType::F32, {1, 8, 1, 64}, 801);
  Pair v = random_pair(DType::F32, {1, 8, 1, 64}, 802);
  DeviceTensor out(DType::F32, {1, 8, 2, 64}), lse(DType::F32, {1, 2, 8});
  CHECK_THROWS_WITH(ops::cuda::attention_forward(out, lse, q.gpu, k.gpu, v.gpu, AttentionKernel::TensorCores),
                    Catch::Matchers::Contains("bf16 with head_dim 64 or 128, got f32"));
}
#endif

// ---- the WMMA emulation itself (src/kernels/cuda/emulation_wmma.h) -----------------------------------------
#ifdef L3C_CUDA_EMULATION
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <functional>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace {

namespace wmma = nvcuda::wmma;

// Element (r, c) of a 16 x 16 tile stored at p with leading dimension ld, in row- or column-major order.
template <typename T>
T& element(T* p, int ld, bool row_major, int r, int c) {
  return row_major ? p[r * ld + c] : p[c * ld + r];
}

// D = A B + C through the fragments, for the layouts given, against the product computed in double.
template <typename LayoutA, typename LayoutB>
void check_mma_layouts(wmma::layout_t c_layout, wmma::layout_t d_layout, uint64_t seed) {
  constexpr bool a_row = std::is_same_v<LayoutA, wmma::row_major>, b_row = std::is_same_v<LayoutB, wmma::row_major>;
  INFO("A " << (a_row ? "row" : "col") << "-major, B " << (b_row ? "row" : "col") << "-major, C "
            << (c_layout == wmma::mem_row_major ? "row" : "col") << "-major, D "
            << (d_layout == wmma::mem_row_major ? "row" : "col") << "-major");
  constexpr int kLdAB = 24, kLdCD = 20;  // padded: the layouts must use ldm, not 16
  alignas(32) ops::cuda::bf16 a[16 * kLdAB], b[16 * kLdAB];
  alignas(32) float c[16 * kLdCD], d[16 * kLdCD];
  TestTensor values(DType::F32, {3, 16, 16});
  random_fill(values, seed);
  double expected[16][16];
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      element(a, kLdAB, a_row, r, col) = __float2bfloat16(values.ptr<float>()[r * 16 + col]);
      element(b, kLdAB, b_row, r, col) = __float2bfloat16(values.ptr<float>()[256 + r * 16 + col]);
      element(c, kLdCD, c_layout == wmma::mem_row_major, r, col) = values.ptr<float>()[512 + r * 16 + col];
    }
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      double sum = element(c, kLdCD, c_layout == wmma::mem_row_major, r, col);
      for (int kk = 0; kk < 16; ++kk)
        sum += static_cast<double>(__bfloat162float(element(a, kLdAB, a_row, r, kk))) *
               __bfloat162float(element(b, kLdAB, b_row, kk, col));
      expected[r][col] = sum;
    }
  l3c_emu::launch(dim3(1), dim3(32), 0, [&] {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, ops::cuda::bf16, LayoutA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, ops::cuda::bf16, LayoutB> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(fa, a, kLdAB);
    wmma::load_matrix_sync(fb, b, kLdAB);
    wmma::load_matrix_sync(acc, c, kLdCD, c_layout);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, kLdCD, d_layout);
  });
  double worst = 0.0;
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col)
      worst = std::max(worst, std::abs(element(d, kLdCD, d_layout == wmma::mem_row_major, r, col) - expected[r][col]));
  CHECK(worst <= 1e-5);  // exact products, 17 f32 additions of values of order 1..10
}

// Runs body as one warp of the emulation in a child process; returns what the child wrote to stderr, and whether
// it ended by abort (the emulation's way of reporting misuse).
struct ChildResult {
  std::string message;
  bool aborted = false;
};
ChildResult run_warp_in_child(const std::function<void()>& body) {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL);  // the test framework's handler would report the abort as its own failure
    ::dup2(pipe_fds[1], STDERR_FILENO);
    ::close(pipe_fds[0]);
    l3c_emu::launch(dim3(1), dim3(32), 0, body);
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  ChildResult result;
  char buffer[512];
  for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;) result.message.append(buffer, n);
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  return result;
}

}  // namespace

TEST_CASE("emulation: WMMA fragments load, multiply and store with CUDA's row- and column-major layouts",
          "[emulation]") {
  const wmma::layout_t row = wmma::mem_row_major, col = wmma::mem_col_major;
  check_mma_layouts<wmma::row_major, wmma::row_major>(row, row, 1);
  check_mma_layouts<wmma::row_major, wmma::col_major>(row, col, 2);
  check_mma_layouts<wmma::col_major, wmma::row_major>(col, row, 3);
  check_mma_layouts<wmma::col_major, wmma::col_major>(col, col, 4);
}

TEST_CASE("emulation: WMMA calls that break CUDA's rules end the run with a message", "[emulation]") {
  alignas(32) static ops::cuda::bf16 tile[16 * 32] = {};
  using OperandA = wmma::fragment<wmma::matrix_a, 16, 16, 16, ops::cuda::bf16, wmma::row_major>;
  using OperandB = wmma::fragment<wmma::matrix_b, 16, 16, 16, ops::cuda::bf16, wmma::col_major>;
  using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  SECTION("a pointer that is not 32-byte aligned") {
    const ChildResult r = run_warp_in_child([] {
      OperandA a;
      wmma::load_matrix_sync(a, tile + 8, 32);  // 16 bytes past an aligned address
    });
    CHECK(r.aborted);
    CHECK_THAT(r.message, Catch::Matchers::Contains("is not 256-bit (32-byte) aligned"));
  }
  SECTION("a leading dimension that is not a multiple of 16 bytes") {
    const ChildResult r = run_warp_in_child([] {
      OperandA a;
      wmma::load_matrix_sync(a, tile, 20);
    });
    CHECK(r.aborted);
    CHECK_THAT(r.message, Catch::Matchers::Contains("ldm 20 must be at least 16 and a multiple of 16 bytes"));
  }
  SECTION("lanes that pass different pointers") {
    const ChildResult r = run_warp_in_child([] {
      OperandA a;
      wmma::load_matrix_sync(a, tile + 16 * (threadIdx.x % 2), 32);
    });
    CHECK(r.aborted);
    CHECK_THAT(r.message, Catch::Matchers::Contains("wmma::load_matrix_sync: lanes of a warp differ"));
  }
  SECTION("an mma that half of the warp never reaches") {
    const ChildResult r = run_warp_in_child([] {
      OperandA a;
      OperandB b;
      Accumulator acc;
      wmma::fill_fragment(a, 0.0f);
      wmma::fill_fragment(b, 0.0f);
      wmma::fill_fragment(acc, 0.0f);
      if (threadIdx.x < 16) wmma::mma_sync(acc, a, b, acc);
    });
    CHECK(r.aborted);
    CHECK_THAT(r.message, Catch::Matchers::Contains("deadlock"));
  }
  SECTION("fragments that differ between lanes") {
    const ChildResult r = run_warp_in_child([] {
      Accumulator acc;
      wmma::fill_fragment(acc, static_cast<float>(threadIdx.x));
      alignas(32) static float out[16 * 16];
      wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
    });
    CHECK(r.aborted);
    CHECK_THAT(r.message, Catch::Matchers::Contains("wmma::store_matrix_sync: lanes of a warp differ"));
  }
}
#endif
