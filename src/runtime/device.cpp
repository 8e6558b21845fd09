// Resolving a device choice, a precision and the CPU dtype to the device and dtypes a run uses.
#include "runtime/device.h"

#include "core/errors.h"
#include "kernels/device.h"

namespace l3c {

RunDevice resolve_run_device(DeviceChoice choice, Precision precision, DType cpu_dtype, Resolve mode) {
  L3C_CHECK(cpu_dtype == DType::F32 || cpu_dtype == DType::F64, "the CPU computes in f32 or f64, not {}",
            dtype_name(cpu_dtype));
  const bool bf16 = precision == Precision::Bf16, f64 = cpu_dtype == DType::F64;
  const bool gpu_here = built_with_cuda() && cuda_device_count() > 0;
  RunDevice r;
  if (mode == Resolve::Plan) {
    // A GPU asked for, by name or by bf16, is assumed; "auto" takes the GPU only where it would run.
    const bool gpu = choice == DeviceChoice::Cuda || bf16 ||
                     (choice == DeviceChoice::Auto && gpu_here && !cuda_emulated() && !f64);
    r.device = gpu ? Device::CUDA : Device::CPU;
  } else if (choice == DeviceChoice::Cuda) {
    if (!built_with_cuda())
      fail("the device \"cuda\" was asked for (train.device or --device), but this l3c was built without the CUDA "
           "backend (CMake builds it when nvcc is installed); use --device cpu");
    if (!gpu_here)
      fail("the device \"cuda\" was asked for (train.device or --device), but no GPU is visible to the CUDA runtime; "
           "use --device cpu");
    if (f64)
      fail("train.dtype \"f64\" runs on the CPU only; use train.dtype \"f32\" (train.precision fp32 or bf16) on the "
           "GPU, or --device cpu");
    r.device = Device::CUDA;
  } else if (choice == DeviceChoice::Auto) {
    // The emulation of CUDA on the host is for tests: "auto" never picks it.
    r.device = gpu_here && !cuda_emulated() && !f64 ? Device::CUDA : Device::CPU;
  } else {
    r.device = Device::CPU;
  }
  if (bf16 && r.device != Device::CUDA)
    fail("precision \"bf16\" (train.precision or --precision) needs a GPU and {}; use fp32 on the CPU",
         built_with_cuda() ? "none is visible" : "this l3c was built without the CUDA backend");
  if (r.device == Device::CUDA) {
    r.mixed_precision = bf16;
    r.param_dtype = bf16 ? DType::BF16 : DType::F32;
    // Gradients sum over every micro-batch: in bf16 each add would round to 8 significant bits.
    r.grad_dtype = DType::F32;
    r.moment_dtype = DType::F32;
    r.description = gpu_here ? cuda_device_description(0) : "GPU";
    if (mode == Resolve::Run) {
      cuda_sync_after_launch();  // a bad L3C_CUDA_SYNC is refused before any work
      if (bf16) {
        const auto [major, minor] = cuda_compute_capability(0);
        require_bf16_capable(major, minor, r.description);
      }
    }
  } else {
    r.param_dtype = r.grad_dtype = r.moment_dtype = cpu_dtype;
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
