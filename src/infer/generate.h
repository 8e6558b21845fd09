// Generation over an inference session: prompts are prefilled into free slots and decoded together, one token per
// sequence per step (continuous batching: a slot freed by a finished sequence takes the next waiting prompt at once).
// A sequence longer than the context continues on a window of its last tokens (slide_context).
// Each new token is handed to a callback as it is produced, which is how `l3c generate` streams text and applies
// stop strings.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "infer/sampler.h"
#include "infer/session.h"

namespace l3c {

struct GenerationOptions {
  int64_t max_new_tokens = 200;
  SamplingOptions sampling;
  int64_t vocab_limit = 0;              // ids the sampler may choose: [0, vocab_limit); 0: the model's vocabulary
  std::optional<int32_t> end_of_text;   // stops a sequence when sampled (and is not part of its output)
  // A sequence that fills the context: true slides it (the slot is prefilled again with the last half of the
  // context, as a model trained on windows of that length reads them); false stops it (StopReason::Context).
  bool slide_context = true;
};

enum class StopReason { Length, EndOfText, Callback, Context };
const char* stop_reason_name(StopReason reason);

struct GeneratedSequence {
  std::vector<int32_t> tokens;  // the new tokens
  StopReason reason = StopReason::Length;
};

// Timings of a generation: prefill (prompt positions) and decode steps (one token for each active sequence).
struct GenerationStats {
  int64_t prefill_tokens = 0, decode_tokens = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
  std::vector<double> step_seconds;  // every decode step, in order
  int64_t max_batch_seen = 0;        // the most sequences decoded in one step
};

// Called with (prompt index, token) for each new token; returning false stops that sequence (StopReason::Callback;
// the token stays in its output).
using TokenCallback = std::function<bool(size_t prompt, int32_t token)>;

// Generates a continuation of every prompt (each non-empty and shorter than the session's context). The results
// are in prompt order; a sequence's tokens do not depend on the batch it was decoded in (sampling is keyed by the
// prompt's index).
std::vector<GeneratedSequence> generate(InferenceSession& session, const std::vector<std::vector<int32_t>>& prompts,
                                        const GenerationOptions& options, const TokenCallback& on_token = {},
                                        GenerationStats* stats = nullptr);

}  // namespace l3c
