// The tensor-core L3 lookup kernels (src/kernels/cuda/l3_grouped.cu: tiles of one token's positions against its
// table rows, WMMA bf16 tiles with fp32 accumulation) against the CPU op on the same bf16-rounded inputs, forward
// (out, probs) and backward (dx, dw_k, dw_v, with f32 and with bf16 table gradients): a token filling half the
// batch (several tiles, the last partial), tokens with one table row, a token met once, tokens absent from the batch
// (their gradient rows untouched), more than 64 rows per token (several key chunks), widths that are not multiples
// of 64 or 16, tied tables, k = 512 ([scale]); which kernel the op chooses; a bf16 training step through it against
// the CPU; NaN for an allocation wider than probs; the same bits twice. The emulated/ twins run the kernels on the host emulation of CUDA with its WMMA fragments
// (src/kernels/cuda/emulation_wmma.h); shapes are small for that reason.
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

using ops::cuda::L3Kernel;

#ifdef L3C_CUDA_EMULATION
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif

// Tolerances, relative to the reference's norm. The CPU computes in f32 from the same bf16 inputs. The scores are
// exact bf16 products summed in fp32, so probs differ by the order of additions only. The kernels round P (forward,
// dV) and dS (dx, dK) to bf16 before their products, at most 2^-9 relative per element, and round out and dx to bf16
// once. Measured on these shapes: out, dx, dw_k, dw_v 1e-3 to 3e-3; a wrong tile, chunk or token is off by far more.
constexpr double kOutputTolerance = 5e-3;
constexpr double kGradientTolerance = 1e-2;  // dS = P (dP - D) subtracts nearly equal values before its rounding
constexpr double kProbsTolerance = 1e-5;

// A grouped batch: token u has positions[u] grouped rows (0: absent) and rows[u] table rows.
struct Grouping {
  std::vector<int32_t> positions, rows;
  int64_t k;  // the probs width
  int64_t n() const {
    int64_t total = 0;
    for (int32_t p : positions) total += p;
    return total;
  }
  int64_t v() const {
    int64_t total = 0;
    for (int32_t r : rows) total += r;
    return total;
  }
  TestTensor offsets(const std::vector<int32_t>& counts) const {
    TestTensor t(DType::I32, {static_cast<int64_t>(counts.size()) + 1});
    int32_t* o = t.ptr<int32_t>();
    o[0] = 0;
    for (size_t u = 0; u < counts.size(); ++u) o[u + 1] = o[u] + counts[u];
    return t;
  }
};

struct Widths {
  int64_t d, d_emb;
  bool tied;
  DType grad_dtype;  // f32 (mixed precision, as bf16 training) or bf16
};

// The table rows of tokens absent from the batch, which the backward must leave as they were.
std::vector<int64_t> absent_rows(const Grouping& g) {
  std::vector<int64_t> result;
  int64_t row = 0;
  for (size_t u = 0; u < g.rows.size(); ++u) {
    for (int32_t j = 0; j < g.rows[u]; ++j, ++row)
      if (g.positions[u] == 0) result.push_back(row);
  }
  return result;
}
bool rows_unchanged(const std::vector<double>& after, const std::vector<double>& before, int64_t width,
                    const std::vector<int64_t>& rows) {
  for (int64_t r : rows)
    for (int64_t c = 0; c < width; ++c)
      if (after[r * width + c] != before[r * width + c]) return false;
  return true;
}

void check_tensor_core_l3(const Grouping& g, Widths w, uint64_t seed) {
  const int64_t N = g.n(), v = g.v(), d = w.d, d_emb = w.tied ? w.d : w.d_emb;
  INFO("N " << N << " v " << v << " k " << g.k << " d " << d << " d_emb " << d_emb << " tied " << w.tied << " grads "
            << dtype_name(w.grad_dtype));
  const DType bf16 = DType::BF16;
  Pair go = pair_of(g.offsets(g.positions)), ro = pair_of(g.offsets(g.rows));
  // Keys at 0.3 give scores of order 1-2: a softmax far from uniform.
  Pair x = random_pair(bf16, {N, d}, seed), w_k = random_pair(bf16, {v, d}, seed + 1, 0.3);
  Pair w_v_own = random_pair(bf16, {v, d_emb}, seed + 2);
  Pair& w_v = w.tied ? w_k : w_v_own;

  Pair out = zero_pair(bf16, {N, d_emb}), probs = zero_pair(DType::F32, {N, g.k});
  ops::cuda::l3_lookup_forward(out.gpu, probs.gpu, x.gpu, w_k.gpu, w_v.gpu, go.gpu, ro.gpu, L3Kernel::TensorCores);
  ops::l3_lookup_forward(out.cpu, probs.cpu, x.cpu, w_k.cpu, w_v.cpu, go.cpu, ro.cpu);
  INFO("out " << gpu_error(out.gpu, out.cpu) << " probs " << gpu_error(probs.gpu, probs.cpu));
  CHECK(gpu_error(out.gpu, out.cpu) <= kOutputTolerance);
  CHECK(gpu_error(probs.gpu, probs.cpu) <= kProbsTolerance);

  // Backward from the CPU's probabilities on both sides. Gradients start from small values (they accumulate);
  // dx from garbage (overwritten).
  DeviceTensor probs_ref(probs.cpu);
  Pair dout = random_pair(bf16, {N, d_emb}, seed + 3), dx = random_pair(bf16, {N, d}, seed + 4);
  Pair dw_k = random_pair(w.grad_dtype, {v, d}, seed + 5, 0.01);
  Pair dw_v_own = random_pair(w.grad_dtype, {v, d_emb}, seed + 6, 0.01);
  Pair& dw_v = w.tied ? dw_k : dw_v_own;
  const std::vector<double> dw_k_before = dw_k.gpu.values(), dw_v_before = dw_v.gpu.values();
  ops::cuda::l3_lookup_backward(dx.gpu, dw_k.gpu, dw_v.gpu, dout.gpu, x.gpu, w_k.gpu, w_v.gpu, probs_ref, go.gpu,
                                ro.gpu, L3Kernel::TensorCores);
  ops::l3_lookup_backward(dx.cpu, dw_k.cpu, dw_v.cpu, dout.cpu, x.cpu, w_k.cpu, w_v.cpu, probs.cpu, go.cpu, ro.cpu);
  INFO("dx " << gpu_error(dx.gpu, dx.cpu) << " dw_k " << gpu_error(dw_k.gpu, dw_k.cpu) << " dw_v "
             << gpu_error(dw_v.gpu, dw_v.cpu));
  CHECK(gpu_error(dx.gpu, dx.cpu) <= kGradientTolerance);
  CHECK(gpu_error(dw_k.gpu, dw_k.cpu) <= kGradientTolerance);
  CHECK(gpu_error(dw_v.gpu, dw_v.cpu) <= kGradientTolerance);
  const std::vector<int64_t> absent = absent_rows(g);
  CHECK(rows_unchanged(dw_k.gpu.values(), dw_k_before, d, absent));
  CHECK(rows_unchanged(dw_v.gpu.values(), dw_v_before, d_emb, absent));
}

// Token 0 fills half of the batch (75 positions: tiles of 64 and 11) with 70 table rows (two key chunks, the second
// of 6); token 1 has one table row and 9 positions; token 2 is met once with 70 rows; token 3 (70 rows) and token 8
// (one row) are absent; token 4 has one row and one position; the rest are in between.
Grouping uneven_grouping() { return {{75, 9, 1, 0, 1, 20, 33, 11, 0}, {70, 1, 70, 70, 1, 5, 64, 17, 1}, 70}; }

// The gradients of an L3 layer after one decoder layer (d 32, d_emb 16: the tensor-core kernels in bf16) through
// one training step (step_probe.h), on a fixed sequence of 80 tokens in which token 5 takes 70 positions
// (two tiles: 64 and 6), with the L3 layer alone trainable. Every token owns 70 table rows (two key chunks). w_k's
// gradient comes through dK, w_v's through dV, norm_in's through dx.
StepProbe train_l3_model(const std::string& device, const std::string& precision) {
  const int64_t B = 1, T = 80, V = 64;
  Config c = one_layer_model(V, 32, 2, 2, 64);
  c.model.l3.after_layers = {0};
  c.model.l3.v = V * 70;
  c.model.l3.k = 80;
  c.model.l3.d_emb = 16;
  c.model.l3.d_up = 32;
  c.model.l3.init_std = 0.2;  // scores of order 1: the softmax is far from uniform
  c.model.l3.allocation.method = AllocationMethod::Uniform;
  set_step_probe(c, B, T, device, precision, {"model.l3.0."});
  ProbeBatch batch(B, T, V, 910);
  for (int64_t i = 0; i < B * T; ++i)
    if (i % 8 != 0) batch.tokens.ptr<int32_t>()[i] = 5;
  return run_step_probe(c, batch);
}

}  // namespace

TEST_CASE("cuda: tensor-core L3 matches the CPU: half the batch one token, one-row tokens, a token met once",
          "[cuda]") {
  require_gpu();
  const Grouping g = uneven_grouping();
  check_tensor_core_l3(g, {32, 48, false, DType::F32}, 100);   // d_emb 48: a partial column chunk
  check_tensor_core_l3(g, {64, 80, false, DType::BF16}, 110);  // bf16 gradients; two column chunks for d_emb
}

TEST_CASE("cuda: tensor-core L3 with tied tables and with widths that are not multiples of 16", "[cuda]") {
  require_gpu();
  const Grouping g{{40, 3, 0, 1, 17}, {9, 1, 4, 20, 2}, 20};
  check_tensor_core_l3(g, {32, 32, true, DType::F32}, 200);   // dV then dK into one gradient
  check_tensor_core_l3(g, {20, 12, false, DType::F32}, 210);  // rows of 40 and 24 bytes: unaligned tile loads
}

TEST_CASE("cuda: tensor-core L3 with k = 512 and one token filling half the batch matches the CPU", "[cuda][scale]") {
  require_gpu();
  // On a GPU: 2048 positions, d = 768; token 0 takes half of them with k rows, the rest spread over 40 tokens
  // with 1 to k rows. The emulation keeps k = 512 (8 key chunks) on a few positions.
  const int64_t k = 512, N = kEmulated ? 24 : 2048, d = kEmulated ? 32 : 768, V = kEmulated ? 4 : 40;
  Grouping g{{}, {}, k};
  SplitMix64 rng(300);
  for (int64_t u = 0; u < V; ++u) {
    g.positions.push_back(u == 0 ? static_cast<int32_t>(N / 2) : 0);
    g.rows.push_back(u % 3 == 0 ? static_cast<int32_t>(k) : 1 + static_cast<int32_t>(rng.next() % k));
  }
  for (int64_t i = 0; i < N / 2; ++i) ++g.positions[1 + rng.next() % (V - 1)];
  check_tensor_core_l3(g, {d, d, false, DType::F32}, 310);
}

TEST_CASE("cuda: L3 uses tensor cores for bf16 with widths multiples of 16, else the CUDA-core kernel", "[cuda]") {
  require_gpu();
  CHECK(ops::cuda::tensor_core_l3_supports(DType::BF16, 64, 32));
  CHECK_FALSE(ops::cuda::tensor_core_l3_supports(DType::BF16, 20, 32));
  CHECK_FALSE(ops::cuda::tensor_core_l3_supports(DType::BF16, 64, 12));
  CHECK_FALSE(ops::cuda::tensor_core_l3_supports(DType::F32, 64, 32));
  // Every GPU the build targets (sm_80, sm_90) and the emulation have bf16 tensor cores.
  CHECK(ops::cuda::l3_kernel_for(DType::BF16, 64, 32) == L3Kernel::TensorCores);
  CHECK(ops::cuda::l3_kernel_for(DType::BF16, 20, 32) == L3Kernel::CudaCores);
  CHECK(ops::cuda::l3_kernel_for(DType::F32, 64, 32) == L3Kernel::CudaCores);

  // The op (ops.h) gives the named kernel's bits: tensor cores at d = 32, the CUDA-core kernel at d = 20.
  const Grouping g{{30, 2, 0, 5}, {3, 1, 2, 7}, 8};
  for (int64_t d : {32, 20}) {
    INFO("d " << d);
    const int64_t N = g.n(), v = g.v();
    Pair go = pair_of(g.offsets(g.positions)), ro = pair_of(g.offsets(g.rows));
    Pair x = random_pair(DType::BF16, {N, d}, 400), w_k = random_pair(DType::BF16, {v, d}, 401);
    Pair w_v = random_pair(DType::BF16, {v, 16}, 402);
    DeviceTensor out_op(DType::BF16, {N, 16}), probs_op(DType::F32, {N, g.k});
    DeviceTensor out_named(DType::BF16, {N, 16}), probs_named(DType::F32, {N, g.k});
    ops::l3_lookup_forward(out_op, probs_op, x.gpu, w_k.gpu, w_v.gpu, go.gpu, ro.gpu);
    const L3Kernel expected = d == 32 ? L3Kernel::TensorCores : L3Kernel::CudaCores;
    ops::cuda::l3_lookup_forward(out_named, probs_named, x.gpu, w_k.gpu, w_v.gpu, go.gpu, ro.gpu, expected);
    CHECK(same_bits(out_op.host(), out_named.host()));
    CHECK(same_bits(probs_op.host(), probs_named.host()));
  }
}

TEST_CASE("cuda: bf16 training through the tensor-core L3 kernels tracks the CPU", "[cuda]") {
  require_gpu();
  REQUIRE(ops::cuda::l3_kernel_for(DType::BF16, 32, 16) == L3Kernel::TensorCores);
  const StepProbe cpu = train_l3_model("cpu", "fp32");
  const StepProbe gpu = train_l3_model("cuda", "bf16");
  // bf16 parameters, activations and products against fp32 throughout. Measured: loss within 0.01%; the gradients
  // of w_k, w_v and norm_in 0.8%.
  check_tracks_cpu(gpu, cpu, {"model.l3.0.w_k", "model.l3.0.w_v", "model.l3.0.norm_in.weight"}, 0.03);
}

TEST_CASE("cuda: tensor-core L3 forward and backward are the same bits twice", "[cuda]") {
  require_gpu();
  const Grouping g{{70, 1, 6}, {9, 1, 66}, 66};
  const int64_t N = g.n(), v = g.v(), d = 32;
  Pair go = pair_of(g.offsets(g.positions)), ro = pair_of(g.offsets(g.rows));
  Pair x = random_pair(DType::BF16, {N, d}, 500), w_k = random_pair(DType::BF16, {v, d}, 501, 0.3);
  Pair w_v = random_pair(DType::BF16, {v, d}, 502), dout = random_pair(DType::BF16, {N, d}, 503);
  std::vector<TestTensor> results;
  for (int run = 0; run < 2; ++run) {
    DeviceTensor out(DType::BF16, {N, d}), probs(DType::F32, {N, g.k}), dx(DType::BF16, {N, d});
    DeviceTensor dw_k(TestTensor(DType::F32, {v, d})), dw_v(TestTensor(DType::F32, {v, d}));
    ops::cuda::l3_lookup_forward(out, probs, x.gpu, w_k.gpu, w_v.gpu, go.gpu, ro.gpu, L3Kernel::TensorCores);
    ops::cuda::l3_lookup_backward(dx, dw_k, dw_v, dout.gpu, x.gpu, w_k.gpu, w_v.gpu, probs, go.gpu, ro.gpu,
                                  L3Kernel::TensorCores);
    for (const DeviceTensor* t : {&out, &probs, &dx, &dw_k, &dw_v}) results.push_back(t->host());
  }
  for (size_t i = 0; i < results.size() / 2; ++i) CHECK(same_bits(results[i], results[i + results.size() / 2]));
}

TEST_CASE("cuda: tensor-core L3 writes NaN for a token with more table rows than probs holds", "[cuda]") {
  require_gpu();
  // Token 1 has 9 rows and probs only 8 columns (the CPU op refuses such an allocation; on the GPU the offsets stay
  // on the device, so the kernel marks the rows instead of reading past them).
  const Grouping g{{3, 2}, {2, 9}, 8};
  const int64_t N = g.n(), v = g.v(), d = 16;
  Pair go = pair_of(g.offsets(g.positions)), ro = pair_of(g.offsets(g.rows));
  Pair x = random_pair(DType::BF16, {N, d}, 600), w = random_pair(DType::BF16, {v, d}, 601);
  DeviceTensor out(DType::BF16, {N, d}), probs(DType::F32, {N, g.k});
  ops::cuda::l3_lookup_forward(out, probs, x.gpu, w.gpu, w.gpu, go.gpu, ro.gpu, L3Kernel::TensorCores);
  const std::vector<double> o = out.values(), p = probs.values();
  for (int64_t i = 0; i < N; ++i) {
    INFO("row " << i);
    CHECK(std::isnan(o[i * d]) == (i >= 3));
    CHECK(std::isnan(p[i * g.k]) == (i >= 3));
  }
}

TEST_CASE("cuda: the tensor-core L3 kernels refuse f32", "[cuda]") {
  require_gpu();
  const Grouping g{{2}, {2}, 2};
  Pair go = pair_of(g.offsets(g.positions)), ro = pair_of(g.offsets(g.rows));
  Pair x = random_pair(DType::F32, {2, 16}, 700), w = random_pair(DType::F32, {2, 16}, 701);
  DeviceTensor out(DType::F32, {2, 16}), probs(DType::F32, {2, 2});
  CHECK_THROWS_WITH(
      ops::cuda::l3_lookup_forward(out, probs, x.gpu, w.gpu, w.gpu, go.gpu, ro.gpu, L3Kernel::TensorCores),
      Catch::Matchers::Contains("take bf16, got f32"));
}
#endif
