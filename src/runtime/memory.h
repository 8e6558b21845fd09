// Memory a training run needs (per rank): parameters, gradients, AdamW moments, the activation arena of one micro-batch,
// and on the GPU the f32 master weights (bf16 precision) and the CUDA ops' workspace. `inspect` prints it;
// training checks it against the memory available (host: MemAvailable; GPU: free device memory) before
// allocating anything.
#pragma once
#include <cstddef>

#include "core/config.h"
#include "kernels/device.h"
#include "model/llama.h"
#include "runtime/device.h"

namespace l3c {

struct MemoryEstimate {
  Device device = Device::CPU;
  size_t params = 0, grads = 0, optimizer = 0, activations = 0;
  size_t master = 0;     // f32 master weights behind bf16 parameters
  size_t workspace = 0;  // the CUDA ops' scratch
  size_t grad_element = 4;  // bytes per gradient element (what a step's reduction moves per parameter)
  size_t total() const { return params + grads + optimizer + activations + master + workspace; }
};

// For one rank of a run of `config` on `device` (its dtypes: src/runtime/device.h; train.recompute decides the
// activations; with train.zero 1 and world_size > 1 the optimizer state and master weights are one shard).
MemoryEstimate estimate_training_memory(const Llama& model, const Config& config, const RunDevice& device,
                                        int world_size = 1);

// MemAvailable from /proc/meminfo in bytes; 0 when unknown.
size_t available_host_memory();

// UserError when the estimate exceeds the memory available now, naming what to change.
void check_fits_host_memory(const MemoryEstimate& estimate);
void check_fits_device_memory(const MemoryEstimate& estimate);

// The sizes the CUDA workspace is reserved for.
CudaWorkspaceShape workspace_shape(const Config& config, DType dtype);

}  // namespace l3c
