// Resolving train.device / train.precision / train.dtype to the device and dtypes a run uses.
#include "train/device.h"

#include "core/errors.h"
#include "kernels/device.h"

namespace l3c {

RunDevice resolve_run_device(const TrainConfig& train) {
  RunDevice r;
  const bool gpu_here = built_with_cuda() && cuda_device_count() > 0;
  if (train.device == "cuda") {
    if (!built_with_cuda())
      fail("train.device is \"cuda\", but this l3c was built without the CUDA backend (CMake builds it when nvcc is "
           "installed); use --device cpu");
    if (!gpu_here) fail("train.device is \"cuda\", but no GPU is visible to the CUDA runtime; use --device cpu");
    if (train.dtype == "f64")
      fail("train.dtype \"f64\" runs on the CPU only; use train.dtype \"f32\" (train.precision fp32 or bf16) on the GPU, "
           "or --device cpu");
    r.device = Device::CUDA;
  } else if (train.device == "auto") {
    // The emulation of CUDA on the host is for tests: "auto" never picks it.
    r.device = gpu_here && !cuda_emulated() && train.dtype != "f64" ? Device::CUDA : Device::CPU;
  } else {
    r.device = Device::CPU;
  }
  if (train.precision == "bf16" && r.device != Device::CUDA)
    fail("train.precision \"bf16\" needs a GPU and {}; use train.precision \"fp32\" on the CPU",
         built_with_cuda() ? "none is visible" : "this l3c was built without the CUDA backend");
  if (r.device == Device::CUDA) {
    r.mixed_precision = train.precision == "bf16";
    r.param_dtype = r.mixed_precision ? DType::BF16 : DType::F32;
    // Gradients sum over every micro-batch and classifier row block: in bf16 each add would round to 8 bits.
    r.grad_dtype = DType::F32;
    r.moment_dtype = DType::F32;
    r.description = cuda_device_description(0);
    cuda_sync_after_launch();  // a bad L3C_CUDA_SYNC is refused before any work
    if (r.mixed_precision) {
      const auto [major, minor] = cuda_compute_capability(0);
      require_bf16_capable(major, minor, r.description);
    }
  } else {
    r.param_dtype = r.grad_dtype = r.moment_dtype = train.dtype == "f64" ? DType::F64 : DType::F32;
    r.description = "cpu";
  }
  return r;
}

void require_bf16_capable(int major, int minor, const std::string& gpu) {
  if (major >= 8) return;
  fail("train.precision \"bf16\" needs a GPU with bf16 tensor cores (compute capability 8.0 or newer: A100, H100, "
       "...); {} has compute capability {}.{}; use train.precision \"fp32\"",
       gpu, major, minor);
}

double gpu_peak_flops(const std::string& description) {
  auto has = [&](const char* text) { return description.find(text) != std::string::npos; };
  if (has("H200") || has("GH200")) return 989e12;
  if (has("H100")) return has("PCIe") ? 756e12 : 989e12;
  if (has("H800")) return 989e12;
  if (has("A100") || has("A800")) return 312e12;
  if (has("L40S")) return 362e12;
  return 0.0;
}

}  // namespace l3c
