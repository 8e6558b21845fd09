// Host memory estimate and check.
#include "train/memory.h"

#include <fstream>
#include <string>

#include "core/arena.h"
#include "core/errors.h"

namespace l3c {

namespace {
DType compute_dtype(const Config& config) { return config.train.dtype == "f64" ? DType::F64 : DType::F32; }

// MemAvailable from /proc/meminfo in bytes; 0 when unknown.
size_t available_host_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}
}  // namespace

MemoryEstimate estimate_training_memory(const Llama& model, const Config& config) {
  const size_t element = dtype_size(compute_dtype(config));
  const auto n = static_cast<size_t>(model.registry().total());
  MemoryEstimate m;
  m.params = n * element;
  m.grads = n * element;
  m.optimizer = 2 * n * element;
  m.activations = model.activation_bytes(config.train.micro_batch, config.data.seq_len, compute_dtype(config), true);
  return m;
}

void check_fits_host_memory(const MemoryEstimate& m) {
  const size_t available = available_host_memory();
  if (available != 0 && m.total() > available)
    fail("the run needs {} of memory (parameters {}, gradients {}, optimizer {}, activations {}) but only {} is "
         "available; lower train.micro_batch or data.seq_len, or choose a smaller model",
         format_bytes(static_cast<double>(m.total())), format_bytes(static_cast<double>(m.params)),
         format_bytes(static_cast<double>(m.grads)), format_bytes(static_cast<double>(m.optimizer)),
         format_bytes(static_cast<double>(m.activations)), format_bytes(static_cast<double>(available)));
}

}  // namespace l3c
