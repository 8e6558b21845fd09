// Learning-rate schedules: the lr at step s is a pure function of the config and s (s counts from 0).
//  - cosine:   linear warmup to lr over warmup_steps, then cosine decay to min_lr at the last step.
//  - wsd:      warmup, then constant lr, then a linear decay to min_lr over the last decay_fraction of steps.
//  - constant: warmup, then lr.
#pragma once
#include <cstdint>

#include "core/config.h"

namespace l3c {

double learning_rate(const TrainConfig& train, int64_t step);

}  // namespace l3c
