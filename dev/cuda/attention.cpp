// The attention kernel ladder, in the manner of llm.c's dev/cuda: the CUDA implementations of ops.h's causal
// grouped-query attention side by side on one shape, each checked against the CPU op and timed, forward and
// backward. The versions are the library's own kernels, chosen by name (ops::cuda::AttentionKernel), so the ladder
// measures exactly what training runs:
//   1. cuda-cores f32     attention.cu: 32-row tiles, every product on CUDA cores, f32 storage
//   2. cuda-cores bf16    the same kernels on bf16 storage (what bf16 training used before tensor cores)
//   3. tensor-cores bf16  attention_flash.cu: 64-row tiles, WMMA bf16 products with fp32 accumulation
//                         (head_dim 64 and 128 only; what bf16 training uses at those sizes)
// All versions read the same values (random normal inputs rounded to bf16 once). The CPU reference runs on the
// first --check-sequences sequences (the CPU op on a full batch at GPU scale would take minutes); each version's
// backward starts from its own forward's out and lse, as in training.
//
// Usage (docs/benchmarks.md): build/dev_attention [--batch B] [--seq T] [--heads H] [--kv-heads Hkv]
//   [--head-dim hd] [--warmup N] [--iters N] [--check-sequences N]
// Prints one line per version: milliseconds per call and TFLOP/s (causal FLOPs: 4 B H hd T(T+1)/2 forward, 2.5x
// that backward, the usual convention; the backward kernels recompute more), and the relative errors (norm of the
// difference over the norm of the CPU's) of out, dq, dk, dv. Exit status 1 when an error exceeds its tolerance.
// The emulated build (dev_attention_emulated) runs the same code on the host emulation of CUDA; CTest runs it on a
// small shape (emulated/dev_attention).
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "ladder.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"

using namespace l3c;
using namespace l3c::dev;
using ops::cuda::AttentionKernel;

namespace {

struct Options {
  int64_t batch = 8, seq = 1024, heads = 12, kv_heads = 12, head_dim = 64;  // configs/gpu/dense_124m.json
  int warmup = 3, iters = 20;
  int64_t check_sequences = 1;
};

constexpr const char* kUsage =
    "[--batch B] [--seq T] [--heads H] [--kv-heads Hkv] [--head-dim hd] [--warmup N] [--iters N] "
    "[--check-sequences N]";

Options parse(int argc, char** argv) {
  Options o;
  parse_integer_flags(argc, argv, "dev_attention", kUsage, [&o](const std::string& flag, int64_t value) {
    if (flag == "--batch") o.batch = value;
    else if (flag == "--seq") o.seq = value;
    else if (flag == "--heads") o.heads = value;
    else if (flag == "--kv-heads") o.kv_heads = value;
    else if (flag == "--head-dim") o.head_dim = value;
    else if (flag == "--warmup") o.warmup = static_cast<int>(value);
    else if (flag == "--iters") o.iters = static_cast<int>(value);
    else if (flag == "--check-sequences") o.check_sequences = value;
    else return false;
    return true;
  });
  auto fail = [](const char* problem) { usage("dev_attention", kUsage, problem); };
  if (o.batch < 1 || o.seq < 1 || o.heads < 1 || o.kv_heads < 1 || o.head_dim < 1 || o.heads % o.kv_heads != 0)
    fail("batch, seq, heads, kv-heads, head-dim must be >= 1 and heads a multiple of kv-heads");
  if (o.head_dim > 256) fail("head-dim above 256: no CUDA kernel takes it");
  if (o.iters < 1) fail("iters must be >= 1");
  if (o.check_sequences > o.batch) o.check_sequences = o.batch;
  return o;
}

struct Version {
  const char* name;
  DType dtype;
  AttentionKernel kernel;
};

// Inputs in f32 on the device, already rounded to bf16 (so every version reads the same values), and their bf16
// copies.
struct Inputs {
  DeviceTensor q32, k32, v32, dout32, q16, k16, v16, dout16;
  Inputs(const Options& o)
      : q32(DType::F32, {o.batch, o.seq, o.heads, o.head_dim}),
        k32(DType::F32, {o.batch, o.seq, o.kv_heads, o.head_dim}),
        v32(DType::F32, {o.batch, o.seq, o.kv_heads, o.head_dim}),
        dout32(DType::F32, {o.batch, o.seq, o.heads, o.head_dim}),
        q16(DType::BF16, {o.batch, o.seq, o.heads, o.head_dim}),
        k16(DType::BF16, {o.batch, o.seq, o.kv_heads, o.head_dim}),
        v16(DType::BF16, {o.batch, o.seq, o.kv_heads, o.head_dim}),
        dout16(DType::BF16, {o.batch, o.seq, o.heads, o.head_dim}) {
    uint64_t seed = 1;
    const std::pair<DeviceTensor*, DeviceTensor*> pairs[] = {{&q32, &q16}, {&k32, &k16}, {&v32, &v16}, {&dout32, &dout16}};
    for (auto [f32, bf16] : pairs) fill_rounded_pair(*f32, *bf16, seed++);
  }
};

// The CPU op on the first sequences: out, dq, dk, dv (host f32).
struct Reference {
  std::vector<float> out, dq, dk, dv;
};
Reference cpu_reference(const Options& o, const Inputs& in) {
  const int64_t S = o.check_sequences, T = o.seq, H = o.heads, Hkv = o.kv_heads, hd = o.head_dim;
  std::vector<float> q = first_rows_on_host(in.q32, S), k = first_rows_on_host(in.k32, S);
  std::vector<float> v = first_rows_on_host(in.v32, S), dout = first_rows_on_host(in.dout32, S);
  Reference r;
  r.out.resize(q.size());
  r.dq.resize(q.size());
  r.dk.resize(k.size());
  r.dv.resize(k.size());
  std::vector<float> lse(static_cast<size_t>(S * H * T));
  auto t = [](std::vector<float>& x, std::initializer_list<int64_t> shape) { return Tensor(x.data(), DType::F32, shape); };
  ops::cpu::attention_forward(t(r.out, {S, T, H, hd}), t(lse, {S, H, T}), t(q, {S, T, H, hd}), t(k, {S, T, Hkv, hd}),
                              t(v, {S, T, Hkv, hd}));
  ops::cpu::attention_backward(t(r.dq, {S, T, H, hd}), t(r.dk, {S, T, Hkv, hd}), t(r.dv, {S, T, Hkv, hd}),
                               t(dout, {S, T, H, hd}), t(q, {S, T, H, hd}), t(k, {S, T, Hkv, hd}),
                               t(v, {S, T, Hkv, hd}), t(r.out, {S, T, H, hd}), t(lse, {S, H, T}));
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  if (!print_device("dev_attention")) return 4;
  std::printf("shape: B %lld, T %lld, H %lld, Hkv %lld, head_dim %lld; %d warmup + %d timed calls; CPU check on %lld "
              "sequence(s)\n",
              static_cast<long long>(o.batch), static_cast<long long>(o.seq), static_cast<long long>(o.heads),
              static_cast<long long>(o.kv_heads), static_cast<long long>(o.head_dim), o.warmup, o.iters,
              static_cast<long long>(o.check_sequences));
  const Inputs in(o);
  const Reference reference = cpu_reference(o, in);
  const double pairs = static_cast<double>(o.seq) * (o.seq + 1) / 2.0;
  const double forward_flops = 4.0 * o.batch * o.heads * o.head_dim * pairs, backward_flops = 2.5 * forward_flops;

  std::vector<Version> versions = {{"cuda-cores f32", DType::F32, AttentionKernel::CudaCores},
                                   {"cuda-cores bf16", DType::BF16, AttentionKernel::CudaCores}};
  if (ops::cuda::tensor_core_attention_supports(DType::BF16, o.head_dim))
    versions.push_back({"tensor-cores bf16", DType::BF16, AttentionKernel::TensorCores});
  else
    std::printf("tensor-cores bf16: not available for head_dim %lld (64 or 128 only)\n",
                static_cast<long long>(o.head_dim));
  if (ops::cuda::attention_kernel_for(DType::BF16, o.head_dim) == AttentionKernel::CudaCores &&
      ops::cuda::tensor_core_attention_supports(DType::BF16, o.head_dim))
    std::printf("note: this GPU has no bf16 tensor cores (sm_80+); training would use the CUDA-core kernels\n");

  std::printf("%-18s %10s %9s %10s %9s %9s %9s %9s %9s\n", "version", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s",
              "err out", "err dq", "err dk", "err dv");
  bool all_within = true;
  for (const Version& version : versions) {
    const bool f32 = version.dtype == DType::F32;
    const Tensor q = f32 ? in.q32 : in.q16, k = f32 ? in.k32 : in.k16, v = f32 ? in.v32 : in.v16;
    const Tensor dout = f32 ? in.dout32 : in.dout16;
    DeviceTensor out(version.dtype, {o.batch, o.seq, o.heads, o.head_dim}), lse(DType::F32, {o.batch, o.heads, o.seq});
    DeviceTensor dq(version.dtype, {o.batch, o.seq, o.heads, o.head_dim});
    DeviceTensor dk(version.dtype, {o.batch, o.seq, o.kv_heads, o.head_dim});
    DeviceTensor dv(version.dtype, {o.batch, o.seq, o.kv_heads, o.head_dim});
    const double forward_ms = milliseconds_per_call(
        [&] { ops::cuda::attention_forward(out, lse, q, k, v, version.kernel); }, o.warmup, o.iters);
    const double backward_ms = milliseconds_per_call(
        [&] { ops::cuda::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, version.kernel); }, o.warmup,
        o.iters);
    const double errors[4] = {relative_error(first_rows_on_host(out, o.check_sequences), reference.out),
                              relative_error(first_rows_on_host(dq, o.check_sequences), reference.dq),
                              relative_error(first_rows_on_host(dk, o.check_sequences), reference.dk),
                              relative_error(first_rows_on_host(dv, o.check_sequences), reference.dv)};
    // f32: summation order only. bf16: outputs rounded to bf16 (and, on tensor cores, P and dS before their second
    // product), as tests/test_cuda_attention.cpp states; backward from each version's own forward.
    const double tolerance[4] = {f32 ? 1e-5 : 1e-2, f32 ? 1e-4 : 2e-2, f32 ? 1e-4 : 2e-2, f32 ? 1e-4 : 2e-2};
    bool within = true;
    for (int i = 0; i < 4; ++i) within = within && errors[i] <= tolerance[i];
    all_within = all_within && within;
    std::printf("%-18s %10.3f %9.2f %10.3f %9.2f %9.2e %9.2e %9.2e %9.2e%s\n", version.name, forward_ms,
                forward_flops / (forward_ms * 1e9), backward_ms, backward_flops / (backward_ms * 1e9), errors[0],
                errors[1], errors[2], errors[3], within ? "" : "  <- above tolerance");
  }
  return all_within ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "dev_attention: %s\n", e.what());
  return 1;
}
