// Memory a training run needs on the host: parameters, gradients, AdamW moments and the activation
// arena of one micro-batch. `inspect` prints it; training checks it against the memory available
// before allocating anything.
#pragma once
#include <cstddef>

#include "core/config.h"
#include "model/llama.h"

namespace l3c {

struct MemoryEstimate {
  size_t params = 0, grads = 0, optimizer = 0, activations = 0;
  size_t total() const { return params + grads + optimizer + activations; }
};

MemoryEstimate estimate_training_memory(const Llama& model, const Config& config);

// UserError when the estimate exceeds the memory available now (MemAvailable), naming what to change.
void check_fits_host_memory(const MemoryEstimate& estimate);

}  // namespace l3c
