// Continuous batching over the session's slots.
#include "infer/generate.h"

#include <algorithm>
#include <chrono>

#include "core/errors.h"

namespace l3c {

const char* stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::Length: return "length";
    case StopReason::EndOfText: return "end_of_text";
    case StopReason::Callback: return "stop_string";
    case StopReason::Context: return "context";
  }
  return "?";
}

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

std::vector<GeneratedSequence> generate(InferenceSession& session, const std::vector<std::vector<int32_t>>& prompts,
                                        const GenerationOptions& options, const TokenCallback& on_token,
                                        GenerationStats* stats) {
  const int64_t V = session.vocab_size();
  const Sampler sampler(options.sampling, options.vocab_limit > 0 ? options.vocab_limit : V);
  GenerationStats local;
  GenerationStats& st = stats != nullptr ? *stats : local;
  std::vector<GeneratedSequence> results(prompts.size());
  for (size_t p = 0; p < prompts.size(); ++p) {
    if (prompts[p].empty()) fail("prompt {} is empty: at least one token is needed", p + 1);
    if (static_cast<int64_t>(prompts[p].size()) >= session.max_context())
      fail("prompt {} has {} tokens: the context holds {} positions, so a prompt may have at most {}", p + 1,
           prompts[p].size(), session.max_context(), session.max_context() - 1);
  }
  struct Active {
    size_t prompt;
    int32_t slot;
    int32_t last;  // the token to feed next
  };
  std::vector<Active> active;
  std::vector<int32_t> free_slots;
  for (int64_t s = session.max_batch() - 1; s >= 0; --s) free_slots.push_back(static_cast<int32_t>(s));
  std::vector<float> logits(static_cast<size_t>(session.max_batch() * V));
  std::vector<float> window_logits(static_cast<size_t>(V));  // a slid window's prefill: its logits are not used
  size_t next_prompt = 0;

  // Takes a sampled token for sequence `a`; returns whether it continues.
  auto accept = [&](const Active& a, int32_t token) {
    GeneratedSequence& out = results[a.prompt];
    if (options.end_of_text && token == *options.end_of_text) {
      out.reason = StopReason::EndOfText;
      return false;
    }
    out.tokens.push_back(token);
    if (on_token && !on_token(a.prompt, token)) {
      out.reason = StopReason::Callback;
      return false;
    }
    if (static_cast<int64_t>(out.tokens.size()) >= options.max_new_tokens) {
      out.reason = StopReason::Length;
      return false;
    }
    if (session.length(a.slot) >= session.max_context()) {  // no room for this token's position
      if (!options.slide_context) {
        out.reason = StopReason::Context;
        return false;
      }
      // Continue on the last half of the context: the tokens already cached, without the one to feed next.
      std::vector<int32_t> history = prompts[a.prompt];
      history.insert(history.end(), out.tokens.begin(), out.tokens.end() - 1);
      const size_t keep = static_cast<size_t>(std::max<int64_t>(session.max_context() / 2, 1));
      const std::vector<int32_t> window(history.end() - static_cast<std::ptrdiff_t>(keep), history.end());
      const auto start = std::chrono::steady_clock::now();
      session.reset(a.slot);
      session.prefill(a.slot, window, std::span<float>(window_logits));
      st.prefill_seconds += seconds_since(start);
      st.prefill_tokens += static_cast<int64_t>(keep);
    }
    return true;
  };

  while (next_prompt < prompts.size() || !active.empty()) {
    // Fill free slots with waiting prompts: prefill, then the first new token from the prompt's last logits.
    while (!free_slots.empty() && next_prompt < prompts.size()) {
      const Active a{next_prompt++, free_slots.back(), 0};
      free_slots.pop_back();
      session.reset(a.slot);
      const auto start = std::chrono::steady_clock::now();
      const std::span<float> row(logits.data(), static_cast<size_t>(V));
      session.prefill(a.slot, prompts[a.prompt], row);
      st.prefill_seconds += seconds_since(start);
      st.prefill_tokens += static_cast<int64_t>(prompts[a.prompt].size());
      if (options.max_new_tokens <= 0) {
        free_slots.push_back(a.slot);
        continue;
      }
      const int32_t token = sampler.sample(row, a.prompt, 0);
      if (accept(a, token)) active.push_back({a.prompt, a.slot, token});
      else free_slots.push_back(a.slot);
    }
    if (active.empty()) continue;
    // One decode step for every active sequence.
    std::vector<int32_t> slots, tokens;
    for (const Active& a : active) {
      slots.push_back(a.slot);
      tokens.push_back(a.last);
    }
    const int64_t B = static_cast<int64_t>(active.size());
    const auto start = std::chrono::steady_clock::now();
    session.decode(slots, tokens, std::span<float>(logits.data(), static_cast<size_t>(B * V)));
    std::vector<Active> still;
    for (int64_t b = 0; b < B; ++b) {
      Active a = active[b];
      const std::span<const float> row(logits.data() + b * V, static_cast<size_t>(V));
      const int32_t token = sampler.sample(row, a.prompt, results[a.prompt].tokens.size());
      if (accept(a, token)) {
        a.last = token;
        still.push_back(a);
      } else {
        free_slots.push_back(a.slot);
      }
    }
    // A step's time includes choosing its tokens (and the callbacks).
    const double seconds = seconds_since(start);
    st.decode_seconds += seconds;
    st.step_seconds.push_back(seconds);
    st.decode_tokens += B;
    st.max_batch_seen = std::max(st.max_batch_seen, B);
    active = std::move(still);
  }
  return results;
}

}  // namespace l3c
