// The validation loss of token shards: what training reports as val_loss and `l3c eval --data` prints.
#pragma once
#include <cstdint>

#include "data/dataloader.h"
#include "model/llama.h"
#include "model/params.h"

namespace l3c {

// Mean cross-entropy (nats per token) over the windows of `batches` micro-batches of B sequences from the start of
// `loader` (all windows when batches is 0), by the inference forward (src/eval/scorer.h), on the model's device.
// Split over `ranks`: rank r scores micro-batches r, r + ranks, ... and returns its summed loss divided by the
// tokens of all ranks, so that the sum over ranks is the mean.
double evaluate_loss(const Llama& model, const FlatBuffer& params, const WindowLoader& loader, int64_t micro_batch,
                     int64_t batches, int64_t rank = 0, int64_t ranks = 1);

}  // namespace l3c
