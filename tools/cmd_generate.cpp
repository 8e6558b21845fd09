// `l3c generate --checkpoint DIR [--prompt TEXT | --prompts FILE] [--tokens N] [--temperature T] [--top-k K]
// [--top-p P] [--seed S] [--stop TEXT] [--batch B] [--l3-tables device|host|mmap] [--device D] [--precision P]
// [--tokenizer SPEC] [--threads N] [--json]`: samples continuations of prompts from a trained model through an
// inference session (src/infer/: KV cache, batched decoding, L3 tables on the device, in host memory or mapped from
// the checkpoint). Text is encoded and decoded with the run's tokenizer (data.tokenizer in the config), or the one
// --tokenizer names. With an end-of-text id, every context starts with it (training documents do) and a sequence
// stops when the model emits it. One prompt streams its text as it is generated; --prompts FILE (one prompt a line)
// decodes up to --batch prompts together and prints each continuation when it is complete, in file order.
#include <cstdio>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/errors.h"
#include "core/limits.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "infer/model.h"
#include "infer/session.h"
#include "kernels/arena.h"
#include "train/perf.h"
#include "cli.h"
#include "commands.h"
#include "infer_options.h"

namespace l3c::cmd {

namespace {

std::vector<std::string> read_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("--prompts {}: cannot open", path);
  std::vector<std::string> prompts;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    prompts.push_back(line);
  }
  if (prompts.empty()) fail("--prompts {}: no prompts (the file is empty; one prompt a line)", path);
  return prompts;
}

}  // namespace

int generate(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"checkpoint", "prompt", "prompts", "tokens", "temperature", "top-k", "top-p", "seed", "stop", "batch",
              "threads", "tokenizer", "l3-tables", "device", "precision"},
             {"json"},
             0,
             0,
             "l3c generate --checkpoint DIR [--prompt TEXT | --prompts FILE] [--tokens N] [--temperature T] [--top-k K]\n"
             "             [--top-p P] [--seed S] [--stop TEXT] [--batch B] [--l3-tables device|host|mmap]\n"
             "             [--device cpu|cuda|auto] [--precision fp32|bf16] [--tokenizer SPEC] [--threads N] [--json]"});
  const std::string checkpoint = args.require("checkpoint");
  if (args.has("prompt") && args.has("prompts")) fail("--prompt and --prompts: give one or the other");
  GenerationOptions options;
  options.max_new_tokens = args.get_int("tokens", 200, 1);
  options.sampling.temperature = args.get_double("temperature", 0.8);
  options.sampling.top_k = args.get_int("top-k", 0, 0);
  options.sampling.top_p = args.get_double("top-p", 1.0);
  options.sampling.seed = static_cast<uint64_t>(args.get_int("seed", 1, 0));
  validate_sampling(options.sampling);
  const std::string stop = args.get("stop", "");
  const std::vector<std::string> texts = args.has("prompts") ? read_prompts(args.get("prompts", "")) : std::vector<std::string>{};
  const InferenceOptions inference = inference_options(args);

  std::unique_ptr<InferenceModel> model = InferenceModel::load(checkpoint, inference);
  configure_threads(args.get_int("threads", model->config().train.threads, 0));
  const int64_t V = model->model_config().vocab_size;
  std::unique_ptr<Tokenizer> tokenizer;
  const std::string spec = args.get("tokenizer", model->config().data.tokenizer);
  try {
    tokenizer = load_tokenizer(spec);
  } catch (const UserError& e) {
    if (args.has("tokenizer")) throw;
    fail("{}: the model's tokenizer (data.tokenizer) cannot be loaded: {}; run from the folder the run was trained in, "
         "or pass --tokenizer DIR",
         checkpoint, e.what());
  }
  // Ids past the tokenizer's vocabulary (a padded model.vocab_size) are never sampled.
  options.vocab_limit = tokenizer->vocab_size();
  if (options.vocab_limit > V)
    fail("tokenizer {} has {} ids but the model's vocabulary (model.vocab_size) is {}: not the run's tokenizer",
         tokenizer->description(), options.vocab_limit, V);
  const std::optional<uint32_t> eot = tokenizer->eot_id();
  if (eot) options.end_of_text = static_cast<int32_t>(*eot);

  // Prompts as token ids, each starting with end-of-text when the vocabulary has one (as training documents do).
  const std::vector<std::string> prompt_texts = texts.empty() ? std::vector<std::string>{args.get("prompt", eot ? "" : "\n")} : texts;
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : prompt_texts) {
    std::vector<int32_t> ids;
    if (eot) ids.push_back(static_cast<int32_t>(*eot));
    for (uint32_t id : tokenizer->encode(text)) ids.push_back(static_cast<int32_t>(id));
    if (ids.empty())
      for (uint32_t id : tokenizer->encode("\n")) ids.push_back(static_cast<int32_t>(id));
    prompts.push_back(std::move(ids));
  }
  const int64_t context = model->config().data.seq_len;
  for (size_t p = 0; p < prompts.size(); ++p)
    if (static_cast<int64_t>(prompts[p].size()) >= context)
      fail("{} is {} tokens long: the model's context (data.seq_len) is {} positions, so a prompt may have at most {}",
           texts.empty() ? std::string("the prompt") : fmt::format("prompt {} (line {})", p + 1, p + 1),
           prompts[p].size(), context, context - 1);

  const int64_t batch = std::min<int64_t>(args.get_int("batch", std::min<size_t>(prompts.size(), 8), 1),
                                          static_cast<int64_t>(prompts.size()));
  InferenceSession session(*model, {.max_batch = batch, .max_context = context});
  const SessionMemory& memory = session.memory();
  spdlog::info("generate: {} prompt{}, batch {}, {} on {} ({}), L3 tables {}: trunk {}, tables in memory {}, "
               "KV cache {}, activations {}",
               prompts.size(), prompts.size() == 1 ? "" : "s", batch, checkpoint, device_name(inference.device),
               dtype_name(inference.dtype), choice_name(inference.tables),
               format_bytes(static_cast<double>(memory.trunk)), format_bytes(static_cast<double>(memory.tables)),
               format_bytes(static_cast<double>(memory.kv_cache)), format_bytes(static_cast<double>(memory.activations)));

  // Text of each sequence so far; a stop string ends a sequence (and is cut from its text). One prompt without
  // --json streams its text as it comes.
  const bool stream = prompts.size() == 1 && !args.flag("json");
  std::vector<std::string> generated(prompts.size());
  size_t streamed = 0;
  const TokenCallback on_token = [&](size_t p, int32_t token) {
    const uint32_t id = static_cast<uint32_t>(token);
    generated[p] += tokenizer->decode(std::span<const uint32_t>(&id, 1));
    const size_t found = stop.empty() ? std::string::npos : generated[p].find(stop);
    if (found != std::string::npos) generated[p].resize(found);
    if (stream) {
      // Hold back a tail that could be the start of the stop string.
      const size_t hold = found == std::string::npos && !stop.empty() ? std::min(generated[p].size(), stop.size() - 1) : 0;
      const size_t ready = generated[p].size() - hold;
      if (ready > streamed) {
        std::fwrite(generated[p].data() + streamed, 1, ready - streamed, stdout);
        std::fflush(stdout);
        streamed = ready;
      }
    }
    return found == std::string::npos;
  };
  if (stream) {
    std::fwrite(prompt_texts[0].data(), 1, prompt_texts[0].size(), stdout);
    std::fflush(stdout);
  }
  GenerationStats stats;
  const std::vector<GeneratedSequence> results = generate(session, prompts, options, on_token, &stats);
  if (stream) {  // the rest of the text and its newline, before the log line on stderr
    std::fwrite(generated[0].data() + streamed, 1, generated[0].size() - streamed, stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }
  spdlog::info("generate: prefill {} tokens in {:.3f}s, decode {} tokens in {:.3f}s ({:.1f} tokens/s), L3 rows read "
               "{} per position",
               stats.prefill_tokens, stats.prefill_seconds, stats.decode_tokens, stats.decode_seconds,
               stats.decode_seconds > 0 ? static_cast<double>(stats.decode_tokens) / stats.decode_seconds : 0.0,
               format_bytes(session.positions_computed() > 0
                                ? static_cast<double>(session.l3_bytes_read()) / static_cast<double>(session.positions_computed())
                                : 0.0));
  if (stream) return 0;
  if (args.flag("json")) {
    nlohmann::json outputs = nlohmann::json::array();
    for (size_t p = 0; p < prompts.size(); ++p)
      outputs.push_back({{"prompt", prompt_texts[p]},
                         {"text", prompt_texts[p] + generated[p]},
                         {"prompt_tokens", prompts[p].size() - (eot ? 1 : 0)},
                         {"generated_tokens", results[p].tokens.size()},
                         {"stop_reason", stop_reason_name(results[p].reason)},
                         {"stopped_at_eot", results[p].reason == StopReason::EndOfText}});
    nlohmann::json line = texts.empty() ? outputs[0] : nlohmann::json{{"results", outputs}};
    line["tokenizer"] = tokenizer->description();
    cli::print_json_line(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return 0;
  }
  for (size_t p = 0; p < prompts.size(); ++p) {
    const std::string text = prompt_texts[p] + generated[p];
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  }
  return 0;
}

}  // namespace l3c::cmd
