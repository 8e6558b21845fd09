// Validation loss of token shards through the scorer.
#include "eval/loss.h"

#include <algorithm>
#include <vector>

#include "eval/scorer.h"

namespace l3c {

double evaluate_loss(const Llama& model, const FlatBuffer& params, const WindowLoader& loader, int64_t micro_batch,
                     int64_t batches, int64_t rank, int64_t ranks) {
  const int64_t T = loader.seq_len();
  const int64_t windows = batches == 0 ? loader.num_windows() : std::min(batches * micro_batch, loader.num_windows());
  Scorer scorer(model, params, micro_batch * T);
  std::vector<int32_t> tokens(static_cast<size_t>(micro_batch * T)), targets(tokens.size());
  double log_prob = 0.0;
  for (int64_t first = rank * micro_batch; first < windows; first += ranks * micro_batch) {
    const int64_t B = std::min(micro_batch, windows - first);
    loader.fill(first, Tensor(tokens.data(), DType::I32, {B, T}), Tensor(targets.data(), DType::I32, {B, T}));
    // A window is its T inputs and the target after the last: every one of its T targets is scored.
    std::vector<ScoreRequest> requests(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      requests[b].tokens.assign(tokens.begin() + b * T, tokens.begin() + (b + 1) * T);
      requests[b].tokens.push_back(targets[(b + 1) * T - 1]);
    }
    for (const SequenceScore& s : scorer.score(requests)) log_prob += s.log_prob;
  }
  // Every window scores its T targets.
  return -log_prob / static_cast<double>(std::max<int64_t>(windows * T, 1));
}

}  // namespace l3c
