// The classifier kernel ladder, in the manner of llm.c's dev/cuda: the blockings of the fused classifier
// (classifier.cu: logits, cross-entropy, dlogits, dx and dW without an (N, V) matrix) side by side on one shape and
// several vocabularies, each checked against the CPU op and timed, forward and backward together as training calls
// them. The versions are the library's own kernel with its blocking named (ops::cuda::classifier_forward_backward's
// block_rows and vocab_chunk), so the ladder measures exactly what training runs:
//   whole V, R rows        blocks of R rows against the whole vocabulary: one chunk, so the backward reuses the
//                          forward's logits, but dW is rewritten N / R times per call (--row-blocks)
//   R = N, C classes       the whole micro-batch in one block against chunks of C classes, an online max and sum
//                          per row across the chunks: dW is written once per call, the logits computed twice
//                          (--chunks)
//   default                the plan training uses (0, 0: classifier.cu's plan_for within 256 MiB of logits)
// bf16 x and W with f32 dW (mixed-precision training), and the default plan once more in f32. All versions read the
// same values (random normal inputs rounded to bf16 once). The CPU reference runs on the first --check-rows rows:
// losses and dx come from the timed call's first rows, dW from a call of the version's blocking on those rows alone
// (dW sums over every row, and the CPU op on all N rows at V = 180K would take minutes).
//
// Usage (docs/benchmarks.md): build/dev_classifier [--rows N] [--dim d] [--vocab V] [--row-blocks R,R,..]
//   [--chunks C,C,..] [--warmup N] [--iters N] [--check-rows N]
// Without --vocab both GPT-2's vocabulary (50257) and a 180K one run. Prints one line per version: milliseconds per
// call and TFLOP/s (the classifier's 6 N V d, forward and backward; a chunked backward computes the logits again,
// 2 N V d more, not counted), and the relative errors (norm of the difference over the norm of the CPU's) of the
// losses, dx and dW. Exit status 1 when an error exceeds its tolerance. The emulated build
// (dev_classifier_emulated) runs the same code on the host emulation of CUDA; CTest runs it on a small shape
// (emulated/dev_classifier).
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/device.h"
#include "ladder.h"

using namespace l3c;

namespace {

constexpr const char* kUsage =
    "[--rows N] [--dim d] [--vocab V] [--row-blocks R,R,..] [--chunks C,C,..] [--warmup N] [--iters N] "
    "[--check-rows N]";

struct Options {
  int64_t rows = 8192, dim = 768;  // configs/gpu/dense_124m.json: micro-batch 8 x 1024 positions, d_model 768
  std::vector<int64_t> vocabularies = {50257, 180000};
  std::vector<int64_t> row_blocks = {256, 1024};
  std::vector<int64_t> chunks = {4096, 16384, 65536};
  int warmup = 2, iters = 10;
  int64_t check_rows = 64;
};

[[noreturn]] void usage(const std::string& problem) { dev::usage_error("dev_classifier", problem, kUsage); }

std::vector<int64_t> integer_list(const std::string& flag, const std::string& text) {
  std::vector<int64_t> values;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    const std::string item = text.substr(begin, comma - begin);
    const long long value = dev::integer_option("dev_classifier", flag, item.c_str(), kUsage);
    if (value < 1) usage("the values after " + flag + " must be >= 1");
    values.push_back(value);
    begin = comma + 1;
  }
  return values;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage("missing value after " + flag);
    const char* text = argv[++i];
    if (flag == "--row-blocks") o.row_blocks = integer_list(flag, text);
    else if (flag == "--chunks") o.chunks = integer_list(flag, text);
    else if (flag == "--vocab") o.vocabularies = integer_list(flag, text);
    else {
      const long long value = dev::integer_option("dev_classifier", flag, text, kUsage);
      if (flag == "--rows") o.rows = value;
      else if (flag == "--dim") o.dim = value;
      else if (flag == "--warmup") o.warmup = static_cast<int>(value);
      else if (flag == "--iters") o.iters = static_cast<int>(value);
      else if (flag == "--check-rows") o.check_rows = value;
      else usage("unknown option " + flag);
    }
  }
  if (o.rows < 1 || o.dim < 1) usage("rows and dim must be >= 1");
  if (o.iters < 1) usage("iters must be >= 1");
  o.check_rows = std::clamp<int64_t>(o.check_rows, 1, o.rows);
  return o;
}

struct Version {
  std::string name;
  DType dtype;
  int64_t block_rows, vocab_chunk;  // 0, 0: the default plan
};

std::vector<Version> versions_for(const Options& o, int64_t vocab) {
  std::vector<Version> versions;
  for (int64_t r : o.row_blocks)
    versions.push_back({"whole V, R " + std::to_string(std::min(r, o.rows)), DType::BF16, r, vocab});
  for (int64_t c : o.chunks)
    if (c < vocab) versions.push_back({"R = N, C " + std::to_string(c), DType::BF16, o.rows, c});
  versions.push_back({"default bf16", DType::BF16, 0, 0});
  versions.push_back({"default f32", DType::F32, 0, 0});
  return versions;
}

// x (N, d) and W (V, d) in f32 already rounded to bf16 (every version reads the same values), their bf16 copies,
// and the targets.
struct Inputs {
  dev::DeviceTensor x32, w32, x16, w16, targets;
  std::vector<int32_t> host_targets;
  Inputs(const Options& o, int64_t vocab)
      : x32(DType::F32, {o.rows, o.dim}), w32(DType::F32, {vocab, o.dim}), x16(DType::BF16, {o.rows, o.dim}),
        w16(DType::BF16, {vocab, o.dim}), targets(DType::I32, {o.rows}), host_targets(static_cast<size_t>(o.rows)) {
    // W ~ 0.02 N(0, 1), the usual initialisation: logits of standard deviation about 0.02 sqrt(d).
    const struct {
      dev::DeviceTensor* f32;
      dev::DeviceTensor* bf16;
      double scale;
    } pairs[] = {{&x32, &x16, 1.0}, {&w32, &w16, 0.02}};
    uint64_t seed = 1;
    for (const auto& p : pairs) {
      const int64_t n = p.f32->tensor().numel();
      std::vector<float> host(static_cast<size_t>(n));
      dev::fill_normal(host, seed++, p.scale);
      ops::cuda::copy_between(p.f32->tensor().view({n}), Tensor(host.data(), DType::F32, {n}));
      ops::cuda::convert(*p.bf16, *p.f32);  // round once ...
      ops::cuda::convert(*p.f32, *p.bf16);  // ... and give the f32 version the rounded values
    }
    for (int32_t& t : host_targets) t = static_cast<int32_t>(dev::next_random(seed) % static_cast<uint64_t>(vocab));
    ops::cuda::copy_between(targets, Tensor(host_targets.data(), DType::I32, {o.rows}));
  }
};

// The CPU op on the first check rows: losses, dx, dW (host f32).
struct Reference {
  std::vector<float> losses, dx, dw;
};
Reference cpu_reference(const Options& o, const Inputs& in, int64_t vocab, double grad_scale) {
  const int64_t S = o.check_rows, d = o.dim;
  std::vector<float> x = dev::first_rows_on_host(in.x32, S), w = dev::first_rows_on_host(in.w32, vocab);
  std::vector<int32_t> targets(in.host_targets.begin(), in.host_targets.begin() + S);
  Reference r;
  r.losses.resize(static_cast<size_t>(S));
  r.dx.resize(x.size());
  r.dw.assign(w.size(), 0.0f);
  auto t = [](std::vector<float>& v, std::initializer_list<int64_t> shape) { return Tensor(v.data(), DType::F32, shape); };
  ops::cpu::classifier_forward_backward(t(r.losses, {S}), t(r.dx, {S, d}), t(r.dw, {vocab, d}), t(x, {S, d}),
                                        t(w, {vocab, d}), Tensor(targets.data(), DType::I32, {S}), grad_scale);
  return r;
}

// Runs every version at one vocabulary; false when an error exceeds its tolerance.
bool run_vocabulary(const Options& o, int64_t vocab) {
  const int64_t N = o.rows, d = o.dim, S = o.check_rows;
  std::printf("\nV %lld: N %lld rows, d %lld; %d warmup + %d timed calls; CPU check on %lld row(s)\n",
              static_cast<long long>(vocab), static_cast<long long>(N), static_cast<long long>(d), o.warmup, o.iters,
              static_cast<long long>(S));
  const Inputs in(o, vocab);
  const double grad_scale = 1.0 / static_cast<double>(N);
  const Reference reference = cpu_reference(o, in, vocab, grad_scale);
  const double flops = 6.0 * static_cast<double>(N) * static_cast<double>(vocab) * static_cast<double>(d);
  std::printf("%-20s %10s %9s %10s %10s %10s\n", "version", "ms", "TFLOP/s", "err loss", "err dx", "err dW");
  bool all_within = true;
  for (const Version& version : versions_for(o, vocab)) {
    const bool f32 = version.dtype == DType::F32;
    const Tensor x = f32 ? in.x32 : in.x16, W = f32 ? in.w32 : in.w16;
    dev::DeviceTensor losses(DType::F32, {N}), dx(version.dtype, {N, d}), dW(DType::F32, {vocab, d});
    ops::cuda::fill_zero(dW);
    auto call = [&](Tensor l, Tensor g, Tensor w_grad, Tensor rows, Tensor targets) {
      ops::cuda::classifier_forward_backward(l, g, w_grad, rows, W, targets, grad_scale, version.block_rows,
                                             version.vocab_chunk);
    };
    const double ms = dev::milliseconds_per_call([&] { call(losses, dx, dW, x, in.targets); }, o.warmup, o.iters);
    // dW of the check rows alone, with the version's blocking.
    ops::cuda::fill_zero(dW);
    dev::DeviceTensor check_losses(DType::F32, {S}), check_dx(version.dtype, {S, d});
    call(check_losses, check_dx, dW, x.rows(0, S), in.targets.tensor().rows(0, S));
    const double errors[3] = {dev::relative_error(dev::first_rows_on_host(losses, S), reference.losses),
                              dev::relative_error(dev::first_rows_on_host(dx, S), reference.dx),
                              dev::relative_error(dev::first_rows_on_host(dW, vocab), reference.dw)};
    // f32: summation order only. bf16: the same (products of bf16 values are exact in fp32) for the losses;
    // dlogits rounded to bf16 before the products of dx and dW, and dx stored in bf16.
    const double tolerance[3] = {f32 ? 1e-5 : 1e-4, f32 ? 1e-4 : 2e-2, f32 ? 1e-4 : 2e-2};
    bool within = true;
    for (int i = 0; i < 3; ++i) within = within && errors[i] <= tolerance[i];
    all_within = all_within && within;
    std::printf("%-20s %10.3f %9.2f %10.2e %10.2e %10.2e%s\n", version.name.c_str(), ms, flops / (ms * 1e9), errors[0],
                errors[1], errors[2], within ? "" : "  <- above tolerance");
  }
  return all_within;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  dev::require_device("dev_classifier");
  bool all_within = true;
  for (int64_t vocab : o.vocabularies) all_within = run_vocabulary(o, vocab) && all_within;
  return all_within ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "dev_classifier: %s\n", e.what());
  return 1;
}
