// The device a run computes on and the dtypes it keeps: a device choice ("auto", "cpu", "cuda"), a precision
// ("fp32", "bf16") and the CPU's dtype (f32, f64) resolved against this build (is the CUDA backend in it?) and this
// machine (is a GPU present?). This is the one place where those choices become a Device and DTypes: training,
// evaluation, generation, bench and inspect all ask it. Asking for what cannot run here is one UserError that says
// what to do.
#pragma once
#include <string>

#include "core/config.h"
#include "core/tensor.h"

namespace l3c {

struct RunDevice {
  Device device = Device::CPU;
  DType param_dtype = DType::F32;  // parameters and activations
  DType grad_dtype = DType::F32;   // gradients: param_dtype, except f32 with bf16 parameters (fp32 accumulation)
  DType moment_dtype = DType::F32; // AdamW moments (and the master weights with bf16 parameters)
  bool mixed_precision = false;    // bf16 parameters with f32 master weights
  std::string description;         // "cpu" or the GPU's name, for the log
};

// Run: the device must be usable here. Plan (`l3c inspect`): the device the choices ask for, present or not, so that
// a GPU run can be sized on a machine without one.
enum class Resolve { Run, Plan };

// `cpu_dtype` is what the CPU computes in (train.dtype; f64 runs on the CPU only).
RunDevice resolve_run_device(DeviceChoice device, Precision precision, DType cpu_dtype, Resolve mode = Resolve::Run);
inline RunDevice resolve_run_device(const TrainConfig& train, Resolve mode = Resolve::Run) {
  return resolve_run_device(train.device, train.precision, train.dtype, mode);
}

// A bf16 run on a GPU of compute capability major.minor (`gpu` names it in the message): bf16 tensor cores need 8.0
// (Ampere) or newer; an older GPU is a UserError that says to use fp32.
void require_bf16_capable(int major, int minor, const std::string& gpu);

// The datasheet dense bf16 peak of the GPU named in `description` (H100 SXM 989 TFLOP/s, ...): the MFU
// denominator on a GPU; 0 when the model is not known.
double gpu_peak_flops(const std::string& description);

}  // namespace l3c
