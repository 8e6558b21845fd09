// `l3c generate --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]
// [--tokenizer SPEC]`: samples a continuation of the prompt from a trained model. Text is encoded and
// decoded with the run's tokenizer (data.tokenizer in DIR/config.json: "bytes" or a BPE folder), or the
// one --tokenizer names. With an end-of-text id, the context starts with it (training documents do) and
// sampling stops when the model emits it.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/limits.h"
#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "train/model_io.h"
#include "train/perf.h"

namespace l3c::cmd {

int generate(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"checkpoint", "prompt", "tokens", "temperature", "top-k", "seed", "threads", "tokenizer"}, {"json"}, 0, 0,
             "l3c generate --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
             "             [--tokenizer SPEC (default: the run's data.tokenizer)]"});
  const std::string checkpoint = args.require("checkpoint");
  LoadedModel loaded = load_model_dir(checkpoint);
  configure_threads(args.has("threads") ? args.get_int("threads", 0, 0)
                                         : std::min<int64_t>(loaded.config.train.threads, limits::max_threads()),
                    "--threads");
  const int64_t V = loaded.config.model.vocab_size, T = loaded.config.data.seq_len;
  std::unique_ptr<Tokenizer> tokenizer;
  const std::string spec = args.get("tokenizer", loaded.config.data.tokenizer);
  try {
    tokenizer = load_tokenizer(spec);
  } catch (const UserError& e) {
    if (args.has("tokenizer")) throw;
    fail("{}/config.json: data.tokenizer: {}; run from the folder the run was trained in, or pass --tokenizer DIR",
         checkpoint, e.what());
  }
  // Ids past the tokenizer's vocabulary (a padded model.vocab_size) are never sampled.
  const int64_t sample_vocab = tokenizer->vocab_size();
  if (sample_vocab > V)
    fail("tokenizer {} has {} ids but the model's vocabulary (model.vocab_size) is {}: not the run's tokenizer",
         tokenizer->description(), sample_vocab, V);
  const std::optional<uint32_t> eot = tokenizer->eot_id();
  const int64_t new_tokens = args.get_int("tokens", 200, 1, limits::kMaxSeqLen);
  const double temperature = args.get_double("temperature", 0.8);
  if (!(temperature >= 0.0)) fail("--temperature: must be >= 0, got {}", temperature);
  const int64_t top_k = args.get_int("top-k", 0, 0);
  const Philox rng(static_cast<uint64_t>(args.get_int("seed", 1, 0)), RngPurpose::Sample);

  const std::string prompt = args.get("prompt", eot ? "" : "\n");
  std::vector<uint32_t> ids;
  if (eot) ids.push_back(*eot);  // where every training document starts
  const size_t context_start = ids.size();
  for (uint32_t id : tokenizer->encode(prompt)) ids.push_back(id);
  if (ids.empty()) ids = tokenizer->encode("\n");
  const size_t prompt_end = ids.size();
  bool stopped_at_eot = false;
  const DType dtype = loaded.params.dtype();
  Arena arena(loaded.model->activation_bytes(1, T, dtype, false), "activation");
  std::vector<double> logits_f64(static_cast<size_t>(T * V));
  std::vector<float> logits_f32(static_cast<size_t>(T * V));
  std::vector<int32_t> context(static_cast<size_t>(T));
  std::vector<double> probs(static_cast<size_t>(V));
  // Without --json the text appears as it is sampled: the prompt first, then each token's bytes.
  const bool stream = !args.flag("json");
  auto show = [](const std::string& bytes) {
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
  };
  if (stream) show(tokenizer->decode(std::span<const uint32_t>(ids).subspan(context_start)));

  for (int64_t n = 0; n < new_tokens; ++n) {
    const int64_t length = std::min<int64_t>(static_cast<int64_t>(ids.size()), T);
    std::copy(ids.end() - length, ids.end(), context.begin());
    arena.reset();
    Tensor tokens(context.data(), DType::I32, {1, length});
    Tensor logits = dtype == DType::F64 ? Tensor(logits_f64.data(), dtype, {length, V}) : Tensor(logits_f32.data(), dtype, {length, V});
    loaded.model->forward_logits(loaded.params, tokens, logits, arena);
    probs.resize(static_cast<size_t>(sample_vocab));
    for (int64_t v = 0; v < sample_vocab; ++v)
      probs[v] = dtype == DType::F64 ? logits_f64[(length - 1) * V + v] : logits_f32[(length - 1) * V + v];
    uint32_t next = 0;
    if (temperature == 0.0) {
      next = static_cast<uint32_t>(std::max_element(probs.begin(), probs.end()) - probs.begin());
    } else {
      // Top-k filter, then softmax at the temperature, then inverse-CDF sampling.
      double cutoff = -INFINITY;
      if (top_k > 0 && top_k < sample_vocab) {
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
      next = static_cast<uint32_t>(sample_vocab - 1);
      for (int64_t v = 0; v < sample_vocab; ++v) {
        u -= probs[v];
        if (u <= 0.0 && probs[v] > 0.0) {
          next = static_cast<uint32_t>(v);
          break;
        }
      }
    }
    if (eot && next == *eot) {
      stopped_at_eot = true;
      break;
    }
    ids.push_back(next);
    if (stream) show(tokenizer->decode(std::span<const uint32_t>(&next, 1)));
  }
  const std::string text = tokenizer->decode(std::span<const uint32_t>(ids).subspan(context_start));
  if (args.flag("json")) {
    cli::print_json_line(nlohmann::json{{"prompt", prompt},
                                        {"text", text},
                                        {"prompt_tokens", prompt_end - context_start},
                                        {"generated_tokens", ids.size() - prompt_end},
                                        {"tokenizer", tokenizer->description()},
                                        {"stopped_at_eot", stopped_at_eot}}
                             .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    show("\n");
  }
  return 0;
}

}  // namespace l3c::cmd
