// Learning-rate schedules.
#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace l3c {

double learning_rate(const TrainConfig& train, int64_t step) {
  const double lr = train.lr, min_lr = train.min_lr;
  if (step < train.warmup_steps) return lr * static_cast<double>(step + 1) / static_cast<double>(train.warmup_steps);
  if (train.schedule == Schedule::Constant) return lr;
  const int64_t last = std::max<int64_t>(train.steps - 1, 1);
  if (train.schedule == Schedule::Cosine) {
    const int64_t span = std::max<int64_t>(last - train.warmup_steps, 1);
    const double progress = std::clamp(static_cast<double>(step - train.warmup_steps) / static_cast<double>(span), 0.0, 1.0);
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
  }
  // wsd: the decay phase covers the last decay_fraction of all steps (at least one step).
  const int64_t decay_steps = std::max<int64_t>(static_cast<int64_t>(std::llround(train.decay_fraction * train.steps)), 1);
  const int64_t decay_start = std::max<int64_t>(train.steps - decay_steps, train.warmup_steps);
  if (step < decay_start) return lr;
  const int64_t span = std::max<int64_t>(last - decay_start, 1);
  const double progress = std::clamp(static_cast<double>(step - decay_start) / static_cast<double>(span), 0.0, 1.0);
  return lr + (min_lr - lr) * progress;
}

}  // namespace l3c
