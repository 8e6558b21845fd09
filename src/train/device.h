// The device a run computes on: train.device ("auto", "cpu", "cuda") resolved against this build (is the CUDA
// backend in it?) and this machine (is a GPU present?), with train.precision and train.dtype. Asking for what
// cannot run here is one UserError that says what to do.
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

RunDevice resolve_run_device(const TrainConfig& train);
// train.precision bf16 on a GPU of compute capability major.minor (`gpu` names it in the message): bf16 tensor
// cores need 8.0 (Ampere) or newer; an older GPU is a UserError that says to use fp32.
void require_bf16_capable(int major, int minor, const std::string& gpu);

// The datasheet dense bf16 peak of the GPU named in `description` (H100 SXM 989 TFLOP/s, ...): the MFU
// denominator on a GPU; 0 when the model is not known.
double gpu_peak_flops(const std::string& description);

}  // namespace l3c
