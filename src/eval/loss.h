// The validation loss of token shards: what training reports as val_loss and `l3c eval --data` prints.
#pragma once
#include <cstdint>

#include "data/dataloader.h"
#include "model/llama.h"
#include "model/params.h"

namespace l3c {

// Mean cross-entropy (nats per token) over the windows of `batches` micro-batches of B sequences from the start of
// `loader` (all windows when batches is 0), by the inference forward (src/eval/scorer.h), on the model's device.
double evaluate_loss(const Llama& model, const FlatBuffer& params, const WindowLoader& loader, int64_t micro_batch,
                     int64_t batches);

}  // namespace l3c
