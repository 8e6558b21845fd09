// Scoring token sequences with a trained model, batched: the engine under every evaluation (held-out text, zero-shot
// tasks, the logit lens, the validation loss of shards).
//
// A request is one sequence of tokens and the position from which its tokens are scored: each scored token gets
// log p(token | the tokens before it in the sequence) and whether it was the model's most likely token. Requests are
// sorted by length and packed into batches of at most `batch_tokens` tokens (rows x padded length), padded on the
// right (causal attention, per-position L3 lookups and per-token MoE routing keep padding out of the real positions),
// and run through the model's inference forward (Llama::forward_hidden: no backward state). The output projection is
// applied to the scored positions alone, in blocks of rows; log-softmax and argmax are taken in double on the host.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "eval/progress.h"
#include "kernels/arena.h"
#include "model/llama.h"
#include "model/params.h"
#include "runtime/device.h"
#include "runtime/model_dir.h"

namespace l3c {

// A trained model ready to evaluate: loaded from a run or checkpoint folder, its parameters on the device asked for
// (auto: the GPU when there is one), in the saved precision (f32, or f64 on the CPU).
struct EvalModel {
  std::string dir;
  LoadedModel loaded;
  RunDevice device;
  FlatBuffer device_params;  // the parameters on the GPU (empty on the CPU)
  int64_t batch_tokens = 0;  // what the scorer is sized for: the batch asked for, at least one window (seq_len + 1)

  EvalModel(const std::string& dir, DeviceChoice device, int64_t batch_tokens);
  const Llama& model() const { return *loaded.model; }
  const FlatBuffer& params() const { return device.device == Device::CUDA ? device_params : loaded.params; }
  const Config& config() const { return loaded.config; }
};

struct ScoreRequest {
  std::vector<int32_t> tokens;  // the sequence, at most seq_len + 1 tokens
  int64_t first_scored = 1;     // tokens[first_scored ..] are scored (>= 1: the first token has no prediction)
};

struct SequenceScore {
  double log_prob = 0.0;  // sum of log p(token | the tokens before it) over the scored tokens (natural log)
  bool greedy = true;     // every scored token was the most likely one (ties: the lowest id is the most likely)
  int64_t tokens = 0;     // scored tokens
};

// Where the logit lens reads the residual stream: after decoder layer `layer`, or after the L3 layer that follows it.
struct LensPoint {
  int64_t layer = 0;
  bool after_l3 = false;
  std::string name() const;  // "layer 3", "L3 after layer 3"
};

struct LensTotals {
  std::vector<LensPoint> points;     // in model order; the last is the final residual stream (its KL is 0)
  std::vector<double> kl_sum;        // per point: sum over scored positions of KL(final || lens at the point), nats
  std::vector<double> agree_sum;     // per point: positions whose most likely token is the final's
  int64_t positions = 0;
};

class Scorer {
 public:
  // The model and params (on the model's device) must outlive the scorer. batch_tokens >= seq_len + 1.
  Scorer(const Llama& model, const FlatBuffer& params, int64_t batch_tokens);

  // One score per request, in request order. progress(done, total) counts requests.
  std::vector<SequenceScore> score(const std::vector<ScoreRequest>& requests, const EvalProgressFn& progress = {});
  // The logit lens over the scored positions of the requests: at every LensPoint, the KL divergence from the final
  // distribution to the one the final norm and output projection give on the residual stream there.
  LensTotals lens(const std::vector<ScoreRequest>& requests, const EvalProgressFn& progress = {});

  int64_t batch_tokens() const { return batch_tokens_; }

 private:
  struct Batch;
  // Packs requests (sorted longest first) into batches and runs each through forward_hidden; for each batch,
  // `consume` receives the batch, the final hidden states and the indices of the scored rows.
  template <typename Consume>
  void run_batches(const std::vector<ScoreRequest>& requests, const EvalProgressFn& progress, bool lens,
                   Consume&& consume);
  // Rows of logits (rows, V) brought to the host as doubles (f32 read directly on the CPU).
  const double* host_logits(Tensor logits);

  const Llama& model_;
  const FlatBuffer& params_;
  int64_t batch_tokens_;
  int64_t block_rows_;  // rows of logits computed at once
  Arena arena_;
  std::vector<double> host_block_;
  std::vector<float> host_f32_;
};

}  // namespace l3c
