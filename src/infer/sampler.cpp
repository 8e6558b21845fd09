// Greedy, temperature, top-k and top-p sampling.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/errors.h"
#include "core/rng.h"

namespace l3c {

void validate_sampling(const SamplingOptions& options) {
  if (!(options.temperature >= 0.0) || !std::isfinite(options.temperature))
    fail("--temperature: must be >= 0, got {}", options.temperature);
  if (options.top_k < 0) fail("--top-k: must be >= 0, got {}", options.top_k);
  if (!(options.top_p > 0.0 && options.top_p <= 1.0)) fail("--top-p: must be in (0, 1], got {}", options.top_p);
}

Sampler::Sampler(const SamplingOptions& options, int64_t vocab_limit) : options_(options), vocab_limit_(vocab_limit) {
  validate_sampling(options);
  L3C_CHECK(vocab_limit >= 1, "Sampler: vocabulary of {} ids", vocab_limit);
}

int32_t Sampler::sample(std::span<const float> logits, uint64_t sequence, uint64_t step) const {
  L3C_CHECK(static_cast<int64_t>(logits.size()) >= vocab_limit_, "Sampler: {} logits for {} ids", logits.size(),
            vocab_limit_);
  const std::span<const float> scores = logits.first(static_cast<size_t>(vocab_limit_));
  if (options_.temperature == 0.0)
    return static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
  const Philox rng(options_.seed, RngPurpose::Sample, sequence);
  if (options_.top_k == 0 && options_.top_p >= 1.0) {  // every id a candidate: no ordering needed
    const double max_logit = *std::max_element(scores.begin(), scores.end());
    std::vector<double> weights(scores.size());
    double total = 0.0;
    for (size_t i = 0; i < scores.size(); ++i)
      total += weights[i] = std::exp((static_cast<double>(scores[i]) - max_logit) / options_.temperature);
    double u = rng.uniform(step) * total;
    for (size_t i = 0; i < scores.size(); ++i) {
      u -= weights[i];
      if (u <= 0.0 && weights[i] > 0.0) return static_cast<int32_t>(i);
    }
    return static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
  }
  // Candidates by descending logit (ties: lower id first), cut to top_k.
  std::vector<int32_t> ids(scores.size());
  std::iota(ids.begin(), ids.end(), 0);
  const auto before = [&](int32_t a, int32_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
  size_t kept = ids.size();
  if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < kept) {
    kept = static_cast<size_t>(options_.top_k);
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(kept), ids.end(), before);
  } else {
    std::sort(ids.begin(), ids.end(), before);
  }
  // Softmax at the temperature over the candidates, in double.
  std::vector<double> probs(kept);
  const double max_logit = scores[ids[0]];
  double total = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    probs[i] = std::exp((static_cast<double>(scores[ids[i]]) - max_logit) / options_.temperature);
    total += probs[i];
  }
  // Top-p: the shortest prefix whose probability reaches top_p (at least one candidate).
  if (options_.top_p < 1.0) {
    double cumulative = 0.0;
    size_t prefix = 0;
    while (prefix < kept) {
      cumulative += probs[prefix++] / total;
      if (cumulative >= options_.top_p) break;
    }
    kept = prefix;
    total = std::accumulate(probs.begin(), probs.begin() + static_cast<std::ptrdiff_t>(kept), 0.0);
  }
  double u = rng.uniform(step) * total;
  for (size_t i = 0; i < kept; ++i) {
    u -= probs[i];
    if (u <= 0.0) return ids[i];
  }
  return ids[kept - 1];
}

}  // namespace l3c
