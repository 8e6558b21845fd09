// What the kernel ladders of dev/cuda share: device tensors that own their memory, device values read back as host
// f32, the relative error against a CPU reference, reproducible random inputs, integer options and the timing loop.
// The ladders call the CUDA backend (ops::cuda) and the CPU ops (ops::cpu) directly, not the dispatching ops.cpp, so
// that each links only the kernel files it runs (dev_classifier is 1 MB stripped, not 8; .gpu_deps carries them).
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

namespace l3c::dev {

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

// The first `rows` rows of a device tensor (f32 or bf16) as host f32 values.
inline std::vector<float> first_rows_on_host(const Tensor& device, int64_t rows) {
  const Tensor slice = device.rows(0, rows);
  const int64_t n = slice.numel();
  std::vector<float> host(static_cast<size_t>(n));
  if (slice.dtype == DType::F32) {
    ops::cuda::copy_between(Tensor(host.data(), DType::F32, {n}), slice.view({n}));
  } else {
    DeviceTensor converted(DType::F32, {n});
    ops::cuda::convert(converted, slice.view({n}));
    ops::cuda::copy_between(Tensor(host.data(), DType::F32, {n}), converted);
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

// SplitMix64: the same numbers for every run.
inline uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Random normal values (SplitMix64 and Box-Muller) times `scale`, the same for every run.
inline void fill_normal(std::vector<float>& values, uint64_t seed, double scale = 1.0) {
  for (float& x : values) {
    const double u1 = (static_cast<double>(next_random(seed) >> 11) + 0.5) / 9007199254740992.0;
    const double u2 = static_cast<double>(next_random(seed) >> 11) / 9007199254740992.0;
    x = static_cast<float>(scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
}

// A non-negative integer option's value, or the ladder's usage message (exit 2).
[[noreturn]] inline void usage_error(const char* ladder, const std::string& problem, const char* usage) {
  std::fprintf(stderr, "%s: %s\nusage: %s %s\n", ladder, problem.c_str(), ladder, usage);
  std::exit(2);
}
inline long long integer_option(const char* ladder, const std::string& flag, const char* text, const char* usage) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || value < 0) usage_error(ladder, "not a non-negative integer after " + flag, usage);
  return value;
}

// Prints the GPU the ladder runs on; false, after saying so, when there is none (the ladder then exits with 4).
inline bool announce_device(const char* ladder) {
  if (cuda_device_count() == 0) {
    std::printf("%s: no CUDA device (%s): nothing to compare\n", ladder,
                built_with_cuda() ? "none present" : "backend not built");
    return false;
  }
  std::printf("device: %s%s\n", cuda_device_description(0).c_str(), cuda_emulated() ? " (emulated)" : "");
  return true;
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

}  // namespace l3c::dev
