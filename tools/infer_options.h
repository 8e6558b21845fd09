// The inference options `l3c generate` and `l3c bench --generate` share: --device cpu|cuda|auto (auto: the GPU when
// the build has the CUDA backend and one is present), --precision fp32|bf16 (bf16 on the GPU only) and
// --l3-tables device|host|mmap.
#pragma once
#include "cli.h"
#include "core/errors.h"
#include "infer/model.h"
#include "kernels/device.h"

namespace l3c::cmd {

inline InferenceOptions inference_options(const cli::Args& args) {
  InferenceOptions options;
  const std::string device = args.get("device", "auto");
  if (device == "cpu") options.device = Device::CPU;
  else if (device == "cuda" || device == "auto") {
    const bool gpu = built_with_cuda() && !cuda_emulated() && cuda_device_count() > 0;
    if (device == "cuda" && !gpu)
      fail("--device cuda: no GPU here ({})", built_with_cuda() ? "none found" : "the CUDA backend is not built");
    options.device = gpu ? Device::CUDA : Device::CPU;
  } else {
    fail("--device: must be cpu, cuda or auto, got '{}'", device);
  }
  const std::string precision = args.get("precision", "fp32");
  if (precision != "fp32" && precision != "bf16") fail("--precision: must be fp32 or bf16, got '{}'", precision);
  if (precision == "bf16" && options.device != Device::CUDA) fail("--precision bf16: the GPU only (the CPU computes in fp32)");
  options.dtype = precision == "bf16" ? DType::BF16 : DType::F32;
  options.tables = parse_l3_table_mode(args.get("l3-tables", "device"));
  return options;
}

}  // namespace l3c::cmd
