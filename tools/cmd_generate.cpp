// `l3c generate --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]`:
// samples a continuation of the prompt from a trained byte-level model.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "commands.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "train/model_io.h"
#include "train/perf.h"

namespace l3c::cmd {

int generate(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"checkpoint", "prompt", "tokens", "temperature", "top-k", "seed", "threads"}, {"json"}, 0, 0,
             "l3c generate --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]"});
  LoadedModel loaded = load_model_dir(args.require("checkpoint"));
  configure_threads(args.get_int("threads", loaded.config.train.threads, 0));
  const int64_t V = loaded.config.model.vocab_size, T = loaded.config.data.seq_len;
  if (V != ByteTokenizer::kVocabSize)
    fail("{}: model.vocab_size is {}; generate decodes byte-level models (vocab_size {}) only", args.require("checkpoint"),
         V, ByteTokenizer::kVocabSize);
  const int64_t new_tokens = args.get_int("tokens", 200, 1);
  const double temperature = args.get_double("temperature", 0.8);
  if (!(temperature >= 0.0)) fail("--temperature: must be >= 0, got {}", temperature);
  const int64_t top_k = args.get_int("top-k", 0, 0);
  const Philox rng(static_cast<uint64_t>(args.get_int("seed", 1, 0)), RngPurpose::Sample);

  const std::string prompt = args.get("prompt", "\n");
  const ByteTokenizer tokenizer;
  std::vector<uint32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) ids.push_back('\n');
  const DType dtype = loaded.params.dtype();
  Arena arena(loaded.model->activation_bytes(1, T, dtype, false), "activation");
  std::vector<double> logits_f64(static_cast<size_t>(T * V));
  std::vector<float> logits_f32(static_cast<size_t>(T * V));
  std::vector<int32_t> context(static_cast<size_t>(T));
  std::vector<double> probs(static_cast<size_t>(V));

  for (int64_t n = 0; n < new_tokens; ++n) {
    const int64_t length = std::min<int64_t>(static_cast<int64_t>(ids.size()), T);
    std::copy(ids.end() - length, ids.end(), context.begin());
    arena.reset();
    Tensor tokens(context.data(), DType::I32, {1, length});
    Tensor logits = dtype == DType::F64 ? Tensor(logits_f64.data(), dtype, {length, V}) : Tensor(logits_f32.data(), dtype, {length, V});
    loaded.model->forward_logits(loaded.params, tokens, logits, arena);
    for (int64_t v = 0; v < V; ++v)
      probs[v] = dtype == DType::F64 ? logits_f64[(length - 1) * V + v] : logits_f32[(length - 1) * V + v];
    uint32_t next = 0;
    if (temperature == 0.0) {
      next = static_cast<uint32_t>(std::max_element(probs.begin(), probs.end()) - probs.begin());
    } else {
      // Top-k filter, then softmax at the temperature, then inverse-CDF sampling.
      double cutoff = -INFINITY;
      if (top_k > 0 && top_k < V) {
        std::vector<double> sorted = probs;
        std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<>());
        cutoff = sorted[top_k - 1];
      }
      const double max_logit = *std::max_element(probs.begin(), probs.end());
      double total = 0.0;
      for (double& p : probs) {
        p = p < cutoff ? 0.0 : std::exp((p - max_logit) / temperature);
        total += p;
      }
      double u = rng.uniform(static_cast<uint64_t>(n)) * total;
      next = static_cast<uint32_t>(V - 1);
      for (int64_t v = 0; v < V; ++v) {
        u -= probs[v];
        if (u <= 0.0 && probs[v] > 0.0) {
          next = static_cast<uint32_t>(v);
          break;
        }
      }
    }
    ids.push_back(next);
  }
  const std::string text = tokenizer.decode(ids);
  if (args.flag("json")) {
    cli::print_json_line(nlohmann::json{{"prompt", prompt}, {"text", text}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  }
  return 0;
}

}  // namespace l3c::cmd
