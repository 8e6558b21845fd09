// What the kernel ladders of dev/cuda share: integer flags, a device tensor that owns its memory, host copies of
// the first rows of a device tensor, the relative error against the CPU, random normal inputs and the timing loop.
// Host code only, against the library's ops (the kernels are the library's).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/device.h"
#include "kernels/ops.h"

namespace l3c::dev {

// Prints "NAME: problem" and the usage line to stderr and exits with status 2.
[[noreturn]] inline void usage(const char* name, const char* usage_line, const std::string& problem) {
  std::fprintf(stderr, "%s: %s\nusage: %s %s\n", name, problem.c_str(), name, usage_line);
  std::exit(2);
}

// Walks argv as "--flag value" pairs of non-negative integers: set(flag, value) returns false for an unknown flag.
template <typename Set>
void parse_integer_flags(int argc, char** argv, const char* name, const char* usage_line, Set&& set) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(name, usage_line, "missing value after " + flag);
    char* end = nullptr;
    const long long value = std::strtoll(argv[++i], &end, 10);
    if (*end != '\0' || value < 0) usage(name, usage_line, "not a non-negative integer after " + flag);
    if (!set(flag, static_cast<int64_t>(value))) usage(name, usage_line, "unknown option " + flag);
  }
}

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

// The first `rows` rows (along the first dimension) of a device tensor as host f32 values.
inline std::vector<float> first_rows_on_host(const Tensor& device, int64_t rows) {
  const Tensor slice = device.rows(0, rows);
  const int64_t n = slice.numel();
  std::vector<float> host(static_cast<size_t>(n));
  if (n == 0) return host;
  if (slice.dtype == DType::F32) {
    ops::copy(Tensor(host.data(), DType::F32, {n}), slice.view({n}));
  } else {
    DeviceTensor converted(DType::F32, {n});
    ops::convert(converted, slice.view({n}));
    ops::copy(Tensor(host.data(), DType::F32, {n}), converted);
  }
  return host;
}

// The norm of the difference over the norm of the reference.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& reference) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - reference[i]) * (static_cast<double>(a[i]) - reference[i]);
    norm += static_cast<double>(reference[i]) * reference[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

// SplitMix64: the same numbers on every run.
struct Random {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) / 9007199254740992.0; }
};

// Random normal values times scale (Box-Muller), the same for every run.
inline void fill_normal(std::vector<float>& values, uint64_t seed, double scale = 1.0) {
  Random random{seed};
  for (float& x : values) {
    const double u1 = random.uniform(), u2 = static_cast<double>(random.next() >> 11) / 9007199254740992.0;
    x = static_cast<float>(scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
}

// Fills a device f32 tensor and its bf16 twin with the same random normal values: drawn in f32, rounded to bf16
// once, and the rounded values given back to the f32 tensor, so that every version reads the same inputs.
inline void fill_rounded_pair(const Tensor& f32, const Tensor& bf16, uint64_t seed, double scale = 1.0) {
  const int64_t n = f32.numel();
  std::vector<float> host(static_cast<size_t>(n));
  fill_normal(host, seed, scale);
  ops::copy(f32.view({n}), Tensor(host.data(), DType::F32, {n}));
  ops::convert(bf16, f32);  // round once ...
  ops::convert(f32, bf16);  // ... and give the f32 version the rounded values
}

// Wall-clock milliseconds per call of fn, after `warmup` calls; the device is idle before and after.
template <typename Fn>
double milliseconds_per_call(Fn&& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  ops::cuda::synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) fn();
  ops::cuda::synchronize();
  const std::chrono::duration<double, std::milli> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / iters;
}

// The line every ladder starts with when it has a device: which one. Returns false (after saying why) without.
inline bool print_device(const char* name) {
  if (cuda_device_count() == 0) {
    std::printf("%s: no CUDA device (%s): nothing to compare\n", name,
                built_with_cuda() ? "none present" : "backend not built");
    return false;
  }
  std::printf("device: %s%s\n", cuda_device_description(0).c_str(), cuda_emulated() ? " (emulated)" : "");
  return true;
}

}  // namespace l3c::dev
