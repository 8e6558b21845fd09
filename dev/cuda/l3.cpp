// The L3 lookup kernel ladder, in the manner of llm.c's dev/cuda: the CUDA implementations of ops.h's
// l3_lookup_forward / l3_lookup_backward side by side on one grouped batch, each checked against the CPU op and
// timed. The versions are the library's own kernels, chosen by name (ops::cuda::L3Kernel), so the ladder measures
// exactly what training runs:
//   1. cuda-cores f32     l3.cu: one block per position (its token's K_u, V_u read once per position), one block per
//                         table row for the table gradients, f32 storage
//   2. cuda-cores bf16    the same kernels on bf16 storage (what bf16 training used before tensor cores)
//   3. tensor-cores bf16  l3_grouped.cu: tiles of up to 64 positions of one token against its rows (K_u, V_u read
//                         once per tile), WMMA bf16 products with fp32 accumulation (what bf16 training uses when d
//                         and d_emb are multiples of 16)
// The batch: token ids drawn from a Zipf law (s = 1) over the vocabulary, as in text, so that a few tokens fill a
// large part of the batch and most appear once or not at all; token u owns clamp(round(p_u v), 1, k) table rows
// (frequent tokens get k rows, as the LZW allocation gives them). All versions read the same values (random normal
// inputs rounded to bf16 once); the table gradients are f32 (bf16 training keeps them so). Each version's backward
// starts from its own forward's probabilities, as in training.
//
// Usage (docs/benchmarks.md): build/dev_l3 [--positions N] [--vocab V] [--v rows] [--k K] [--d d] [--d-emb d_emb]
//   [--warmup N] [--iters N]
// Prints one line per version: milliseconds per call and TFLOP/s (2 sum_u m_u n_u (d + d_emb) forward, twice that
// backward), and the relative errors (norm of the difference over the norm of the CPU's) of out, dx, dw_k, dw_v.
// Exit status 1 when an error exceeds its tolerance. The emulated build (dev_l3_emulated) runs the same code on the
// host emulation of CUDA; CTest runs it on a small batch (emulated/dev_l3).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "ladder.h"

using namespace l3c;
using namespace l3c::dev;
using ops::cuda::L3Kernel;

namespace {

struct Options {  // configs/gpu/l3_124m.json: 8 x 1024 positions, d 768, d_emb 384, v = 262144, k = 64
  int64_t positions = 8192, vocab = 50304, v = 262144, k = 64, d = 768, d_emb = 384;
  int64_t warmup = 3, iters = 20;
};

Options parse(int argc, char** argv) {
  Options o;
  const Flags flags{"dev_l3",
                    {{"--positions", &o.positions}, {"--vocab", &o.vocab}, {"--v", &o.v}, {"--k", &o.k}, {"--d", &o.d},
                     {"--d-emb", &o.d_emb}, {"--warmup", &o.warmup}, {"--iters", &o.iters}}};
  flags.parse(argc, argv);
  if (o.positions < 1 || o.vocab < 1 || o.v < 1 || o.k < 1 || o.d < 1 || o.d_emb < 1)
    flags.fail("positions, vocab, v, k, d and d-emb must be >= 1");
  if (o.iters < 1) flags.fail("iters must be >= 1");
  return o;
}

// The grouped batch: group_offsets (V + 1) from the tokens' counts, row_offsets (V + 1) from their rows.
struct Batch {
  std::vector<int32_t> group_offsets, row_offsets;
  int64_t n = 0, v = 0;
  double pairs = 0.0;      // sum_u m_u n_u: position-row pairs
  int64_t tokens_met = 0;  // tokens with at least one position
  int64_t largest = 0;     // the most positions of one token
};
Batch make_batch(const Options& o) {
  std::vector<double> cumulative(static_cast<size_t>(o.vocab));
  double total = 0.0;
  for (int64_t u = 0; u < o.vocab; ++u) cumulative[u] = (total += 1.0 / static_cast<double>(u + 1));
  std::vector<int64_t> count(static_cast<size_t>(o.vocab), 0);
  uint64_t state = 7;
  for (int64_t i = 0; i < o.positions; ++i) {
    const double draw = static_cast<double>(next_random(state) >> 11) / 9007199254740992.0 * total;
    ++count[std::upper_bound(cumulative.begin(), cumulative.end(), draw) - cumulative.begin()];
  }
  Batch b;
  b.group_offsets.assign(1, 0);
  b.row_offsets.assign(1, 0);
  for (int64_t u = 0; u < o.vocab; ++u) {
    const double share = 1.0 / static_cast<double>(u + 1) / total;
    const int64_t rows = std::clamp<int64_t>(std::llround(share * static_cast<double>(o.v)), 1, o.k);
    b.group_offsets.push_back(static_cast<int32_t>(b.group_offsets.back() + count[u]));
    b.row_offsets.push_back(static_cast<int32_t>(b.row_offsets.back() + rows));
    b.pairs += static_cast<double>(count[u]) * static_cast<double>(rows);
    b.tokens_met += count[u] > 0;
    b.largest = std::max(b.largest, count[u]);
  }
  b.n = o.positions;
  b.v = b.row_offsets.back();
  return b;
}

struct Version {
  const char* name;
  DType dtype;
  L3Kernel kernel;
};

// Inputs in f32 on the device, rounded to bf16, and their bf16 copies; the offsets.
struct Inputs {
  DeviceTensor x32, w_k32, w_v32, dout32, x16, w_k16, w_v16, dout16, group_offsets, row_offsets;
  Inputs(const Options& o, const Batch& b)
      : x32(DType::F32, {b.n, o.d}), w_k32(DType::F32, {b.v, o.d}), w_v32(DType::F32, {b.v, o.d_emb}),
        dout32(DType::F32, {b.n, o.d_emb}), x16(DType::BF16, {b.n, o.d}), w_k16(DType::BF16, {b.v, o.d}),
        w_v16(DType::BF16, {b.v, o.d_emb}), dout16(DType::BF16, {b.n, o.d_emb}),
        group_offsets(DType::I32, {o.vocab + 1}), row_offsets(DType::I32, {o.vocab + 1}) {
    // Keys scaled so that the scores (x . K_j over d) are of order 1: a softmax far from uniform and from one-hot.
    fill_rounded(x32, x16, 1);
    fill_rounded(w_k32, w_k16, 2, 1.0 / std::sqrt(static_cast<double>(o.d)));
    fill_rounded(w_v32, w_v16, 3);
    fill_rounded(dout32, dout16, 4);
    ops::cuda::copy_between(group_offsets, Tensor(const_cast<int32_t*>(b.group_offsets.data()), DType::I32, {o.vocab + 1}));
    ops::cuda::copy_between(row_offsets, Tensor(const_cast<int32_t*>(b.row_offsets.data()), DType::I32, {o.vocab + 1}));
  }
};

// The CPU op: out, dx, dw_k, dw_v (host f32; the table gradients from zero).
struct Reference {
  std::vector<float> out, dx, dw_k, dw_v;
};
Reference cpu_reference(const Options& o, const Batch& b, const Inputs& in) {
  std::vector<float> x = host_values(in.x32), w_k = host_values(in.w_k32), w_v = host_values(in.w_v32);
  std::vector<float> dout = host_values(in.dout32);
  std::vector<float> probs(static_cast<size_t>(b.n * o.k));
  Reference r;
  r.out.resize(static_cast<size_t>(b.n * o.d_emb));
  r.dx.resize(x.size());
  r.dw_k.assign(w_k.size(), 0.0f);
  r.dw_v.assign(w_v.size(), 0.0f);
  auto t = [](std::vector<float>& values, std::initializer_list<int64_t> shape) {
    return Tensor(values.data(), DType::F32, shape);
  };
  std::vector<int32_t> go = b.group_offsets, ro = b.row_offsets;
  const Tensor go_t(go.data(), DType::I32, {o.vocab + 1}), ro_t(ro.data(), DType::I32, {o.vocab + 1});
  ops::cpu::l3_lookup_forward(t(r.out, {b.n, o.d_emb}), t(probs, {b.n, o.k}), t(x, {b.n, o.d}), t(w_k, {b.v, o.d}),
                              t(w_v, {b.v, o.d_emb}), go_t, ro_t);
  ops::cpu::l3_lookup_backward(t(r.dx, {b.n, o.d}), t(r.dw_k, {b.v, o.d}), t(r.dw_v, {b.v, o.d_emb}),
                               t(dout, {b.n, o.d_emb}), t(x, {b.n, o.d}), t(w_k, {b.v, o.d}), t(w_v, {b.v, o.d_emb}),
                               t(probs, {b.n, o.k}), go_t, ro_t);
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  require_device("dev_l3");
  const Batch b = make_batch(o);
  std::printf("batch: %lld positions of %lld tokens (Zipf), %lld met, the most frequent %lld times; table v = %lld "
              "rows (k = %lld), d %lld, d_emb %lld; %lld warmup + %lld timed calls\n",
              static_cast<long long>(b.n), static_cast<long long>(o.vocab), static_cast<long long>(b.tokens_met),
              static_cast<long long>(b.largest), static_cast<long long>(b.v), static_cast<long long>(o.k),
              static_cast<long long>(o.d), static_cast<long long>(o.d_emb), static_cast<long long>(o.warmup),
              static_cast<long long>(o.iters));
  const Inputs in(o, b);
  const Reference reference = cpu_reference(o, b, in);
  const double forward_flops = 2.0 * b.pairs * static_cast<double>(o.d + o.d_emb), backward_flops = 2 * forward_flops;

  std::vector<Version> versions = {{"cuda-cores f32", DType::F32, L3Kernel::CudaCores},
                                   {"cuda-cores bf16", DType::BF16, L3Kernel::CudaCores},
                                   {"tensor-cores bf16", DType::BF16, L3Kernel::TensorCores}};
  note_tensor_cores(ops::cuda::tensor_core_l3_supports(DType::BF16, o.d, o.d_emb),
                    ops::cuda::l3_kernel_for(DType::BF16, o.d, o.d_emb) == L3Kernel::TensorCores);

  print_header({"err out", "err dx", "err dw_k", "err dw_v"});
  bool all_within = true;
  for (const Version& version : versions) {
    const bool f32 = version.dtype == DType::F32;
    const Tensor x = f32 ? in.x32 : in.x16, w_k = f32 ? in.w_k32 : in.w_k16, w_v = f32 ? in.w_v32 : in.w_v16;
    const Tensor dout = f32 ? in.dout32 : in.dout16;
    DeviceTensor out(version.dtype, {b.n, o.d_emb}), probs(DType::F32, {b.n, o.k}), dx(version.dtype, {b.n, o.d});
    DeviceTensor dw_k(DType::F32, {b.v, o.d}), dw_v(DType::F32, {b.v, o.d_emb});
    auto forward = [&] {
      ops::cuda::l3_lookup_forward(out, probs, x, w_k, w_v, in.group_offsets, in.row_offsets, version.kernel);
    };
    auto backward = [&] {
      ops::cuda::l3_lookup_backward(dx, dw_k, dw_v, dout, x, w_k, w_v, probs, in.group_offsets, in.row_offsets,
                                    version.kernel);
    };
    // Checked once from zero gradients, then timed (the gradients keep accumulating; the timing does not care).
    ops::cuda::fill_zero(dw_k);
    ops::cuda::fill_zero(dw_v);
    forward();
    backward();
    const double errors[4] = {relative_error(host_values(out), reference.out),
                              relative_error(host_values(dx), reference.dx),
                              relative_error(host_values(dw_k), reference.dw_k),
                              relative_error(host_values(dw_v), reference.dw_v)};
    const double forward_ms = milliseconds_per_call(forward, o.warmup, o.iters);
    const double backward_ms = milliseconds_per_call(backward, o.warmup, o.iters);
    all_within = print_row(version.name, f32, forward_ms, forward_flops, backward_ms, backward_flops, errors) &&
                 all_within;
  }
  return all_within ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "dev_l3: %s\n", e.what());
  return 1;
}
