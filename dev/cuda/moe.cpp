// The MoE grouped-product kernel ladder, in the manner of llm.c's dev/cuda: the CUDA versions of ops.h's grouped
// matrix product (every expert's rows of x times that expert's nn.Linear weight) side by side on one routing,
// each checked against the CPU op and timed, forward (out = x w_e^T) and backward (dx = dout w_e, dw_e += dout^T x):
//   1. tiled f32              moe.cu: the library's own kernels, which find each expert's rows on the device
//                             (64 x 64 output tiles on CUDA cores; no host wait); what fp32 training runs
//   2. tiled bf16             the same kernels on bf16 rows and weights, f32 weight gradient
//   3. tensor-cores bf16      moe.cu's WMMA kernels: the same tiles and row-tile layout, bf16 16 x 16 x 16 fragments
//                             with fp32 accumulation, 4 warps of 32 x 32 outputs a block; what bf16 training runs
//                             on sm_80+ (ops::cuda::moe_kernel_for)
//   4. cuBLAS per expert f32  the version before them: the expert offsets read back to the host (one wait per
//                             call), then one cuBLAS product per non-empty expert (ops::matmul_* on row slices)
//   5. cuBLAS per expert bf16 the same with bf16 inputs on tensor cores, f32 weight gradient
// The tiled versions name their kernel (ops::cuda::MoeKernel), so the ladder measures the code that training runs.
// All versions read the same values (random normal inputs rounded to bf16 once) and the same routing: each token
// picks top_k distinct experts at random, so the groups have the uneven sizes of real routing. The CPU reference
// runs on the first --check-experts experts (their rows come first in grouped order; the CPU op on every expert at
// GPU scale would take long), and each version's backward starts from zero weight gradients.
//
// Usage (docs/benchmarks.md): build/dev_moe [--tokens N] [--experts E] [--top-k k] [--in I] [--out O]
//   [--warmup N] [--iters N] [--check-experts N]
// Prints one line per version: milliseconds per call and TFLOP/s (2 M I O forward, twice that backward, M = N k
// grouped rows), the host waits of one forward and one backward call together, and the relative errors (norm of
// the difference over the norm of the CPU's) of out, dx, dw. Exit status 1 when an error exceeds its tolerance.
// The emulated build (dev_moe_emulated) runs the same code on the host emulation of CUDA; CTest runs it on a small
// shape (emulated/dev_moe).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/device.h"
#include "ladder.h"

using namespace l3c;
using namespace l3c::dev;

namespace {

// configs/gpu/moe_124m.json: a micro-batch of 16 x 1024 tokens, 21 experts, top-2, the gate and up products
// (d_model 768 -> expert_hidden 1175).
struct Options {
  int64_t tokens = 16384, experts = 21, top_k = 2, in = 768, out = 1175;
  int64_t warmup = 3, iters = 20;
  int64_t check_experts = 2;
};

Options parse(int argc, char** argv) {
  Options o;
  const Flags flags{"dev_moe",
                    {{"--tokens", &o.tokens}, {"--experts", &o.experts}, {"--top-k", &o.top_k}, {"--in", &o.in},
                     {"--out", &o.out}, {"--warmup", &o.warmup}, {"--iters", &o.iters},
                     {"--check-experts", &o.check_experts}}};
  flags.parse(argc, argv);
  if (o.tokens < 1 || o.experts < 1 || o.top_k < 1 || o.in < 1 || o.out < 1)
    flags.fail("tokens, experts, top-k, in, out must be >= 1");
  if (o.top_k > o.experts) flags.fail("top-k above experts: a token picks distinct experts");
  if (o.iters < 1) flags.fail("iters must be >= 1");
  if (o.check_experts > o.experts) o.check_experts = o.experts;
  return o;
}

// The expert offsets (E + 1) of N tokens that each pick top_k distinct experts at random, grouped by expert.
std::vector<int32_t> random_routing(const Options& o) {
  uint64_t random = 12345;
  std::vector<int64_t> rows(static_cast<size_t>(o.experts), 0);
  std::vector<int64_t> picked;
  for (int64_t n = 0; n < o.tokens; ++n) {
    picked.clear();
    while (static_cast<int64_t>(picked.size()) < o.top_k) {
      const auto e = static_cast<int64_t>(next_random(random) % static_cast<uint64_t>(o.experts));
      if (std::find(picked.begin(), picked.end(), e) == picked.end()) picked.push_back(e);
    }
    for (const int64_t e : picked) ++rows[static_cast<size_t>(e)];
  }
  std::vector<int32_t> offsets(static_cast<size_t>(o.experts + 1), 0);
  for (int64_t e = 0; e < o.experts; ++e) offsets[e + 1] = offsets[e] + static_cast<int32_t>(rows[e]);
  return offsets;
}

// Host waits (cuda_host_synchronizations) during one call of fn.
template <typename Fn>
int64_t host_waits_of(Fn&& fn) {
  const int64_t before = cuda_host_synchronizations();
  fn();
  return cuda_host_synchronizations() - before;
}

// The previous version of the grouped products: the offsets read back, then one cuBLAS product per expert.
std::vector<int32_t> offsets_on_host(const Tensor& offsets) {
  std::vector<int32_t> host(static_cast<size_t>(offsets.numel()));
  ops::cuda::copy_between(Tensor(host.data(), DType::I32, {offsets.numel()}), offsets);
  return host;
}
Tensor expert_weight(const Tensor& w, int64_t e) { return w.rows(e, e + 1).view({w.dim(1), w.dim(2)}); }

void per_expert_forward(Tensor out, Tensor x, Tensor w, Tensor offsets) {
  const std::vector<int32_t> host = offsets_on_host(offsets);
  for (int64_t e = 0; e < w.dim(0); ++e)
    if (host[e + 1] > host[e])
      ops::cuda::matmul_forward(out.rows(host[e], host[e + 1]), x.rows(host[e], host[e + 1]), expert_weight(w, e),
                                false);
}

void per_expert_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, Tensor offsets) {
  const std::vector<int32_t> host = offsets_on_host(offsets);
  for (int64_t e = 0; e < w.dim(0); ++e)
    if (host[e + 1] > host[e])
      ops::cuda::matmul_backward(dx.rows(host[e], host[e + 1]), expert_weight(dw, e),
                                 dout.rows(host[e], host[e + 1]), x.rows(host[e], host[e + 1]), expert_weight(w, e),
                                 false);
}

struct Version {
  const char* name;
  DType dtype;
  bool tiled;
  ops::cuda::MoeKernel kernel;  // of a tiled version
};

// Inputs in f32 on the device, already rounded to bf16 (so every version reads the same values), their bf16
// copies, and the expert offsets.
struct Inputs {
  int64_t rows;
  std::vector<int32_t> host_offsets;
  DeviceTensor x32, w32, dout32, x16, w16, dout16, offsets;
  Inputs(const Options& o, std::vector<int32_t> routing)
      : rows(o.tokens * o.top_k),
        host_offsets(std::move(routing)),
        x32(DType::F32, {rows, o.in}),
        w32(DType::F32, {o.experts, o.out, o.in}),
        dout32(DType::F32, {rows, o.out}),
        x16(DType::BF16, {rows, o.in}),
        w16(DType::BF16, {o.experts, o.out, o.in}),
        dout16(DType::BF16, {rows, o.out}),
        offsets(DType::I32, {o.experts + 1}) {
    const double w_scale = 1.0 / std::sqrt(static_cast<double>(o.in));  // outputs of about unit size
    fill_rounded(x32, x16, 1);
    fill_rounded(w32, w16, 2, w_scale);
    fill_rounded(dout32, dout16, 3);
    ops::cuda::copy_between(offsets, Tensor(host_offsets.data(), DType::I32, {o.experts + 1}));
  }
};

// The CPU op on the first check_experts experts (the first rows of the grouped order): out, dx, dw (host f32).
struct Reference {
  int64_t rows = 0;  // the grouped rows of those experts
  std::vector<float> out, dx, dw;
};
Reference cpu_reference(const Options& o, const Inputs& in) {
  const int64_t C = o.check_experts;
  Reference r;
  r.rows = in.host_offsets[C];
  std::vector<float> x = first_rows_on_host(in.x32, r.rows), w = first_rows_on_host(in.w32, C);
  std::vector<float> dout = first_rows_on_host(in.dout32, r.rows);
  std::vector<int32_t> offsets(in.host_offsets.begin(), in.host_offsets.begin() + C + 1);
  r.out.resize(static_cast<size_t>(r.rows * o.out));
  r.dx.resize(x.size());
  r.dw.assign(w.size(), 0.0f);
  auto t = [](auto& v, DType dtype, std::initializer_list<int64_t> shape) { return Tensor(v.data(), dtype, shape); };
  const Tensor offsets_t = t(offsets, DType::I32, {C + 1});
  ops::cpu::grouped_matmul_forward(t(r.out, DType::F32, {r.rows, o.out}), t(x, DType::F32, {r.rows, o.in}),
                                   t(w, DType::F32, {C, o.out, o.in}), offsets_t);
  ops::cpu::grouped_matmul_backward(t(r.dx, DType::F32, {r.rows, o.in}), t(r.dw, DType::F32, {C, o.out, o.in}),
                                    t(dout, DType::F32, {r.rows, o.out}), t(x, DType::F32, {r.rows, o.in}),
                                    t(w, DType::F32, {C, o.out, o.in}), offsets_t, /*accumulate_dx=*/false);
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  require_device("dev_moe");
  const Inputs in(o, random_routing(o));
  int64_t largest = 0, smallest = in.rows, empty = 0;
  for (int64_t e = 0; e < o.experts; ++e) {
    const int64_t rows = in.host_offsets[e + 1] - in.host_offsets[e];
    largest = std::max(largest, rows);
    smallest = std::min(smallest, rows);
    empty += rows == 0;
  }
  std::printf("shape: %lld tokens, top-%lld of %lld experts (%lld grouped rows: %lld to %lld an expert, %lld empty), "
              "in %lld, out %lld; %lld warmup + %lld timed calls; CPU check on %lld expert(s)\n",
              static_cast<long long>(o.tokens), static_cast<long long>(o.top_k), static_cast<long long>(o.experts),
              static_cast<long long>(in.rows), static_cast<long long>(smallest), static_cast<long long>(largest),
              static_cast<long long>(empty), static_cast<long long>(o.in), static_cast<long long>(o.out),
              static_cast<long long>(o.warmup), static_cast<long long>(o.iters),
              static_cast<long long>(o.check_experts));
  const Reference reference = cpu_reference(o, in);
  const double forward_flops = 2.0 * static_cast<double>(in.rows) * o.in * o.out, backward_flops = 2.0 * forward_flops;

  using ops::cuda::MoeKernel;
  const Version versions[] = {{"tiled f32", DType::F32, true, MoeKernel::CudaCores},
                              {"tiled bf16", DType::BF16, true, MoeKernel::CudaCores},
                              {"tensor-cores bf16", DType::BF16, true, MoeKernel::TensorCores},
                              {"cuBLAS/expert f32", DType::F32, false, MoeKernel::CudaCores},
                              {"cuBLAS/expert bf16", DType::BF16, false, MoeKernel::CudaCores}};
  std::printf("%-19s %9s %9s %9s %9s %6s %9s %9s %9s\n", "version", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s",
              "waits", "err out", "err dx", "err dw");
  bool all_within = true;
  for (const Version& version : versions) {
    const bool f32 = version.dtype == DType::F32;
    const Tensor x = f32 ? in.x32 : in.x16, w = f32 ? in.w32 : in.w16, dout = f32 ? in.dout32 : in.dout16;
    DeviceTensor out(version.dtype, {in.rows, o.out}), dx(version.dtype, {in.rows, o.in});
    DeviceTensor dw(DType::F32, {o.experts, o.out, o.in});  // a parameter gradient: f32, also for bf16 inputs
    auto forward = [&] {
      if (version.tiled) ops::cuda::grouped_matmul_forward(out, x, w, in.offsets, version.kernel);
      else per_expert_forward(out, x, w, in.offsets);
    };
    auto backward = [&] {
      if (version.tiled) ops::cuda::grouped_matmul_backward(dx, dw, dout, x, w, in.offsets, false, version.kernel);
      else per_expert_backward(dx, dw, dout, x, w, in.offsets);
    };
    // One checked call each (dw accumulates: it starts from zero), then the timing loops.
    ops::cuda::fill_zero(dw);
    const int64_t waits = host_waits_of(forward) + host_waits_of(backward);
    const double errors[3] = {relative_error(first_rows_on_host(out, reference.rows), reference.out),
                              relative_error(first_rows_on_host(dx, reference.rows), reference.dx),
                              relative_error(first_rows_on_host(dw, o.check_experts), reference.dw)};
    const double forward_ms = milliseconds_per_call(forward, o.warmup, o.iters);
    const double backward_ms = milliseconds_per_call(backward, o.warmup, o.iters);
    // f32: summation order only. bf16 (CUDA or tensor cores): out and dx rounded to bf16 once; dw sums exact bf16
    // products in f32.
    const double tolerance[3] = {f32 ? 1e-5 : 1e-2, f32 ? 1e-5 : 1e-2, f32 ? 1e-5 : 1e-4};
    bool within = true;
    for (int i = 0; i < 3; ++i) within = within && errors[i] <= tolerance[i];
    all_within = all_within && within;
    std::printf("%-19s %9.3f %9.2f %9.3f %9.2f %6lld %9.2e %9.2e %9.2e%s\n", version.name, forward_ms,
                forward_flops / (forward_ms * 1e9), backward_ms, backward_flops / (backward_ms * 1e9),
                static_cast<long long>(waits), errors[0], errors[1], errors[2], within ? "" : "  <- above tolerance");
  }
  return all_within ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "dev_moe: %s\n", e.what());
  return 1;
}
