// Memory estimate and checks.
#include "runtime/memory.h"

#include <algorithm>
#include <fstream>
#include <string>

#include "core/errors.h"
#include "kernels/arena.h"

namespace l3c {

size_t available_host_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

namespace {
std::string breakdown(const MemoryEstimate& m) {
  auto b = [](size_t bytes) { return format_bytes(static_cast<double>(bytes)); };
  std::string text = "parameters " + b(m.params) + ", gradients " + b(m.grads) + ", optimizer " + b(m.optimizer) +
                     ", activations " + b(m.activations);
  if (m.master) text += ", f32 master weights " + b(m.master);
  if (m.workspace) text += ", workspace " + b(m.workspace);
  return text;
}
}  // namespace

CudaWorkspaceShape workspace_shape(const Config& config, DType dtype) {
  CudaWorkspaceShape w;
  w.rows = config.train.micro_batch * config.data.seq_len;
  w.seq_len = config.data.seq_len;
  w.head_dim = config.model.head_dim();
  w.vocab = config.model.vocab_size;
  w.widest_norm = std::max(config.model.d_model, config.model.l3.enabled() ? config.model.l3.d_up : int64_t{0});
  w.l3_width = config.model.l3.enabled() ? config.model.l3.k : 0;
  w.moe_experts = config.model.moe.enabled() ? config.model.moe.experts : 0;
  w.moe_top_k = config.model.moe.enabled() ? config.model.moe.top_k : 0;
  w.dtype = dtype;
  return w;
}

MemoryEstimate estimate_training_memory(const Llama& model, const Config& config, const RunDevice& device,
                                        int world_size) {
  const bool bf16 = device.mixed_precision;
  const DType dtype = device.param_dtype;
  const size_t element = dtype_size(dtype), moment = dtype_size(device.moment_dtype);
  const size_t grad = dtype_size(device.grad_dtype);  // f32 with bf16 parameters
  const auto n = static_cast<size_t>(model.registry().total());
  Llama sized = model;  // with the run's recomputation setting
  sized.set_recompute(Recompute::from(config.train.recompute));
  MemoryEstimate m;
  m.device = device.device;
  m.params = n * element;
  m.grads = n * grad;
  m.grad_element = grad;
  m.optimizer = 2 * n * moment;
  m.master = bf16 ? n * sizeof(float) : 0;
  if (config.train.zero == 1 && world_size > 1) {
    // ZeRO-1: moments and master weights of one shard; the summed gradients of the shard beside the full ones.
    const size_t shard = (n + static_cast<size_t>(world_size) - 1) / static_cast<size_t>(world_size);
    m.optimizer = 2 * shard * moment;
    m.master = bf16 ? shard * sizeof(float) : 0;
    m.grads += shard * grad;
  }
  m.activations = sized.activation_bytes(config.train.micro_batch, config.data.seq_len, dtype, true);
  m.workspace = device.device == Device::CUDA ? cuda_workspace_bytes(workspace_shape(config, dtype)) : 0;
  return m;
}

void check_fits_host_memory(const MemoryEstimate& m) {
  const size_t available = available_host_memory();
  if (available != 0 && m.total() > available)
    fail("the run needs {} of memory ({}) but only {} is available; lower train.micro_batch or data.seq_len, set "
         "train.recompute, or choose a smaller model",
         format_bytes(static_cast<double>(m.total())), breakdown(m), format_bytes(static_cast<double>(available)));
}

void check_fits_device_memory(const MemoryEstimate& m) {
  const auto [free_bytes, total_bytes] = cuda_memory_info();
  if (m.total() > free_bytes)
    fail("the run needs {} of memory on the GPU ({}) but only {} of the GPU's {} is free; lower train.micro_batch or "
         "data.seq_len, set train.recompute (swiglu, attention or all), use train.precision bf16, or choose a "
         "smaller model",
         format_bytes(static_cast<double>(m.total())), breakdown(m), format_bytes(static_cast<double>(free_bytes)),
         format_bytes(static_cast<double>(total_bytes)));
}

}  // namespace l3c
