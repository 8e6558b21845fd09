// What the kernel ladders of dev/cuda share: integer command-line flags, device tensors that own their memory,
// inputs rounded to bf16 once (so that every version reads the same values), host copies, the relative error, and
// the timing loop. The ladders call the CUDA backend (ops::cuda) and the CPU ops (ops::cpu) directly, not the
// dispatching ops.cpp, so that each links only the kernel files it runs (a ladder is about 1 MB stripped instead of
// 8; scripts/gpu_deps.sh carries them all).
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/device.h"

namespace l3c::dev {

// A ladder's usage problem: prints it with the usage line, and exits with 2.
[[noreturn]] inline void usage_error(const char* ladder, const std::string& problem, const std::string& usage) {
  std::fprintf(stderr, "%s: %s\nusage: %s %s\n", ladder, problem.c_str(), ladder, usage.c_str());
  std::exit(2);
}
// The value of an option that takes a non-negative integer, or the usage error.
inline int64_t integer_option(const char* ladder, const std::string& flag, const char* text, const std::string& usage) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || value < 0) usage_error(ladder, "not a non-negative integer after " + flag, usage);
  return value;
}

// A flag that takes a non-negative integer.
struct Flag {
  const char* name;
  int64_t* value;
};
// A ladder's command line of integer flags: parse sets the flags named there; fail (and parse, on anything else)
// prints the problem and the usage, and exits with 2.
struct Flags {
  const char* ladder;
  std::vector<Flag> flags;

  std::string usage() const {
    std::string text;
    for (const Flag& f : flags) text += std::string(text.empty() ? "" : " ") + "[" + f.name + " N]";
    return text;
  }
  [[noreturn]] void fail(const std::string& problem) const { usage_error(ladder, problem, usage()); }
  void parse(int argc, char** argv) const {
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      if (i + 1 >= argc) fail("missing value after " + flag);
      const int64_t value = integer_option(ladder, flag, argv[++i], usage());
      bool known = false;
      for (const Flag& f : flags)
        if (flag == f.name) {
          *f.value = value;
          known = true;
        }
      if (!known) fail("unknown option " + flag);
    }
  }
};

// A device tensor that owns its memory.
class DeviceTensor {
 public:
  DeviceTensor(DType dtype, std::initializer_list<int64_t> shape) : tensor_(nullptr, dtype, shape, Device::CUDA) {
    tensor_.data = cuda_malloc(tensor_.bytes(), "a kernel ladder's tensor");
  }
  ~DeviceTensor() { cuda_free(tensor_.data); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  operator Tensor() const { return tensor_; }  // NOLINT: passed to ops as it is
  const Tensor& tensor() const { return tensor_; }

 private:
  Tensor tensor_;
};

// A device tensor (f32 or bf16) as host f32 values.
inline std::vector<float> host_values(const Tensor& device) {
  const int64_t n = device.numel();
  std::vector<float> host(static_cast<size_t>(n));
  if (device.dtype == DType::F32) {
    ops::cuda::copy_between(Tensor(host.data(), DType::F32, {n}), device.view({n}));
  } else {
    DeviceTensor converted(DType::F32, {n});
    ops::cuda::convert(converted, device.view({n}));
    ops::cuda::copy_between(Tensor(host.data(), DType::F32, {n}), converted);
  }
  return host;
}
// The first `rows` rows of a device tensor as host f32 values.
inline std::vector<float> first_rows_on_host(const Tensor& device, int64_t rows) {
  return host_values(device.rows(0, rows));
}

// Norm of the difference over the norm of the reference.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& reference) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - reference[i]) * (static_cast<double>(a[i]) - reference[i]);
    norm += static_cast<double>(reference[i]) * reference[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

// SplitMix64: the same values on every run.
inline uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Random normal values times scale (Box-Muller).
inline void fill_normal(std::vector<float>& values, uint64_t seed, double scale = 1.0) {
  for (float& x : values) {
    const double u1 = (static_cast<double>(next_random(seed) >> 11) + 0.5) / 9007199254740992.0;
    const double u2 = static_cast<double>(next_random(seed) >> 11) / 9007199254740992.0;
    x = static_cast<float>(scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
}

// f32 (on the device) = random normal values rounded to bf16, and bf16 = the same values.
inline void fill_rounded(const DeviceTensor& f32, const DeviceTensor& bf16, uint64_t seed, double scale = 1.0) {
  const int64_t n = f32.tensor().numel();
  std::vector<float> host(static_cast<size_t>(n));
  fill_normal(host, seed, scale);
  ops::cuda::copy_between(f32.tensor().view({n}), Tensor(host.data(), DType::F32, {n}));
  ops::cuda::convert(bf16, f32);  // round once ...
  ops::cuda::convert(f32, bf16);  // ... and give the f32 version the rounded values
}

// Wall-clock milliseconds per call of fn, after `warmup` calls; the device is idle before and after.
template <typename Fn>
double milliseconds_per_call(Fn&& fn, int64_t warmup, int64_t iters) {
  for (int64_t i = 0; i < warmup; ++i) fn();
  ops::cuda::synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) fn();
  ops::cuda::synchronize();
  const std::chrono::duration<double, std::milli> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / static_cast<double>(iters);
}

// The table of versions: a header naming the four compared outputs (the forward's, then three gradients), then one
// row per version with its timings (ms per call and TFLOP/s, forward and backward) and its errors; a row returns
// whether every error is within its tolerance (and says so when not). Tolerances: f32 differs from the CPU in the
// order of additions only (1e-5 forward, 1e-4 for gradients, whose sums are longer); bf16 rounds its outputs, and
// the tensor-core versions their probabilities and softmax gradients before their second products (1e-2, 2e-2).
inline void print_header(const char* const (&outputs)[4]) {
  std::printf("%-18s %10s %9s %10s %9s %9s %9s %9s %9s\n", "version", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s",
              outputs[0], outputs[1], outputs[2], outputs[3]);
}
inline bool print_row(const char* version, bool f32, double forward_ms, double forward_flops, double backward_ms,
                      double backward_flops, const double (&errors)[4]) {
  const double forward_tolerance = f32 ? 1e-5 : 1e-2, gradient_tolerance = f32 ? 1e-4 : 2e-2;
  bool within = true;
  for (int i = 0; i < 4; ++i) within = within && errors[i] <= (i == 0 ? forward_tolerance : gradient_tolerance);
  std::printf("%-18s %10.3f %9.2f %10.3f %9.2f %9.2e %9.2e %9.2e %9.2e%s\n", version, forward_ms,
              forward_flops / (forward_ms * 1e9), backward_ms, backward_flops / (backward_ms * 1e9), errors[0],
              errors[1], errors[2], errors[3], within ? "" : "  <- above tolerance");
  return within;
}

// Says so when the tensor-core version applies to the shape but this GPU has no bf16 tensor cores (training would
// then use the CUDA-core kernels).
inline void note_tensor_cores(bool supported, bool chosen) {
  if (supported && !chosen)
    std::printf("note: this GPU has no bf16 tensor cores (sm_80+); training would use the CUDA-core kernels\n");
}

// Exits with 4 (nothing to compare) where no CUDA device is present; else prints the device.
inline void require_device(const char* ladder) {
  if (cuda_device_count() == 0) {
    std::printf("%s: no CUDA device (%s): nothing to compare\n", ladder,
                built_with_cuda() ? "none present" : "backend not built");
    std::exit(4);
  }
  std::printf("device: %s%s\n", cuda_device_description(0).c_str(), cuda_emulated() ? " (emulated)" : "");
}

}  // namespace l3c::dev
