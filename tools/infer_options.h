// The inference options `l3c generate` and `l3c bench --generate` share: --device cpu|cuda|auto (auto: the GPU when
// the build has the CUDA backend and one is present), --precision fp32|bf16 (bf16 on the GPU only) and
// --l3-tables device|host|mmap.
#pragma once
#include "cli.h"
#include "core/errors.h"
#include "infer/model.h"
#include "runtime/device.h"

namespace l3c::cmd {

inline InferenceOptions inference_options(const cli::Args& args) {
  InferenceOptions options;
  const RunDevice device = resolve_run_device(parse_choice<DeviceChoice>(args.get("device", "auto"), "--device"),
                                              parse_choice<Precision>(args.get("precision", "fp32"), "--precision"),
                                              DType::F32);
  options.device = device.device;
  options.dtype = device.param_dtype;
  options.tables = parse_choice<L3TableMode>(args.get("l3-tables", "device"), "--l3-tables");
  return options;
}

}  // namespace l3c::cmd
