// Every CUDA op against the CPU op on the same random inputs: f32 within 1e-5 (relative to the reference's norm),
// bf16 within the per-op tolerances below (with the reason); edge shapes (T not a multiple of the tile, one head,
// GQA ratios 1, 2, 8, head sizes of every kernel configuration; tokens with one row and with k rows in L3;
// experts receiving no tokens and one receiving all in MoE, whose ops also run in bf16 with f32 routing statistics);
// deterministic results (the same bits twice).
// Without a GPU every test exits with code 4 (CTest: skipped); their emulated/ twins run the same kernels on the
// host emulation of CUDA.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/arena.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/ops.h"
#include "model/params.h"
#include "optim/adamw.h"
#include "cuda_test_util.h"

using namespace l3c;
using namespace l3c::test;
using Catch::Matchers::Contains;

namespace {

constexpr DType kGpuTypes[] = {DType::F32, DType::BF16};
constexpr double kF32 = 1e-5;

// bf16 tolerances, relative to the reference's norm. The GPU reads the same bf16-rounded inputs as the CPU
// reference (which computes in f32) and computes in f32 too, so the difference is the rounding of the outputs
// to bf16 (8 significant bits: at most 2^-9 relative per element, about 2^-10 in norm), plus, for ops that add
// into a bf16 output, the rounding of the old value.
constexpr double kBf16Output = 5e-3;      // one rounding of each output element
constexpr double kBf16Accumulate = 1e-2;  // outputs that accumulate (+=) into bf16: two roundings
// f32 statistics of a bf16 call (rstd, lse, losses, L3 probs) are computed in f32 from the same inputs.
constexpr double kBf16Stats = 1e-5;

double output_tolerance(DType dtype) { return dtype == DType::F32 ? kF32 : kBf16Output; }
double accumulate_tolerance(DType dtype) { return dtype == DType::F32 ? kF32 : kBf16Accumulate; }
DType stats_type(DType) { return DType::F32; }

TestTensor tokens_of(std::initializer_list<int64_t> shape, int64_t vocab, uint64_t seed) {
  TestTensor t(DType::I32, shape);
  random_tokens(t, vocab, seed);
  return t;
}

TestTensor ints(std::initializer_list<int64_t> shape, const std::vector<int32_t>& values) {
  TestTensor t(DType::I32, shape);
  REQUIRE(static_cast<int64_t>(values.size()) == t.numel());
  for (size_t i = 0; i < values.size(); ++i) t.ptr<int32_t>()[i] = values[i];
  return t;
}

}  // namespace

// =====================================================================================================
// elementwise
// =====================================================================================================

TEST_CASE("cuda: copies between host and device, fill_zero, add, scale and convert", "[cuda][grids]") {
  require_gpu();
  const int64_t n = 5003;
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype));
    Pair x = random_pair(dtype, {n}, 1), y = random_pair(dtype, {n}, 2);
    CHECK(x.gpu.values() == x.cpu.values());  // host -> device -> host is exact

    DeviceTensor c(dtype, {n});
    ops::copy(c, x.gpu);
    CHECK(c.values() == x.cpu.values());

    ops::add_inplace(y.gpu, x.gpu);
    ops::add_inplace(y.cpu, x.cpu);
    CHECK(gpu_error(y.gpu, y.cpu) <= output_tolerance(dtype));

    ops::scale_inplace(x.gpu, 0.37);
    ops::scale_inplace(x.cpu, 0.37);
    CHECK(gpu_error(x.gpu, x.cpu) <= output_tolerance(dtype));

    ops::fill_zero(x.gpu);
    CHECK(x.gpu.values() == std::vector<double>(n, 0.0));
  }
  // f32 -> bf16 rounds to nearest even (as the host rounding does); bf16 -> f32 is exact.
  Pair f = random_pair(DType::F32, {n}, 3);
  DeviceTensor b(DType::BF16, {n}), back(DType::F32, {n});
  ops::convert(b, f.gpu);
  CHECK(b.values() == f.cpu.converted(DType::BF16).values());
  ops::convert(back, b);
  CHECK(back.values() == b.values());

  TestTensor ids = tokens_of({7, 5}, 1000, 4);
  DeviceTensor ids_gpu(ids);
  CHECK(ids_gpu.values() == ids.values());
  ops::fill_zero(ids_gpu);
  CHECK(ids_gpu.values() == std::vector<double>(35, 0.0));
}

TEST_CASE("cuda: sum_squares matches the CPU sum and is the same bits twice", "[cuda]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype));
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{100003}}) {
      Pair x = random_pair(dtype, {n}, 5);
      const double expect = ops::sum_squares(x.cpu);
      const double got = ops::sum_squares(x.gpu);
      CHECK(std::abs(got - expect) <= 1e-12 * expect);  // both accumulate the same values in double
      CHECK(ops::sum_squares(x.gpu) == got);
    }
  }
}

// The training step's sums stay on the device: the loss mean is the host's sum bit for bit, the sum of squares
// sum_squares's, and neither waits for the device.
TEST_CASE("cuda: add_mean and sum_squares_into give the CPU's bits without reading back", "[cuda]") {
  require_gpu();
  Pair losses = random_pair(DType::F32, {1001}, 57);
  Pair grads = random_pair(DType::BF16, {3001}, 58);
  TestTensor sums_cpu(DType::F64, {2});
  DeviceTensor sums_gpu(DType::F64, {2});
  ops::fill_zero(sums_cpu.tensor());
  ops::fill_zero(sums_gpu.tensor());
  const int64_t waits_before = cuda_host_synchronizations();
  for (int i = 0; i < 2; ++i) ops::add_mean(sums_gpu.tensor().rows(0, 1), losses.gpu);
  ops::sum_squares_into(sums_gpu.tensor().rows(1, 2), grads.gpu);
  CHECK(cuda_host_synchronizations() == waits_before);
  for (int i = 0; i < 2; ++i) ops::add_mean(sums_cpu.tensor().rows(0, 1), losses.cpu);
  ops::sum_squares_into(sums_cpu.tensor().rows(1, 2), grads.cpu);
  const std::vector<double> got = sums_gpu.host().values(), expect = sums_cpu.values();
  CHECK(got[0] == expect[0]);
  CHECK(got[1] == ops::sum_squares(grads.gpu));
  CHECK(std::abs(got[1] - expect[1]) <= 1e-12 * expect[1]);
}

// The partition of the partial sums is fixed (common.cuh's kPartialBlocks): with L3C_EMULATION_GPU_GRIDS=1 the
// emulation runs the GPU's 1024 blocks, more elements than one pass of the grid covers.
TEST_CASE("cuda: sum_squares over the GPU's fixed partition matches the CPU", "[cuda][grids]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype));
    Pair x = random_pair(dtype, {300007}, 56);
    const double expect = ops::sum_squares(x.cpu);
    CHECK(std::abs(ops::sum_squares(x.gpu) - expect) <= 1e-12 * expect);
  }
}

// =====================================================================================================
// embedding
// =====================================================================================================

TEST_CASE("cuda: embedding forward and backward match the CPU, repeated and absent tokens", "[cuda][grids]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t V = 29, d = 40, N = 77;  // some tokens repeat, some never occur
    Pair table = random_pair(dtype, {V, d}, 6);
    Pair tok = pair_of(tokens_of({N}, V, 7));
    Pair out = zero_pair(dtype, {N, d});
    ops::embedding_forward(out.gpu, table.gpu, tok.gpu);
    ops::embedding_forward(out.cpu, table.cpu, tok.cpu);
    CHECK(out.gpu.values() == out.cpu.values());  // a gather: exact

    Pair dout = random_pair(dtype, {N, d}, 8);
    Pair dtable = random_pair(dtype, {V, d}, 9);  // accumulates into what is there
    ops::embedding_backward(dtable.gpu, dout.gpu, tok.gpu);
    ops::embedding_backward(dtable.cpu, dout.cpu, tok.cpu);
    CHECK(gpu_error(dtable.gpu, dtable.cpu) <= accumulate_tolerance(dtype));
    if (dtype == DType::F32) CHECK(dtable.gpu.values() == dtable.cpu.values());  // same adds in the same order
  }
}

// =====================================================================================================
// RMSNorm
// =====================================================================================================

TEST_CASE("cuda: rmsnorm forward and backward match the CPU", "[cuda]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    const std::vector<std::pair<int64_t, int64_t>> shapes = {{7, 33}, {130, 96}, {1, 700}};
    for (auto [N, d] : shapes) {
      INFO("dtype " << dtype_name(dtype) << " N " << N << " d " << d);
      Pair x = random_pair(dtype, {N, d}, 10), w = random_pair(dtype, {d}, 11, 0.5);
      Pair out = zero_pair(dtype, {N, d}), rstd = zero_pair(stats_type(dtype), {N});
      ops::rmsnorm_forward(out.gpu, rstd.gpu, x.gpu, w.gpu, 1e-5);
      ops::rmsnorm_forward(out.cpu, rstd.cpu, x.cpu, w.cpu, 1e-5);
      CHECK(gpu_error(out.gpu, out.cpu) <= output_tolerance(dtype));
      CHECK(gpu_error(rstd.gpu, rstd.cpu) <= (dtype == DType::F32 ? kF32 : kBf16Stats));

      Pair dout = random_pair(dtype, {N, d}, 12);
      Pair dx = random_pair(dtype, {N, d}, 13), dw = random_pair(dtype, {d}, 14);  // both accumulate
      // The backward reads the forward's rstd: give both sides the CPU's.
      DeviceTensor rstd_cpu_on_gpu(rstd.cpu);
      ops::rmsnorm_backward(dx.gpu, dw.gpu, dout.gpu, x.gpu, w.gpu, rstd_cpu_on_gpu);
      ops::rmsnorm_backward(dx.cpu, dw.cpu, dout.cpu, x.cpu, w.cpu, rstd.cpu);
      CHECK(gpu_error(dx.gpu, dx.cpu) <= accumulate_tolerance(dtype));
      CHECK(gpu_error(dw.gpu, dw.cpu) <= accumulate_tolerance(dtype));
    }
  }
}

// =====================================================================================================
// matrix products
// =====================================================================================================

TEST_CASE("cuda: matmul forward and backward match the CPU, overwriting or accumulating", "[cuda]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    const std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes = {{5, 7, 3}, {64, 48, 40}, {1, 1, 1}};
    for (auto [N, K, M] : shapes) {
      INFO("dtype " << dtype_name(dtype) << " N " << N << " K " << K << " M " << M);
      Pair x = random_pair(dtype, {N, K}, 15), w = random_pair(dtype, {M, K}, 16);
      Pair out = random_pair(dtype, {N, M}, 17);
      ops::matmul_forward(out.gpu, x.gpu, w.gpu);
      ops::matmul_forward(out.cpu, x.cpu, w.cpu);
      CHECK(gpu_error(out.gpu, out.cpu) <= output_tolerance(dtype));
      ops::matmul_forward(out.gpu, x.gpu, w.gpu, /*accumulate=*/true);
      ops::matmul_forward(out.cpu, x.cpu, w.cpu, /*accumulate=*/true);
      CHECK(gpu_error(out.gpu, out.cpu) <= accumulate_tolerance(dtype));

      Pair dout = random_pair(dtype, {N, M}, 18);
      Pair dx = random_pair(dtype, {N, K}, 19), dw = random_pair(dtype, {M, K}, 20);
      ops::matmul_backward(dx.gpu, dw.gpu, dout.gpu, x.gpu, w.gpu);
      ops::matmul_backward(dx.cpu, dw.cpu, dout.cpu, x.cpu, w.cpu);
      CHECK(gpu_error(dx.gpu, dx.cpu) <= output_tolerance(dtype));
      CHECK(gpu_error(dw.gpu, dw.cpu) <= accumulate_tolerance(dtype));
      ops::matmul_backward(dx.gpu, Tensor(), dout.gpu, x.gpu, w.gpu, /*accumulate_dx=*/true);
      ops::matmul_backward(dx.cpu, Tensor(), dout.cpu, x.cpu, w.cpu, /*accumulate_dx=*/true);
      CHECK(gpu_error(dx.gpu, dx.cpu) <= accumulate_tolerance(dtype));
    }
  }
}

// =====================================================================================================
// RoPE
// =====================================================================================================

TEST_CASE("cuda: rope forward and backward match the CPU", "[cuda][grids]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype));
    Pair x = random_pair(dtype, {2, 19, 3, 10}, 21);
    ops::rope_forward(x.gpu, 10000.0);
    ops::rope_forward(x.cpu, 10000.0);
    CHECK(gpu_error(x.gpu, x.cpu) <= output_tolerance(dtype));
    ops::rope_backward(x.gpu, 500.0);
    ops::rope_backward(x.cpu, 500.0);
    CHECK(gpu_error(x.gpu, x.cpu) <= accumulate_tolerance(dtype));
  }
}

// =====================================================================================================
// attention
// =====================================================================================================

namespace {
struct AttentionCase {
  int64_t batch, seq, heads, kv_heads, hd;
};

void check_attention(DType dtype, AttentionCase s, uint64_t seed) {
  INFO("dtype " << dtype_name(dtype) << " B " << s.batch << " T " << s.seq << " H " << s.heads << " Hkv "
                << s.kv_heads << " hd " << s.hd);
  Pair q = random_pair(dtype, {s.batch, s.seq, s.heads, s.hd}, seed);
  Pair k = random_pair(dtype, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 1);
  Pair v = random_pair(dtype, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 2);
  Pair out = zero_pair(dtype, {s.batch, s.seq, s.heads, s.hd});
  Pair lse = zero_pair(stats_type(dtype), {s.batch, s.heads, s.seq});
  ops::attention_forward(out.gpu, lse.gpu, q.gpu, k.gpu, v.gpu);
  ops::attention_forward(out.cpu, lse.cpu, q.cpu, k.cpu, v.cpu);
  CHECK(gpu_error(out.gpu, out.cpu) <= output_tolerance(dtype));
  CHECK(gpu_error(lse.gpu, lse.cpu) <= (dtype == DType::F32 ? kF32 : kBf16Stats));

  // The backward reads the forward's out and lse: give both sides the CPU's (rounded to the GPU dtype).
  Pair out_ref = pair_of(out.cpu);
  if (dtype == DType::BF16) {
    out_ref.cpu = out.cpu.converted(DType::BF16).converted(DType::F32);
    out_ref.gpu = DeviceTensor(out.cpu.converted(DType::BF16).tensor());
  }
  DeviceTensor lse_gpu(lse.cpu);
  Pair dout = random_pair(dtype, {s.batch, s.seq, s.heads, s.hd}, seed + 3);
  Pair dq = random_pair(dtype, {s.batch, s.seq, s.heads, s.hd}, seed + 4);  // overwritten
  Pair dk = random_pair(dtype, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 5);
  Pair dv = random_pair(dtype, {s.batch, s.seq, s.kv_heads, s.hd}, seed + 6);
  ops::attention_backward(dq.gpu, dk.gpu, dv.gpu, dout.gpu, q.gpu, k.gpu, v.gpu, out_ref.gpu, lse_gpu);
  ops::attention_backward(dq.cpu, dk.cpu, dv.cpu, dout.cpu, q.cpu, k.cpu, v.cpu, out_ref.cpu, lse.cpu);
  // bf16: the backward's D_i = dO_i . O_i and dS = P (dP - D) subtract nearly equal f32 values, and the
  // gradients are rounded once: 2x the output tolerance. dS cancels exactly in exact arithmetic where a row
  // sees one key (T = 1): dq and dk are then rounding noise around 0 on both sides, hence the absolute floor.
  const double grad_tolerance = dtype == DType::F32 ? kF32 : 2 * kBf16Output;
  CHECK(close_to(dq.gpu, dq.cpu, grad_tolerance));
  CHECK(close_to(dk.gpu, dk.cpu, grad_tolerance));
  CHECK(close_to(dv.gpu, dv.cpu, grad_tolerance));
}
}  // namespace

TEST_CASE("cuda: attention matches the CPU: T not a multiple of the tile, one head, GQA 1, 2, 8", "[cuda]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    check_attention(dtype, {2, 37, 4, 4, 16}, 100);  // GQA 1, T = 32 + 5
    check_attention(dtype, {1, 33, 4, 2, 8}, 110);   // GQA 2
    check_attention(dtype, {1, 20, 8, 1, 16}, 120);  // GQA 8, one tile
    check_attention(dtype, {1, 65, 1, 1, 32}, 130);  // one head, three key tiles
    check_attention(dtype, {3, 1, 2, 1, 8}, 140);    // T = 1
  }
}

TEST_CASE("cuda: attention covers every head-size configuration, sizes not a multiple of the threads", "[cuda]") {
  require_gpu();
  check_attention(DType::F32, {1, 34, 2, 1, 6}, 200);    // 4 threads x 8, most of them idle
  check_attention(DType::F32, {1, 34, 2, 2, 48}, 210);   // 4 x 16
  check_attention(DType::F32, {1, 34, 2, 1, 100}, 220);  // 4 x 32, hd not a multiple of 4 * 32
  check_attention(DType::F32, {1, 34, 2, 1, 136}, 230);  // 8 x 32
}

TEST_CASE("cuda: attention forward and backward are the same bits twice", "[cuda]") {
  require_gpu();
  const int64_t B = 2, T = 40, H = 4, Hkv = 2, hd = 16;
  Pair q = random_pair(DType::F32, {B, T, H, hd}, 300), k = random_pair(DType::F32, {B, T, Hkv, hd}, 301);
  Pair v = random_pair(DType::F32, {B, T, Hkv, hd}, 302), dout = random_pair(DType::F32, {B, T, H, hd}, 303);
  DeviceTensor out1(DType::F32, {B, T, H, hd}), out2(DType::F32, {B, T, H, hd});
  DeviceTensor lse1(DType::F32, {B, H, T}), lse2(DType::F32, {B, H, T});
  ops::attention_forward(out1, lse1, q.gpu, k.gpu, v.gpu);
  ops::attention_forward(out2, lse2, q.gpu, k.gpu, v.gpu);
  CHECK(same_bits(out1.host(), out2.host()));
  CHECK(same_bits(lse1.host(), lse2.host()));
  DeviceTensor dq1(DType::F32, {B, T, H, hd}), dk1(DType::F32, {B, T, Hkv, hd}), dv1(DType::F32, {B, T, Hkv, hd});
  DeviceTensor dq2(DType::F32, {B, T, H, hd}), dk2(DType::F32, {B, T, Hkv, hd}), dv2(DType::F32, {B, T, Hkv, hd});
  ops::attention_backward(dq1, dk1, dv1, dout.gpu, q.gpu, k.gpu, v.gpu, out1, lse1);
  ops::attention_backward(dq2, dk2, dv2, dout.gpu, q.gpu, k.gpu, v.gpu, out1, lse1);
  CHECK(same_bits(dq1.host(), dq2.host()));
  CHECK(same_bits(dk1.host(), dk2.host()));
  CHECK(same_bits(dv1.host(), dv2.host()));
}

TEST_CASE("cuda: attention stays finite for large scores", "[cuda]") {
  require_gpu();
  Pair q = random_pair(DType::F32, {1, 40, 2, 16}, 310, 30.0), k = random_pair(DType::F32, {1, 40, 2, 16}, 311, 30.0);
  Pair v = random_pair(DType::F32, {1, 40, 2, 16}, 312);
  Pair out = zero_pair(DType::F32, {1, 40, 2, 16}), lse = zero_pair(DType::F32, {1, 2, 40});
  ops::attention_forward(out.gpu, lse.gpu, q.gpu, k.gpu, v.gpu);
  ops::attention_forward(out.cpu, lse.cpu, q.cpu, k.cpu, v.cpu);
  for (double x : out.gpu.values()) REQUIRE(std::isfinite(x));
  CHECK(gpu_error(out.gpu, out.cpu) <= 1e-4);  // scores ~ 1e3: exp of differences amplifies rounding
}

// =====================================================================================================
// SwiGLU
// =====================================================================================================

TEST_CASE("cuda: swiglu forward and backward match the CPU", "[cuda][grids]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 13, F = 70;
    Pair gate = random_pair(dtype, {N, F}, 22, 2.0), up = random_pair(dtype, {N, F}, 23);
    Pair out = zero_pair(dtype, {N, F});
    ops::swiglu_forward(out.gpu, gate.gpu, up.gpu);
    ops::swiglu_forward(out.cpu, gate.cpu, up.cpu);
    CHECK(gpu_error(out.gpu, out.cpu) <= output_tolerance(dtype));
    Pair dout = random_pair(dtype, {N, F}, 24);
    Pair dgate = zero_pair(dtype, {N, F}), dup = zero_pair(dtype, {N, F});
    ops::swiglu_backward(dgate.gpu, dup.gpu, dout.gpu, gate.gpu, up.gpu);
    ops::swiglu_backward(dgate.cpu, dup.cpu, dout.cpu, gate.cpu, up.cpu);
    CHECK(gpu_error(dgate.gpu, dgate.cpu) <= output_tolerance(dtype));
    CHECK(gpu_error(dup.gpu, dup.cpu) <= output_tolerance(dtype));
  }
}

// =====================================================================================================
// classifier
// =====================================================================================================

TEST_CASE("cuda: the fused classifier matches the CPU: losses, dx, dW accumulating, forward only", "[cuda][grids]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 37, d = 24, V = 300;
    Pair x = random_pair(dtype, {N, d}, 25), W = random_pair(dtype, {V, d}, 26, 0.5);
    Pair targets = pair_of(tokens_of({N}, V, 27));
    Pair losses = zero_pair(stats_type(dtype), {N});
    Pair dx = random_pair(dtype, {N, d}, 28), dW = random_pair(dtype, {V, d}, 29);
    const double scale = 1.0 / 37;
    ops::classifier_forward_backward(losses.gpu, dx.gpu, dW.gpu, x.gpu, W.gpu, targets.gpu, scale);
    ops::classifier_forward_backward(losses.cpu, dx.cpu, dW.cpu, x.cpu, W.cpu, targets.cpu, scale);
    CHECK(gpu_error(losses.gpu, losses.cpu) <= (dtype == DType::F32 ? kF32 : kBf16Stats));
    CHECK(gpu_error(dx.gpu, dx.cpu) <= output_tolerance(dtype));
    CHECK(gpu_error(dW.gpu, dW.cpu) <= accumulate_tolerance(dtype));

    Pair only = zero_pair(stats_type(dtype), {N});
    ops::classifier_forward_backward(only.gpu, Tensor(), Tensor(), x.gpu, W.gpu, targets.gpu, 0.0);
    CHECK(gpu_error(only.gpu, losses.cpu) <= (dtype == DType::F32 ? kF32 : kBf16Stats));
  }
}

#ifdef L3C_WITH_CUDA
TEST_CASE("cuda: the classifier gives the same results with row blocks and class chunks that cut unevenly",
          "[cuda]") {
  require_gpu();
  const int64_t N = 37, d = 16, V = 90;
  Pair x = random_pair(DType::F32, {N, d}, 30), W = random_pair(DType::F32, {V, d}, 31);
  Pair targets = pair_of(tokens_of({N}, V, 32));
  Pair losses = zero_pair(DType::F32, {N}), dx = zero_pair(DType::F32, {N, d}), dW = random_pair(DType::F32, {V, d}, 35);
  const TestTensor dW_before = dW.gpu.host();
  ops::classifier_forward_backward(losses.cpu, dx.cpu, dW.cpu, x.cpu, W.cpu, targets.cpu, 0.5);
  // (rows per block, classes per chunk): whole rows, chunks of 32 + 32 + 26 classes (the online max and sum), both
  // cut, a chunk of one class.
  for (auto [block_rows, chunk] : {std::pair<int64_t, int64_t>{10, 0}, {0, 32}, {10, 32}, {37, 1}}) {
    INFO("block_rows " << block_rows << ", vocab_chunk " << chunk);
    DeviceTensor gpu_dW(dW_before.tensor());
    ops::fill_zero(dx.gpu);
    ops::cuda::classifier_forward_backward(losses.gpu, dx.gpu, gpu_dW, x.gpu, W.gpu, targets.gpu, 0.5, block_rows,
                                           chunk);
    CHECK(gpu_error(losses.gpu, losses.cpu) <= kF32);
    CHECK(gpu_error(dx.gpu, dx.cpu) <= kF32);
    CHECK(gpu_error(gpu_dW, dW.cpu) <= kF32);
  }
}
#endif

TEST_CASE("cuda: a target outside the vocabulary gives a NaN loss, not a read out of bounds", "[cuda]") {
  require_gpu();
  Pair x = random_pair(DType::F32, {3, 8}, 33), W = random_pair(DType::F32, {10, 8}, 34);
  DeviceTensor targets(ints({3}, {1, 10, 2}));
  DeviceTensor losses(DType::F32, {3});
  ops::classifier_forward_backward(losses, Tensor(), Tensor(), x.gpu, W.gpu, targets, 1.0);
  const std::vector<double> l = losses.values();
  CHECK(std::isfinite(l[0]));
  CHECK(std::isnan(l[1]));
  CHECK(std::isfinite(l[2]));
}

// =====================================================================================================
// grouping
// =====================================================================================================

TEST_CASE("cuda: group_by_key equals the CPU's stable counting sort", "[cuda]") {
  require_gpu();
  // Several tiles of positions; few keys (long groups), many keys (several scan entries per thread, most
  // groups empty), one key; no positions at all.
  const std::vector<std::pair<int64_t, int64_t>> sizes = {{3000, 17}, {2500, 5000}, {100, 1}, {0, 4}, {1, 3}};
  for (auto [N, K] : sizes) {
    INFO("N " << N << " K " << K);
    TestTensor keys = tokens_of({N}, K, 35);
    Pair k = pair_of(keys);
    Pair order = zero_pair(DType::I32, {N}, DType::I32), offsets = zero_pair(DType::I32, {K + 1}, DType::I32);
    ops::group_by_key(order.gpu, offsets.gpu, k.gpu);
    ops::group_by_key(order.cpu, offsets.cpu, k.cpu);
    CHECK(order.gpu.values() == order.cpu.values());
    CHECK(offsets.gpu.values() == offsets.cpu.values());
  }
  DeviceTensor bad(ints({4}, {0, 1, 7, 2})), order(DType::I32, {4}), offsets(DType::I32, {5});
  REQUIRE_THROWS_WITH(ops::group_by_key(order, offsets, bad), Contains("group_by_key") && Contains("outside [0, 4)"));
}

TEST_CASE("cuda: gather, scatter (overwrite and accumulate), concat and split match the CPU", "[cuda][grids]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype));
    const int64_t N = 21, d = 9;
    std::vector<int32_t> perm(N);
    std::iota(perm.begin(), perm.end(), 0);
    std::reverse(perm.begin(), perm.begin() + 13);
    Pair index = pair_of(ints({N}, perm));
    Pair x = random_pair(dtype, {N, d}, 36);
    Pair out = zero_pair(dtype, {N, d});
    ops::gather_rows(out.gpu, x.gpu, index.gpu);
    ops::gather_rows(out.cpu, x.cpu, index.cpu);
    CHECK(out.gpu.values() == out.cpu.values());
    Pair back = random_pair(dtype, {N, d}, 37);
    ops::scatter_rows(back.gpu, out.gpu, index.gpu);
    ops::scatter_rows(back.cpu, out.cpu, index.cpu);
    CHECK(back.gpu.values() == back.cpu.values());
    ops::scatter_rows(back.gpu, x.gpu, index.gpu, /*accumulate=*/true);
    ops::scatter_rows(back.cpu, x.cpu, index.cpu, /*accumulate=*/true);
    CHECK(gpu_error(back.gpu, back.cpu) <= output_tolerance(dtype));

    Pair a = random_pair(dtype, {N, 5}, 38), b = random_pair(dtype, {N, 7}, 39);
    Pair ab = zero_pair(dtype, {N, 12});
    ops::concat_last_dim(ab.gpu, a.gpu, b.gpu);
    ops::concat_last_dim(ab.cpu, a.cpu, b.cpu);
    CHECK(ab.gpu.values() == ab.cpu.values());
    Pair da = random_pair(dtype, {N, 5}, 40), db = random_pair(dtype, {N, 7}, 41);
    ops::split_last_dim(da.gpu, db.gpu, ab.gpu, /*accumulate_a=*/false, /*accumulate_b=*/true);
    ops::split_last_dim(da.cpu, db.cpu, ab.cpu, false, true);
    CHECK(da.gpu.values() == da.cpu.values());
    CHECK(gpu_error(db.gpu, db.cpu) <= output_tolerance(dtype));
  }
}

// =====================================================================================================
// L3 lookup
// =====================================================================================================

namespace {
// A grouped batch for V tokens: positions sorted by token (some tokens absent), and an allocation with tokens of
// one row and of k rows.
struct L3Batch {
  int64_t V, N, v, k;
  TestTensor group_offsets, row_offsets;
};
L3Batch l3_batch(int64_t V, int64_t N, int64_t k, uint64_t seed) {
  L3Batch b{V, N, 0, k, TestTensor(DType::I32, {V + 1}), TestTensor(DType::I32, {V + 1})};
  TestTensor tok = tokens_of({N}, V - 2, seed);  // the last two tokens never occur
  std::vector<int64_t> count(V, 0);
  for (int64_t i = 0; i < N; ++i) ++count[static_cast<int64_t>(tok[i])];
  SplitMix64 rng(seed + 1);
  int32_t* go = b.group_offsets.ptr<int32_t>();
  int32_t* ro = b.row_offsets.ptr<int32_t>();
  go[0] = ro[0] = 0;
  for (int64_t u = 0; u < V; ++u) {
    const int64_t rows = u % 3 == 0 ? 1 : (u % 3 == 1 ? k : 1 + static_cast<int64_t>(rng.next() % k));
    go[u + 1] = go[u] + static_cast<int32_t>(count[u]);
    ro[u + 1] = ro[u] + static_cast<int32_t>(rows);
  }
  b.v = ro[V];
  return b;
}
}  // namespace

TEST_CASE("cuda: L3 lookup forward and backward match the CPU: one row, k rows, absent tokens, tied", "[cuda][grids]") {
  require_gpu();
  for (DType dtype : kGpuTypes) {
    for (bool tied : {false, true}) {
      INFO("dtype " << dtype_name(dtype) << " tied " << tied);
      const int64_t V = 11, N = 60, k = 9, d = 20;
      const int64_t d_emb = tied ? d : 12;
      L3Batch batch = l3_batch(V, N, k, 42);
      Pair go = pair_of(batch.group_offsets), ro = pair_of(batch.row_offsets);
      Pair x = random_pair(dtype, {N, d}, 43), w_k = random_pair(dtype, {batch.v, d}, 44);
      Pair w_v_own = random_pair(dtype, {batch.v, d_emb}, 45);
      Pair& w_v = tied ? w_k : w_v_own;
      Pair out = zero_pair(dtype, {N, d_emb}), probs = zero_pair(stats_type(dtype), {N, k});
      ops::l3_lookup_forward(out.gpu, probs.gpu, x.gpu, w_k.gpu, w_v.gpu, go.gpu, ro.gpu);
      ops::l3_lookup_forward(out.cpu, probs.cpu, x.cpu, w_k.cpu, w_v.cpu, go.cpu, ro.cpu);
      CHECK(gpu_error(out.gpu, out.cpu) <= output_tolerance(dtype));
      CHECK(gpu_error(probs.gpu, probs.cpu) <= (dtype == DType::F32 ? kF32 : kBf16Stats));

      DeviceTensor probs_gpu(probs.cpu);  // both backwards read the CPU's probabilities
      Pair dout = random_pair(dtype, {N, d_emb}, 46);
      Pair dx = random_pair(dtype, {N, d}, 47);  // overwritten
      Pair dw_k = random_pair(dtype, {batch.v, d}, 48), dw_v_own = random_pair(dtype, {batch.v, d_emb}, 49);
      Pair& dw_v = tied ? dw_k : dw_v_own;
      ops::l3_lookup_backward(dx.gpu, dw_k.gpu, dw_v.gpu, dout.gpu, x.gpu, w_k.gpu, w_v.gpu, probs_gpu, go.gpu, ro.gpu);
      ops::l3_lookup_backward(dx.cpu, dw_k.cpu, dw_v.cpu, dout.cpu, x.cpu, w_k.cpu, w_v.cpu, probs.cpu, go.cpu, ro.cpu);
      CHECK(gpu_error(dx.gpu, dx.cpu) <= output_tolerance(dtype));
      CHECK(gpu_error(dw_k.gpu, dw_k.cpu) <= accumulate_tolerance(dtype));
      if (!tied) CHECK(gpu_error(dw_v.gpu, dw_v.cpu) <= accumulate_tolerance(dtype));
    }
  }
}

// =====================================================================================================
// AdamW
// =====================================================================================================

namespace {
// AdamW's second step at lr 1e-2, weight decay 0.1 and the default betas.
ops::AdamWStep second_adamw_step() {
  ops::AdamWStep s;
  s.lr = 1e-2;
  s.weight_decay = 0.1;
  s.bias1 = 1 - 0.9 * 0.9;
  s.bias2 = 1 - 0.95 * 0.95;
  return s;
}

// The f32 operands of an AdamW update (weights, gradients, moments; v non-negative), from seeds seed .. seed + 3.
struct AdamwOperands {
  Pair w, g, m, v;
  AdamwOperands(int64_t n, uint64_t seed)
      : w(random_pair(DType::F32, {n}, seed)), g(random_pair(DType::F32, {n}, seed + 1)),
        m(random_pair(DType::F32, {n}, seed + 2, 0.1)), v(random_pair(DType::F32, {n}, seed + 3, 0.1)) {
    for (int64_t i = 0; i < n; ++i) v.cpu.set(i, std::abs(v.cpu[i]));
    v.gpu = DeviceTensor(v.cpu);
  }
  // The same update on the GPU (through gpu_gate) and on the CPU (through cpu_gate), each reading the step's
  // constants where it runs; the results within f32 error.
  void update_and_compare(const ops::AdamWStep& s, Tensor gpu_gate = Tensor(), Tensor cpu_gate = Tensor()) {
    const TestTensor constants = adamw_constants_of(s);
    ops::adamw_update(w.gpu, g.gpu, m.gpu, v.gpu, Tensor(), DeviceTensor(constants), gpu_gate);
    ops::adamw_update(w.cpu, g.cpu, m.cpu, v.cpu, Tensor(), constants, cpu_gate);
    CHECK(gpu_error(w.gpu, w.cpu) <= kF32);
    CHECK(gpu_error(m.gpu, m.cpu) <= kF32);
    CHECK(gpu_error(v.gpu, v.cpu) <= kF32);
  }
  // The step's f32 constants (ops::write_adamw_constants) in host memory.
  static TestTensor adamw_constants_of(const ops::AdamWStep& s) {
    TestTensor constants(DType::F32, {ops::kAdamWConstants});
    ops::write_adamw_constants(constants, s);
    return constants;
  }
};
}  // namespace

TEST_CASE("cuda: adamw_update matches the CPU in f32, and in bf16 updates the f32 master", "[cuda][grids]") {
  require_gpu();
  const int64_t n = 1000;
  const ops::AdamWStep s = second_adamw_step();
  AdamwOperands(n, 50).update_and_compare(s);

  // Mixed precision: the master (f32) follows the f32 update from the same gradient; the parameter is its
  // rounding to bf16.
  TestTensor master_host = random_pair(DType::F32, {n}, 54).cpu;
  DeviceTensor master(master_host), param(master_host.converted(DType::BF16));
  Pair grad = random_pair(DType::BF16, {n}, 55);
  DeviceTensor m2(TestTensor(DType::F32, {n})), v2(TestTensor(DType::F32, {n}));
  TestTensor m2_cpu(DType::F32, {n}), v2_cpu(DType::F32, {n});
  const TestTensor constants = AdamwOperands::adamw_constants_of(s);
  ops::adamw_update(param, grad.gpu, m2, v2, master, DeviceTensor(constants));
  ops::adamw_update(master_host, grad.cpu, m2_cpu, v2_cpu, Tensor(), constants);
  CHECK(gpu_error(master, master_host) <= kF32);
  CHECK(param.values() == master.host().converted(DType::BF16).values());
}

TEST_CASE("cuda: the update gate is computed on the device; AdamW reads its factor there, or skips", "[cuda]") {
  require_gpu();
  const int64_t n = 300;
  const ops::AdamWStep s = second_adamw_step();
  // Sums of a step that clips (norm 8 against 2), then of a non-finite one: the gate's bits equal the CPU's.
  for (const double loss : {3.25, std::numeric_limits<double>::quiet_NaN()}) {
    INFO("loss " << loss);
    const TestTensor loss_host = TestTensor::from_values(DType::F64, {1}, {loss});
    const TestTensor squares_host = TestTensor::from_values(DType::F64, {1}, {64.0});
    TestTensor gate_host(DType::F64, {2});
    DeviceTensor loss_sum(loss_host), squares(squares_host), gate(gate_host);
    ops::update_gate(gate, loss_sum, squares, 2.0);
    ops::update_gate(gate_host, loss_host, squares_host, 2.0);
    CHECK(gate.host().values() == gate_host.values());
    // f32 AdamW through the device gate against the CPU's through the host gate.
    AdamwOperands operands(n, 60);
    const std::vector<double> before = operands.w.cpu.values();
    operands.update_and_compare(s, gate, gate_host);
    if (std::isnan(loss)) CHECK(operands.w.gpu.values() == before);  // closed: nothing written
  }
}

TEST_CASE("cuda: AdamW's launches are the same at every step: its constants follow the schedule at one device "
          "address", "[cuda]") {
  require_gpu();
  ParamRegistry r;
  r.add("w", {4, 8}, InitKind::Normal, 1.0, "ffn");  // decayed
  r.add("g", {8}, InitKind::Ones, 0.0, "norm");      // not decayed: a second run
  const int64_t n = r.total();
  const AdamWSettings settings{0.9, 0.95, 1e-8, 0.1};
  FlatBuffer params(n, DType::F32, Device::CUDA), grads(n, DType::F32, Device::CUDA), host_params(n, DType::F32),
      host_grads(n, DType::F32);
  random_fill(host_params.all(), 80);
  random_fill(host_grads.all(), 81);
  ops::copy(params.all(), host_params.all());
  ops::copy(grads.all(), host_grads.all());
  AdamW gpu(r, DType::F32, settings, Device::CUDA), cpu(r, DType::F32, settings);
  const void* address = gpu.constants().all().data;
  std::vector<std::vector<std::string>> launches;
  for (const double lr : {1e-2, 3e-3}) {
    INFO("lr " << lr);
    cuda_record_launches(true);
    gpu.step(params, grads, lr);
    cuda_record_launches(false);
    launches.push_back(cuda_take_launch_record());
    cpu.step(host_params, host_grads, lr);
    CHECK(gpu.constants().all().data == address);
    // Each run's constants, from this step's learning rate and count.
    const double t = static_cast<double>(gpu.steps_taken());
    std::vector<double> expected;
    for (const double decay : {0.1, 0.0}) {
      const ops::AdamWStep step{lr, 0.9, 0.95, 1e-8, decay, 1.0 - std::pow(0.9, t), 1.0 - std::pow(0.95, t)};
      const ops::AdamWConstants<float> k = ops::adamw_constants<float>(step);
      expected.insert(expected.end(), {k.beta1, k.beta2, k.step_size, k.inv_sqrt_bias2, k.eps, k.decay});
    }
    TestTensor constants(DType::F32, {gpu.constants().numel()});
    ops::copy(constants, gpu.constants().all());
    CHECK(constants.values() == expected);
    TestTensor updated(DType::F32, {n});
    ops::copy(updated, params.all());
    CHECK(norm_relative_error(updated.values(), to_double_vector(host_params.all())) <= kF32);
  }
  REQUIRE(launches[0].size() == 3);  // the constants' one upload, then the update of each run
  CHECK(launches[0][0].rfind("upload", 0) == 0);
  CHECK(launches[0] == launches[1]);

  // The staging memory is rewritten only once the device has read the last copy from it: after a wait (the copies
  // above), a step waits for nothing; right after a step, the next one waits first.
  const int64_t before = cuda_host_synchronizations();
  gpu.step(params, grads, 1e-3);
  CHECK(cuda_host_synchronizations() == before);
  gpu.step(params, grads, 1e-3);
  CHECK(cuda_host_synchronizations() == before + 1);
}

// =====================================================================================================
// Mixture-of-Experts (the CUDA ops against references written here)
// =====================================================================================================

#ifdef L3C_WITH_CUDA
namespace {
struct RouterReference {
  std::vector<double> probs, lse, weights;
  std::vector<int32_t> experts;
};
RouterReference router_reference(const std::vector<double>& logits, int64_t n, int64_t E, int64_t top_k,
                                 bool normalize) {
  RouterReference r{std::vector<double>(n * E), std::vector<double>(n), std::vector<double>(n * top_k),
                    std::vector<int32_t>(n * top_k)};
  for (int64_t i = 0; i < n; ++i) {
    double max = -1e300, sum = 0;
    for (int64_t e = 0; e < E; ++e) max = std::max(max, logits[i * E + e]);
    for (int64_t e = 0; e < E; ++e) sum += std::exp(logits[i * E + e] - max);
    r.lse[i] = max + std::log(sum);
    for (int64_t e = 0; e < E; ++e) r.probs[i * E + e] = std::exp(logits[i * E + e] - r.lse[i]);
    std::vector<int64_t> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return r.probs[i * E + a] > r.probs[i * E + b]; });
    double selected = 0;
    for (int64_t s = 0; s < top_k; ++s) selected += r.probs[i * E + idx[s]];
    for (int64_t s = 0; s < top_k; ++s) {
      r.experts[i * top_k + s] = static_cast<int32_t>(idx[s]);
      r.weights[i * top_k + s] = r.probs[i * E + idx[s]] / (normalize ? selected : 1.0);
    }
  }
  return r;
}

// grouped_matmul_forward and _backward against loops in double: rows (M, d) times w (E, F, d)^T per expert over
// the groups `offsets` (E + 1), out (M, F), dx (M, d) and dw (E, F, d) within f32 tolerance. Returns dw read back
// (it starts at zero, so an expert with no rows keeps zeros).
std::vector<double> check_grouped_matmul(const TestTensor& rows, const DeviceTensor& rows_gpu, const TestTensor& w,
                                         const TestTensor& dout, const DeviceTensor& offsets) {
  const int64_t M = rows.tensor().dim(0), d = rows.tensor().dim(1), E = w.tensor().dim(0), F = w.tensor().dim(1);
  const std::vector<double> offs = offsets.values();
  DeviceTensor w_gpu(w), dout_gpu(dout), out(DType::F32, {M, F});
  ops::cuda::grouped_matmul_forward(out, rows_gpu, w_gpu, offsets);
  std::vector<double> expect_out(M * F, 0.0), expect_dx(M * d, 0.0), expect_dw(E * F * d, 0.0);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = static_cast<int64_t>(offs[e]); i < static_cast<int64_t>(offs[e + 1]); ++i)
      for (int64_t o = 0; o < F; ++o)
        for (int64_t c = 0; c < d; ++c) {
          expect_out[i * F + o] += rows[i * d + c] * w[(e * F + o) * d + c];
          expect_dx[i * d + c] += dout[i * F + o] * w[(e * F + o) * d + c];
          expect_dw[(e * F + o) * d + c] += dout[i * F + o] * rows[i * d + c];
        }
  CHECK(norm_relative_error(out.values(), expect_out) <= kF32);
  DeviceTensor dx(DType::F32, {M, d}), dw(TestTensor(DType::F32, {E, F, d}));
  ops::cuda::grouped_matmul_backward(dx, dw, dout_gpu, rows_gpu, w_gpu, offsets, false);
  CHECK(norm_relative_error(dx.values(), expect_dx) <= kF32);
  CHECK(norm_relative_error(dw.values(), expect_dw) <= kF32);
  return dw.values();
}
}  // namespace

TEST_CASE("cuda: the MoE router matches the reference in f32 and from bf16 logits: probabilities, lse, top-k with "
          "ties, weights, and its backward", "[cuda][moe]") {
  require_gpu();
  const int64_t n = 9, E = 6, top_k = 2;
  for (DType dtype : kGpuTypes) {
    // bf16 logits hold the same values as the reference's (random values rounded to bf16; the ties are exact)
    TestTensor logits = TestTensor(dtype, {n, E});
    random_fill(logits, 60);
    for (int64_t e = 0; e < E; ++e) logits.set(3 * E + e, 0.5);  // row 3: all tied -> experts 0 and 1
    logits.set(5 * E + 4, 2.0);
    logits.set(5 * E + 1, 2.0);  // row 5: a tie for the top -> expert 1 before 4
    for (bool normalize : {true, false}) {
      INFO(dtype_name(dtype) << ", normalize " << normalize);
      const RouterReference ref = router_reference(logits.values(), n, E, top_k, normalize);
      // the routing statistics are f32 whatever the logits' dtype: computed in f32 from the same values
      DeviceTensor z(logits), probs(DType::F32, {n, E}), lse(DType::F32, {n}), experts(DType::I32, {n, top_k}),
          weights(DType::F32, {n, top_k});
      ops::moe_router_forward(probs, lse, experts, weights, z, normalize);
      CHECK(norm_relative_error(probs.values(), ref.probs) <= kF32);
      CHECK(norm_relative_error(lse.values(), ref.lse) <= kF32);
      CHECK(norm_relative_error(weights.values(), ref.weights) <= kF32);
      std::vector<double> expected_experts(ref.experts.begin(), ref.experts.end());
      CHECK(experts.values() == expected_experts);

      // Backward against central differences (in double, on the reference) of
      //   sum dweights * weights + sum bias_e p_e + z_scale * sum lse^2.
      TestTensor dweights_host(DType::F32, {n, top_k}), bias_host(DType::F32, {E});
      random_fill(dweights_host, 61);
      random_fill(bias_host, 62, 0.1);
      const double z_scale = 0.05;
      auto objective = [&](const std::vector<double>& z_values) {
        const RouterReference r = router_reference(z_values, n, E, top_k, normalize);
        double f = 0;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t s = 0; s < top_k; ++s) {
            // the selection is held fixed at the reference's: differentiate the weights of those experts
            const int64_t e = ref.experts[i * top_k + s];
            double selected = 0;
            for (int64_t t = 0; t < top_k; ++t) selected += r.probs[i * E + ref.experts[i * top_k + t]];
            f += dweights_host[i * top_k + s] * r.probs[i * E + e] / (normalize ? selected : 1.0);
          }
          for (int64_t e = 0; e < E; ++e) f += bias_host[e] * r.probs[i * E + e];
          f += z_scale * r.lse[i] * r.lse[i];
        }
        return f;
      };
      std::vector<double> numeric(n * E);
      std::vector<double> zv = logits.values();
      for (int64_t i = 0; i < n * E; ++i) {
        const double saved = zv[i];
        zv[i] = saved + 1e-6;
        const double plus = objective(zv);
        zv[i] = saved - 1e-6;
        const double minus = objective(zv);
        zv[i] = saved;
        numeric[i] = (plus - minus) / 2e-6;
      }
      // dlogits has the logits' dtype: one bf16 rounding of each element on top of the f32 kernel's error
      DeviceTensor dweights(dweights_host), bias(bias_host), dlogits(dtype, {n, E});
      ops::moe_router_backward(dlogits, dweights, probs, lse, experts, weights, bias, z_scale, normalize);
      CHECK(norm_relative_error(dlogits.values(), numeric) <= (dtype == DType::F32 ? 1e-4 : kBf16Output));
    }
  }
}

namespace {
// The (token, slot) pairs with the given experts grouped by expert on the GPU: order and offsets there, and the
// offsets read back.
struct Grouping {
  DeviceTensor order, offsets;
  std::vector<double> host_offsets;
};
Grouping group_pairs(const std::vector<int32_t>& pair_experts, int64_t E) {
  const auto M = static_cast<int64_t>(pair_experts.size());
  Grouping g{DeviceTensor(DType::I32, {M}), DeviceTensor(DType::I32, {E + 1}), {}};
  DeviceTensor keys(ints({M}, pair_experts));
  ops::group_by_key(g.order, g.offsets, keys, ops::KeyCheck::Trusted);
  g.host_offsets = g.offsets.values();
  return g;
}
}  // namespace

TEST_CASE("cuda: MoE routing statistics and the load-balancing bias are reduced on the device as on the CPU",
          "[cuda][moe]") {
  require_gpu();
  const int64_t n = 23, E = 5, top_k = 2;
  TestTensor logits(DType::F32, {n, E});
  random_fill(logits, 63, 2.0);
  TestTensor probs(DType::F32, {n, E}), lse(DType::F32, {n}), experts(DType::I32, {n, top_k}),
      weights(DType::F32, {n, top_k}), order(DType::I32, {n * top_k}), offsets(DType::I32, {E + 1});
  ops::moe_router_forward(probs, lse, experts, weights, logits, true);
  ops::group_by_key(order, offsets, experts.tensor().view({n * top_k}));
  TestTensor stats(DType::F32, {ops::kMoeStatistics}), bias(DType::F32, {E});
  ops::moe_routing_stats(stats, probs, lse, offsets);
  ops::moe_balance_bias(bias, offsets, 0.125);
  DeviceTensor probs_gpu(probs), lse_gpu(lse), offsets_gpu(offsets), stats_gpu(DType::F32, {ops::kMoeStatistics}),
      bias_gpu(DType::F32, {E});
  ops::moe_routing_stats(stats_gpu, probs_gpu, lse_gpu, offsets_gpu);
  ops::moe_balance_bias(bias_gpu, offsets_gpu, 0.125);
  CHECK(norm_relative_error(stats_gpu.values(), stats.values()) <= kF32);
  CHECK(bias_gpu.values() == bias.values());  // a count times a scale: exact
  // balance: sum_e (rows_e / 2n) P_e with rows_e from the offsets
  double balance = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    double mean = 0.0;
    for (int64_t i = 0; i < n; ++i) mean += probs[i * E + e] / n;
    balance += (offsets[e + 1] - offsets[e]) / static_cast<double>(n * top_k) * mean;
  }
  CHECK(stats_gpu.values()[0] == Approx(balance).epsilon(1e-6));

  // Routing statistics are f32 on CUDA, also for a bf16 model.
  DeviceTensor bf16_stats(DType::BF16, {ops::kMoeStatistics}), bf16_probs(DType::BF16, {n, E}), bf16_lse(DType::BF16, {n});
  REQUIRE_THROWS_WITH(ops::moe_routing_stats(bf16_stats, bf16_probs, bf16_lse, offsets_gpu),
                      Contains("moe_routing_stats") && Contains("f32 on CUDA"));
}

TEST_CASE("cuda: MoE pair indices and grouped products match the CPU in f32 and bf16 (f32 or bf16 weight "
          "gradients): empty experts, an expert with every row, groups over several row and column tiles",
          "[cuda][moe]") {
  require_gpu();
  // 75 tokens, top_k 2: 150 rows. The grouped kernels' tiles are 64 rows by 64 columns: experts 1 and 3 receive
  // about 70 rows each (two row tiles), expert 2 a few, experts 0 and 4 none; O = 70 is two column tiles. Then
  // every row goes to expert 2.
  const int64_t n = 75, top_k = 2, M = n * top_k, E = 5, I = 20, O = 70;
  std::vector<int32_t> spread(M), all_to_two(M, 2);
  for (int64_t p = 0; p < M; ++p) spread[p] = p % 50 < 3 ? 2 : (p * 7 % 147 < 70 ? 1 : 3);
  for (const auto& [what, pair_experts] : {std::pair{"spread", spread}, std::pair{"all rows to expert 2", all_to_two}}) {
    INFO(what);
    const Grouping g = group_pairs(pair_experts, E);
    REQUIRE(g.host_offsets[1] == 0);   // expert 0: no row
    REQUIRE(g.host_offsets[5] == g.host_offsets[4]);  // expert 4: no row
    const Pair offsets = pair_of(g.offsets.host());

    DeviceTensor token_of_row(DType::I32, {M}), row_of_pair(DType::I32, {M});
    ops::moe_pair_indices(token_of_row, row_of_pair, g.order, top_k);
    const std::vector<double> ord = g.order.values(), tor = token_of_row.values(), rop = row_of_pair.values();
    for (int64_t i = 0; i < M; ++i) {
      CHECK(tor[i] == std::floor(ord[i] / top_k));
      CHECK(rop[static_cast<int64_t>(ord[i])] == i);
    }

    for (DType dtype : kGpuTypes) {
      for (DType grad_dtype : {dtype, DType::F32}) {
        INFO(dtype_name(dtype) << " inputs, " << dtype_name(grad_dtype) << " weight gradient");
        Pair x = random_pair(dtype, {M, I}, 71), w = random_pair(dtype, {E, O, I}, 72, 0.3),
             dout = random_pair(dtype, {M, O}, 73), out = zero_pair(dtype, {M, O});
        ops::grouped_matmul_forward(out.gpu, x.gpu, w.gpu, offsets.gpu);
        ops::grouped_matmul_forward(out.cpu, x.cpu, w.cpu, offsets.cpu);
        CHECK(close_to(out.gpu, out.cpu, output_tolerance(dtype)));

        // dx overwriting, then accumulating; dw accumulating onto random values (its empty experts stay as they were)
        Pair dx = random_pair(dtype, {M, I}, 74);
        Pair dw = random_pair(grad_dtype == DType::BF16 ? DType::BF16 : DType::F32, {E, O, I}, 75);
        const std::vector<double> dw_before = dw.gpu.values();
        ops::grouped_matmul_backward(dx.gpu, dw.gpu, dout.gpu, x.gpu, w.gpu, offsets.gpu, false);
        ops::grouped_matmul_backward(dx.cpu, dw.cpu, dout.cpu, x.cpu, w.cpu, offsets.cpu, false);
        CHECK(close_to(dx.gpu, dx.cpu, output_tolerance(dtype)));
        // an f32 gradient of bf16 inputs sums the same products in f32: the f32 tolerance
        CHECK(close_to(dw.gpu, dw.cpu, grad_dtype == DType::F32 ? kF32 : accumulate_tolerance(dtype)));
        const std::vector<double> dw_after = dw.gpu.values();
        for (int64_t e : {0, 4})
          CHECK(std::equal(dw_after.begin() + e * O * I, dw_after.begin() + (e + 1) * O * I,
                           dw_before.begin() + e * O * I));
        ops::grouped_matmul_backward(dx.gpu, Tensor(), dout.gpu, x.gpu, w.gpu, offsets.gpu, true);
        ops::grouped_matmul_backward(dx.cpu, Tensor(), dout.cpu, x.cpu, w.cpu, offsets.cpu, true);
        CHECK(close_to(dx.gpu, dx.cpu, accumulate_tolerance(dtype)));
        if (dtype == DType::F32) break;  // f32 inputs have f32 gradients only
      }
    }
  }
  // Gradients of another dtype than the inputs' are refused, except f32 for bf16.
  DeviceTensor x(DType::F32, {M, I}), w(DType::F32, {E, O, I}), dout(DType::F32, {M, O}), dw(DType::BF16, {E, O, I});
  const Grouping g = group_pairs(all_to_two, E);
  REQUIRE_THROWS_WITH(ops::grouped_matmul_backward(Tensor(), dw, dout, x, w, g.offsets),
                      Contains("grouped_matmul_backward") && Contains("parameter gradient") && Contains("expected f32"));
}

TEST_CASE("cuda: MoE grouped products in bf16 on tensor cores and on CUDA cores match the CPU: experts of 0, 1, 17 "
          "and 70 rows, one expert with every row, ragged and unaligned widths, the same bits twice", "[cuda][moe]") {
  require_gpu();
  using ops::cuda::MoeKernel;
  CHECK(ops::cuda::tensor_core_moe_supports(DType::BF16));
  CHECK_FALSE(ops::cuda::tensor_core_moe_supports(DType::F32));
  // Every GPU the build targets (sm_80, sm_90) and the emulation have bf16 tensor cores.
  CHECK(ops::cuda::moe_kernel_for(DType::BF16) == MoeKernel::TensorCores);
  CHECK(ops::cuda::moe_kernel_for(DType::F32) == MoeKernel::CudaCores);

  // Tiles of 64 rows by 64 columns, slices 32 deep (16 on CUDA cores): 1 and 17 rows are one ragged row tile, 70
  // rows a full one and a ragged one; out 80 and 70 end in a partial column tile, in 20 and out 70 end a slice
  // inside a 16-deep fragment step, and their rows (40 and 140 bytes) are loaded element by element.
  const int64_t M = 88, E = 5;
  const std::vector<int32_t> ragged = {0, 0, 1, 18, 18, 88}, every_row = {0, 0, 0, 88, 88, 88};
  struct Case {
    const char* what;
    const std::vector<int32_t>& offsets;
    int64_t I, O;
  };
  for (const Case& c : {Case{"experts of 0, 1, 17, 0, 70 rows", ragged, 48, 80},
                        Case{"experts of 0, 1, 17, 0, 70 rows", ragged, 20, 70},
                        Case{"every row to expert 2", every_row, 48, 80}}) {
    const std::vector<int32_t>& offsets_host = c.offsets;
    const int64_t I = c.I, O = c.O;
    const Pair offsets = pair_of(ints({E + 1}, offsets_host));
    // The CPU in f32 on the same bf16 values: the forward, dx overwritten then accumulated, dw added to random
    // values (an empty expert's stay as they were); each kernel runs twice from the same inputs: the same bits.
    const Pair x = random_pair(DType::BF16, {M, I}, 91), w = random_pair(DType::BF16, {E, O, I}, 92, 0.3),
               dout = random_pair(DType::BF16, {M, O}, 93);
    for (const DType grad_dtype : {DType::F32, DType::BF16}) {
      TestTensor out(DType::F32, {M, O}), dx(DType::F32, {M, I}), dx_added(DType::F32, {M, I});
      const Pair dw_start = random_pair(grad_dtype, {E, O, I}, 94);
      TestTensor dw = dw_start.cpu.converted(DType::F32);
      ops::grouped_matmul_forward(out, x.cpu, w.cpu, offsets.cpu);
      ops::grouped_matmul_backward(dx, dw, dout.cpu, x.cpu, w.cpu, offsets.cpu, false);
      ops::copy(dx_added, dx);
      ops::grouped_matmul_backward(dx_added, Tensor(), dout.cpu, x.cpu, w.cpu, offsets.cpu, true);
      const std::vector<double> dw_before = dw_start.gpu.values();
      for (const MoeKernel kernel : {MoeKernel::TensorCores, MoeKernel::CudaCores}) {
        INFO(c.what << ", in " << I << ", out " << O << ", " << dtype_name(grad_dtype) << " weight gradient, "
                  << (kernel == MoeKernel::TensorCores ? "tensor cores" : "CUDA cores"));
        std::vector<double> first[4];
        for (int run = 0; run < 2; ++run) {
          DeviceTensor out_gpu(DType::BF16, {M, O}), dx_gpu(DType::BF16, {M, I}), dw_gpu(grad_dtype, {E, O, I});
          ops::copy(dw_gpu, dw_start.gpu);
          ops::cuda::grouped_matmul_forward(out_gpu, x.gpu, w.gpu, offsets.gpu, kernel);
          ops::cuda::grouped_matmul_backward(dx_gpu, dw_gpu, dout.gpu, x.gpu, w.gpu, offsets.gpu, false, kernel);
          const std::vector<double> dx_once = dx_gpu.values(), dw_after = dw_gpu.values();
          ops::cuda::grouped_matmul_backward(dx_gpu, Tensor(), dout.gpu, x.gpu, w.gpu, offsets.gpu, true, kernel);
          const std::vector<double> results[4] = {out_gpu.values(), dx_once, dw_after, dx_gpu.values()};
          if (run == 1) {
            for (int i = 0; i < 4; ++i) CHECK(results[i] == first[i]);
            break;
          }
          std::copy(std::begin(results), std::end(results), std::begin(first));
          // bf16 outputs: one rounding (dx accumulated: two); an f32 gradient sums the exact bf16 products in
          // f32 (summation order only), a bf16 one is rounded when added.
          CHECK(norm_relative_error(results[0], out.values()) <= kBf16Output);
          CHECK(norm_relative_error(results[1], dx.values()) <= kBf16Output);
          CHECK(norm_relative_error(results[2], dw.values()) <= (grad_dtype == DType::F32 ? kF32 : kBf16Accumulate));
          CHECK(norm_relative_error(results[3], dx_added.values()) <= kBf16Accumulate);
          for (int64_t e = 0; e < E; ++e)
            if (offsets_host[e + 1] == offsets_host[e])
              CHECK(std::equal(dw_after.begin() + e * O * I, dw_after.begin() + (e + 1) * O * I,
                               dw_before.begin() + e * O * I));
        }
      }
    }
  }
  // The tensor-core kernels take bf16 only: an f32 call naming them is refused.
  DeviceTensor x(DType::F32, {M, 16}), w(DType::F32, {E, 16, 16}), out(DType::F32, {M, 16});
  const DeviceTensor offsets(ints({E + 1}, ragged));
  REQUIRE_THROWS_WITH(ops::cuda::grouped_matmul_forward(out, x, w, offsets, MoeKernel::TensorCores),
                      Contains("grouped_matmul_forward") && Contains("tensor-core MoE kernels take bf16"));
  REQUIRE_THROWS_WITH(
      ops::cuda::grouped_matmul_backward(Tensor(), w, out, x, w, offsets, false, MoeKernel::TensorCores),
                      Contains("grouped_matmul_backward") && Contains("tensor-core MoE kernels take bf16"));
}

TEST_CASE("cuda: MoE combine and its backward match the CPU in f32 and bf16, with f32 routing weights",
          "[cuda][moe][grids]") {
  require_gpu();
  const int64_t n = 10, top_k = 2, E = 4, d = 6, M = n * top_k;
  std::vector<int32_t> pair_experts(M);
  for (int64_t p = 0; p < M; ++p) pair_experts[p] = static_cast<int32_t>((p * 7 + p / 3) % 3 == 2 ? 3 : (p * 7 + p / 3) % 3);
  const Grouping g = group_pairs(pair_experts, E);
  DeviceTensor token_of_row(DType::I32, {M}), row_of_pair_gpu(DType::I32, {M});
  ops::moe_pair_indices(token_of_row, row_of_pair_gpu, g.order, top_k);
  const Pair row_of_pair = pair_of(row_of_pair_gpu.host());
  for (DType dtype : kGpuTypes) {
    INFO(dtype_name(dtype));
    Pair rows = random_pair(dtype, {M, d}, 74), dcomb = random_pair(dtype, {n, d}, 75);
    Pair weights = random_pair(DType::F32, {n, top_k}, 76);  // a statistic: f32 in a bf16 call
    Pair combined = random_pair(dtype, {n, d}, 77);
    ops::moe_combine_forward(combined.gpu, rows.gpu, weights.gpu, row_of_pair.gpu, true);
    ops::moe_combine_forward(combined.cpu, rows.cpu, weights.cpu, row_of_pair.cpu, true);
    CHECK(close_to(combined.gpu, combined.cpu, accumulate_tolerance(dtype)));
    Pair drows = zero_pair(dtype, {M, d}), dweights = zero_pair(DType::F32, {n, top_k});
    ops::moe_combine_backward(drows.gpu, dweights.gpu, dcomb.gpu, rows.gpu, weights.gpu, row_of_pair.gpu);
    ops::moe_combine_backward(drows.cpu, dweights.cpu, dcomb.cpu, rows.cpu, weights.cpu, row_of_pair.cpu);
    CHECK(close_to(drows.gpu, drows.cpu, output_tolerance(dtype)));
    CHECK(close_to(dweights.gpu, dweights.cpu, kF32));  // f32 sums of the same products
    // Empty weights: every weight is 1 (the dispatch's backward sums each token's rows).
    ops::moe_combine_forward(combined.gpu, rows.gpu, Tensor(), row_of_pair.gpu, false);
    ops::moe_combine_forward(combined.cpu, rows.cpu, Tensor(), row_of_pair.cpu, false);
    CHECK(close_to(combined.gpu, combined.cpu, output_tolerance(dtype)));
  }
  // bf16 routing weights are refused: they are statistics.
  DeviceTensor out(DType::BF16, {n, d}), rows(DType::BF16, {M, d}), bf16_weights(DType::BF16, {n, top_k});
  REQUIRE_THROWS_WITH(ops::moe_combine_forward(out, rows, bf16_weights, row_of_pair_gpu),
                      Contains("moe_combine_forward") && Contains("statistics") && Contains("expected f32"));
}
#endif

// =====================================================================================================
// errors
// =====================================================================================================

TEST_CASE("cuda: running out of GPU memory is a UserError naming the bytes and what to change", "[cuda]") {
  require_gpu();
  const int64_t elements = int64_t{1} << 50;  // 4 PiB of f32
  try {
    FlatBuffer too_big(elements, DType::F32, Device::CUDA);
    FAIL("a 4 PiB allocation succeeded");
  } catch (const UserError& e) {
    CHECK_THAT(e.what(), Contains("out of GPU memory") && Contains("4096.00 TiB") && Contains("is free") &&
                             Contains("train.micro_batch") && Contains("train.recompute"));
  }
  REQUIRE_THROWS_AS(Arena(size_t{1} << 52, "activation", Device::CUDA), UserError);
}

TEST_CASE("cuda: ops refuse tensors on two devices and dtypes CUDA does not compute in", "[cuda]") {
  require_gpu();
  TestTensor x(DType::F32, {4, 8}), w(DType::F32, {5, 8});
  DeviceTensor out(DType::F32, {4, 5});
  REQUIRE_THROWS_WITH(ops::matmul_forward(out, x, w), Contains("matmul_forward") && Contains("different devices"));
  DeviceTensor x64(TestTensor(DType::F64, {4, 8})), w64(TestTensor(DType::F64, {5, 8})), o64(TestTensor(DType::F64, {4, 5}));
  REQUIRE_THROWS_WITH(ops::matmul_forward(o64, x64, w64), Contains("f32 or bf16 on CUDA") && Contains("f64"));
  DeviceTensor xb(DType::BF16, {4, 8}), rstd_bf16(DType::BF16, {4}), wb(DType::BF16, {8});
  REQUIRE_THROWS_WITH(ops::rmsnorm_forward(xb, rstd_bf16, xb, wb, 1e-5), Contains("statistics") && Contains("f32"));
  // A parameter gradient may be f32 in a bf16 call (mixed precision accumulates in fp32), never bf16 in an f32 call.
  DeviceTensor dout32(DType::F32, {4, 5}), x32(DType::F32, {4, 8}), w32(DType::F32, {5, 8}), dw_bf16(DType::BF16, {5, 8});
  REQUIRE_THROWS_WITH(ops::matmul_backward(Tensor(), dw_bf16, dout32, x32, w32),
                      Contains("parameter gradient") && Contains("is bf16, expected f32"));
}

// =====================================================================================================
// real scale: the shapes of the paper's models (tagged [scale]). On a GPU they run as written; the emulation
// runs the same code on fewer rows where the full shape would take minutes (kEmulated), keeping what makes the
// shape hard (the vocabulary of 180K, the head sizes, k = 512, the skewed groups).
// =====================================================================================================

namespace {
#ifdef L3C_CUDA_EMULATION
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif
}  // namespace

TEST_CASE("cuda: the classifier at V = 180K and T = 2048 matches the CPU", "[cuda][scale]") {
  require_gpu();
  // The GPU takes the logits in several blocks of rows (256 MiB of fp32 logits hold 372 rows of 180K).
  const int64_t V = 180000, N = kEmulated ? 24 : 2048, d = kEmulated ? 16 : 256;
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype) << " N " << N << " V " << V << " d " << d);
    Pair x = random_pair(dtype, {N, d}, 400), W = random_pair(dtype, {V, d}, 401, 0.05);
    Pair targets = pair_of(tokens_of({N}, V, 402));
    targets.cpu.ptr<int32_t>()[0] = static_cast<int32_t>(V - 1);  // the last class, past 2^17
    targets.gpu = DeviceTensor(targets.cpu.tensor());
    Pair losses = zero_pair(stats_type(dtype), {N});
    Pair dx = zero_pair(dtype, {N, d}), dW = random_pair(dtype, {V, d}, 403, 0.01);
    const double scale = 1.0 / static_cast<double>(N);
    ops::classifier_forward_backward(losses.gpu, dx.gpu, dW.gpu, x.gpu, W.gpu, targets.gpu, scale);
    ops::classifier_forward_backward(losses.cpu, dx.cpu, dW.cpu, x.cpu, W.cpu, targets.cpu, scale);
    CHECK(gpu_error(losses.gpu, losses.cpu) <= (dtype == DType::F32 ? kF32 : kBf16Stats));
    CHECK(gpu_error(dx.gpu, dx.cpu) <= output_tolerance(dtype));
    CHECK(gpu_error(dW.gpu, dW.cpu) <= accumulate_tolerance(dtype));
  }
}

TEST_CASE("cuda: attention at head sizes 64, 128, 192 and 256 (shared memory past 48 KiB) matches the CPU",
          "[cuda][scale]") {
  require_gpu();
  // Shared memory of the forward: 2 tiles of 32 rows of hd floats, 48 KiB at hd 192, 64 KiB at 256 (the opt-in
  // path); the dK/dV kernel takes 2 tiles more.
  const int64_t T = kEmulated ? 40 : 1024, heads = kEmulated ? 2 : 4;
  for (DType dtype : kGpuTypes)
    for (int64_t hd : {64, 128, 192, 256}) check_attention(dtype, {1, T, heads, heads / 2, hd}, 500 + hd);
}

TEST_CASE("cuda: L3 with k = 512 and one token filling half the batch matches the CPU", "[cuda][scale]") {
  require_gpu();
  const int64_t V = 40, k = 512, N = kEmulated ? 32 : 2048, d = kEmulated ? 16 : 768;
  // Token 0 takes every other position; the other half is spread over tokens 1..V-3 (the last two never occur).
  // Rows: token 0 and every third token get k, the others from 1 to k.
  TestTensor tokens = tokens_of({N}, V - 3, 600);
  for (int64_t i = 0; i < N; ++i)
    tokens.ptr<int32_t>()[i] = i % 2 == 0 ? 0 : 1 + tokens.ptr<int32_t>()[i];
  std::vector<int64_t> count(V, 0);
  for (int64_t i = 0; i < N; ++i) ++count[tokens.ptr<int32_t>()[i]];
  REQUIRE(count[0] == N / 2);
  TestTensor group_offsets(DType::I32, {V + 1}), row_offsets(DType::I32, {V + 1});
  SplitMix64 rng(601);
  int32_t* go = group_offsets.ptr<int32_t>();
  int32_t* ro = row_offsets.ptr<int32_t>();
  go[0] = ro[0] = 0;
  for (int64_t u = 0; u < V; ++u) {
    const int64_t rows = u % 3 == 0 ? k : 1 + static_cast<int64_t>(rng.next() % k);
    go[u + 1] = go[u] + static_cast<int32_t>(count[u]);
    ro[u + 1] = ro[u] + static_cast<int32_t>(rows);
  }
  const int64_t v = ro[V];
  Pair gop = pair_of(group_offsets), rop = pair_of(row_offsets);
  for (DType dtype : kGpuTypes) {
    INFO("dtype " << dtype_name(dtype) << " N " << N << " k " << k << " d " << d);
    Pair x = random_pair(dtype, {N, d}, 602), w_k = random_pair(dtype, {v, d}, 603, 0.1);
    Pair w_v = random_pair(dtype, {v, d}, 604);
    Pair out = zero_pair(dtype, {N, d}), probs = zero_pair(stats_type(dtype), {N, k});
    ops::l3_lookup_forward(out.gpu, probs.gpu, x.gpu, w_k.gpu, w_v.gpu, gop.gpu, rop.gpu);
    ops::l3_lookup_forward(out.cpu, probs.cpu, x.cpu, w_k.cpu, w_v.cpu, gop.cpu, rop.cpu);
    CHECK(gpu_error(out.gpu, out.cpu) <= output_tolerance(dtype));
    CHECK(gpu_error(probs.gpu, probs.cpu) <= (dtype == DType::F32 ? kF32 : kBf16Stats));

    DeviceTensor probs_gpu(probs.cpu);
    Pair dout = random_pair(dtype, {N, d}, 605);
    Pair dx = zero_pair(dtype, {N, d}), dw_k = zero_pair(dtype, {v, d}), dw_v = zero_pair(dtype, {v, d});
    ops::l3_lookup_backward(dx.gpu, dw_k.gpu, dw_v.gpu, dout.gpu, x.gpu, w_k.gpu, w_v.gpu, probs_gpu, gop.gpu, rop.gpu);
    ops::l3_lookup_backward(dx.cpu, dw_k.cpu, dw_v.cpu, dout.cpu, x.cpu, w_k.cpu, w_v.cpu, probs.cpu, gop.cpu, rop.cpu);
    CHECK(gpu_error(dx.gpu, dx.cpu) <= output_tolerance(dtype));
    // Token 0's table rows each sum N/2 positions: bf16 rounds the sum once, as the other rows.
    CHECK(gpu_error(dw_k.gpu, dw_k.cpu) <= output_tolerance(dtype));
    CHECK(gpu_error(dw_v.gpu, dw_v.cpu) <= output_tolerance(dtype));
  }
}

#ifdef L3C_WITH_CUDA
TEST_CASE("cuda: MoE routing with an expert that every token picks and one that none picks", "[cuda][scale]") {
  require_gpu();
  const int64_t n = kEmulated ? 96 : 2048, E = 8, top_k = 2, d = kEmulated ? 16 : 256, F = kEmulated ? 24 : 512;
  const int64_t M = n * top_k;
  // Expert 0 leads every token's logits; expert E-1 trails them all.
  TestTensor logits(DType::F32, {n, E});
  random_fill(logits, 700, 0.5);
  for (int64_t i = 0; i < n; ++i) {
    logits.set(i * E + 0, 4.0);
    logits.set(i * E + E - 1, -4.0);
  }
  const RouterReference ref = router_reference(logits.values(), n, E, top_k, /*normalize=*/true);
  DeviceTensor z(logits), probs(DType::F32, {n, E}), lse(DType::F32, {n}), experts(DType::I32, {n, top_k}),
      weights(DType::F32, {n, top_k});
  ops::cuda::moe_router_forward(probs, lse, experts, weights, z, true);
  std::vector<double> expected_experts(ref.experts.begin(), ref.experts.end());
  REQUIRE(experts.values() == expected_experts);
  CHECK(norm_relative_error(weights.values(), ref.weights) <= kF32);

  DeviceTensor order(DType::I32, {M}), offsets(DType::I32, {E + 1});
  ops::group_by_key(order, offsets, experts.tensor().view({M}));
  const std::vector<double> offs = offsets.values();
  CHECK(offs[1] - offs[0] == n);      // expert 0: every token
  CHECK(offs[E] - offs[E - 1] == 0);  // expert E-1: none
  DeviceTensor token_of_row(DType::I32, {M}), row_of_pair(DType::I32, {M});
  ops::cuda::moe_pair_indices(token_of_row, row_of_pair, order, top_k);

  // The grouped products over those groups against loops in double.
  TestTensor rows(DType::F32, {M, d}), w(DType::F32, {E, F, d}), dout(DType::F32, {M, F});
  random_fill(rows, 701);
  random_fill(w, 702, 0.1);
  random_fill(dout, 703);
  DeviceTensor rows_gpu(rows);
  const std::vector<double> dw_all = check_grouped_matmul(rows, rows_gpu, w, dout, offsets);
  CHECK(std::vector<double>(dw_all.end() - F * d, dw_all.end()) == std::vector<double>(F * d, 0.0));
}
#endif
