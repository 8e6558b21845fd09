// Choosing the next token from a row of logits: greedy (temperature 0), or a draw at a temperature from the
// top-k and/or top-p (nucleus) candidates. Draws come from the counter-based generator keyed by (seed, sequence,
// step), so a sequence gets the same tokens whether it is generated alone or in a batch, in any order.
#pragma once
#include <cstdint>
#include <span>

namespace l3c {

struct SamplingOptions {
  double temperature = 0.8;  // 0: greedy (the largest logit; ties to the lower id)
  int64_t top_k = 0;         // > 0: only the k largest logits are candidates
  double top_p = 1.0;        // in (0, 1]: only the most probable candidates whose probabilities reach top_p
  uint64_t seed = 1;
};

// UserError naming the option when a value is outside its range (temperature >= 0, top_k >= 0, top_p in (0, 1]).
void validate_sampling(const SamplingOptions& options);

class Sampler {
 public:
  // Ids at or past vocab_limit (a vocabulary padded past the tokenizer's) are never chosen.
  Sampler(const SamplingOptions& options, int64_t vocab_limit);
  // The token for draw `step` of sequence `sequence`, from its logits (at least vocab_limit values).
  int32_t sample(std::span<const float> logits, uint64_t sequence, uint64_t step) const;

 private:
  SamplingOptions options_;
  int64_t vocab_limit_;
};

}  // namespace l3c
