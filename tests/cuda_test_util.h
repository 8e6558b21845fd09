// Helpers for the CUDA tests: skipping without a GPU (exit code 4, which CTest reports as skipped), device
// tensors that own their memory and copy to and from host TestTensors, and pairs of inputs with the same
// values for the CPU reference and the GPU (bf16 inputs are rounded once and the CPU gets the rounded values).
// The tests build in every configuration; they run on a GPU, and (the emulated/ twins) on the host emulation of
// CUDA, which executes the same kernels on the CPU.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>

#include "core/tensor.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "test_util.h"
#ifdef L3C_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"  // the CUDA backend's own entry points: named kernels, device queries
#endif

namespace l3c::test {

// Exits with code 4 (CTest: skipped) when there is no GPU to run on.
inline void require_gpu() {
  if (cuda_device_count() == 0) {
    std::printf("skipped: no CUDA device (%s)\n", built_with_cuda() ? "none present" : "backend not built");
    std::exit(4);
  }
}

// A tensor in device memory that owns it. Built from a host tensor (same shape, dtype and values) or
// uninitialised; host() copies it back.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  explicit DeviceTensor(const Tensor& host) : tensor_(host) {
    allocate();
    ops::copy(tensor_, host);
  }
  DeviceTensor(DType dtype, std::initializer_list<int64_t> shape) : tensor_(nullptr, dtype, shape) { allocate(); }
  ~DeviceTensor() { cuda_free(tensor_.data); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  DeviceTensor(DeviceTensor&& other) noexcept : tensor_(std::exchange(other.tensor_, Tensor())) {}
  DeviceTensor& operator=(DeviceTensor&& other) noexcept {
    std::swap(tensor_, other.tensor_);
    return *this;
  }

  const Tensor& tensor() const { return tensor_; }
  operator Tensor() const { return tensor_; }  // NOLINT: implicit by design, tests pass it to ops
  TestTensor host() const {
    TestTensor t = TestTensor::zeros_like(tensor_);
    ops::copy(t, tensor_);
    return t;
  }
  std::vector<double> values() const { return host().values(); }

 private:
  void allocate() {
    tensor_.device = Device::CUDA;
    tensor_.data = cuda_malloc(std::max<size_t>(tensor_.bytes(), 1), "a test tensor");
  }
  Tensor tensor_;
};

// The same values for the CPU (f32, or f64) and the GPU (dtype): random normal * scale, rounded to the GPU dtype
// first when it is bf16.
struct Pair {
  TestTensor cpu;
  DeviceTensor gpu;
};
inline Pair random_pair(DType gpu_dtype, std::initializer_list<int64_t> shape, uint64_t seed, double scale = 1.0,
                        DType cpu_dtype = DType::F32) {
  TestTensor values(gpu_dtype == DType::BF16 ? DType::BF16 : cpu_dtype, shape);
  random_fill(values, seed, scale);
  Pair p;
  p.gpu = DeviceTensor(gpu_dtype == DType::BF16 ? values.tensor() : values.converted(gpu_dtype).tensor());
  p.cpu = values.converted(cpu_dtype);
  return p;
}
// A pair from given host values (i32 tokens, or floating values as they are).
inline Pair pair_of(const TestTensor& values) {
  Pair p;
  p.cpu = values;
  p.gpu = DeviceTensor(values.tensor());
  return p;
}
// Zeros on both sides: the CPU in cpu_dtype, the GPU in gpu_dtype.
inline Pair zero_pair(DType gpu_dtype, std::initializer_list<int64_t> shape, DType cpu_dtype = DType::F32) {
  Pair p;
  p.cpu = TestTensor(cpu_dtype, shape);
  p.gpu = DeviceTensor(TestTensor(gpu_dtype, shape).tensor());
  return p;
}

// ||gpu - cpu|| / ||cpu||, the GPU values read back.
inline double gpu_error(const DeviceTensor& gpu, const TestTensor& cpu) {
  return norm_relative_error(gpu.values(), cpu.values());
}

// close_values (test_util.h) of the GPU values read back against the CPU's.
inline bool close_to(const DeviceTensor& gpu, const TestTensor& cpu, double tol, double floor = 1e-6) {
  return close_values(gpu.values(), cpu.values(), tol, floor);
}

}  // namespace l3c::test
