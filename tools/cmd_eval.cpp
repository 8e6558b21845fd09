// `l3c eval --checkpoint DIR [--data SHARDS] [--text FILE_OR_FOLDER...] [--tasks LIST] [--lens] ...`: scores a
// trained model (src/eval): the validation loss of token shards, held-out text (loss, perplexity, bits per byte),
// zero-shot tasks (accuracy), the logit lens. Any of them in one call, with one model load; with --json one JSON
// object with a section per kind.
#include <cmath>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/limits.h"
#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "data/prepare.h"
#include "eval/lens.h"
#include "eval/loss.h"
#include "eval/scorer.h"
#include "eval/tasks.h"
#include "eval/text.h"
#include "train/perf.h"

namespace l3c::cmd {

namespace {
constexpr const char* kUsage =
    "l3c eval --checkpoint DIR [--device cpu|cuda|auto] [--threads N] [--batch-tokens N] [--tokenizer SPEC] [--json]\n"
    "         [--data SHARDS [--batches N (0: all)] [--micro-batch B]]\n"
    "         [--text FILE_OR_FOLDER... [--stride N] [--max-bytes N]]\n"
    "         [--tasks LIST|all [--tasks-dir DIR] [--limit N] [--details FILE.jsonl]]\n"
    "         [--lens [--lens-tokens N] [--plot FILE.png]]   (the lens reads the --text inputs)";
}  // namespace

int eval(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"checkpoint", "data", "batches", "micro-batch", "threads", "device", "text", "stride", "max-bytes", "tasks",
              "tasks-dir", "limit", "details", "lens-tokens", "plot", "batch-tokens", "tokenizer"},
             {"json", "lens"}, 0, 1 << 20, kUsage});
  const std::string dir = args.require("checkpoint");
  // --text takes several inputs: the arguments after it that are not options.
  std::vector<std::string> text_inputs;
  if (args.has("text")) text_inputs.push_back(args.get("text", ""));
  text_inputs.insert(text_inputs.end(), args.positional.begin(), args.positional.end());
  if (!args.has("text") && !args.positional.empty())
    fail("unexpected argument '{}' (text inputs follow --text)\nusage: {}", args.positional.front(), kUsage);
  const bool lens = args.flag("lens");
  if (lens && !args.has("text")) fail("--lens reads held-out text: give --text FILE_OR_FOLDER...");
  if (!args.has("data") && !args.has("text") && !args.has("tasks"))
    fail("nothing to evaluate: give --data, --text or --tasks (and --lens with --text)\nusage: {}", kUsage);
  if (args.has("plot") && !lens) fail("--plot draws the logit lens: add --lens");
  const DeviceChoice device = parse_choice<DeviceChoice>(args.get("device", "auto"), "--device");
  const int64_t batch_tokens_arg = args.get_int("batch-tokens", 4096, 2);
  const int64_t max_bytes = args.get_int("max-bytes", 0, 0);
  const int64_t limit = args.get_int("limit", 0, 0);
  const int64_t lens_tokens = args.get_int("lens-tokens", 16384, 0);
  const int64_t stride_arg = args.get_int("stride", 0, 0);
  const std::string tasks_dir = args.get("tasks-dir", "../shared/data/evals");

  // Everything about the model first: a bad checkpoint fails before any file is read.
  const auto model = std::make_unique<EvalModel>(dir, device, batch_tokens_arg);
  const Config& config = model->config();
  const int64_t T = config.data.seq_len, V = config.model.vocab_size;
  const int64_t batch_tokens = model->batch_tokens;
  if (stride_arg > T) fail("--stride: must be at most data.seq_len = {}, got {}", T, stride_arg);
  const int threads = configure_threads(args.get_int("threads", config.train.threads, 0));

  // Inputs are checked before the first forward pass.
  std::unique_ptr<Tokenizer> tokenizer;
  if (args.has("text") || args.has("tasks")) {
    const std::string spec = args.get("tokenizer", config.data.tokenizer);
    try {
      tokenizer = load_data_tokenizer(spec, V);
    } catch (const UserError& e) {
      if (args.has("tokenizer")) throw;
      fail("{}: the run's tokenizer (data.tokenizer = {}) cannot be loaded: {}; run from the folder the run was trained "
           "in, or pass --tokenizer DIR", dir, spec, e.what());
    }
  }
  std::vector<TaskSpec> tasks;
  if (args.has("tasks")) tasks = parse_task_list(args.get("tasks", ""), tasks_dir);
  for (const TaskSpec& task : tasks) load_task_examples(task, limit);  // format errors now, not after other tasks
  TextCorpus corpus;
  if (args.has("text")) corpus = read_text_corpus(text_inputs, *tokenizer, V, max_bytes);

  spdlog::info("eval: {} on {} ({} threads), batches of {} tokens{}", dir, model->device.description, threads,
               batch_tokens, tokenizer ? ", tokenizer " + tokenizer->description() : std::string());
  nlohmann::ordered_json out = {{"checkpoint", dir},
                                {"device", model->device.device == Device::CUDA ? "cuda" : "cpu"},
                                {"seq_len", T},
                                {"parameters", model->model().registry().total()}};
  if (tokenizer) out["tokenizer"] = {{"spec", tokenizer->description()}, {"checksum", tokenizer->checksum()}};
  std::optional<Scorer> scorer;  // for text, tasks and the lens (--data sizes its own by --micro-batch)
  if (args.has("text") || !tasks.empty()) scorer.emplace(model->model(), model->params(), batch_tokens);

  if (args.has("data")) {
    const int64_t micro_batch = args.get_int("micro-batch", config.train.micro_batch, 1);
    const int64_t batches = args.get_int("batches", 0, 0);
    const WindowLoader data(args.require("data"), "--data", T, V);
    const int64_t windows = batches == 0 ? data.num_windows() : std::min(batches * micro_batch, data.num_windows());
    const double loss = evaluate_loss(model->model(), model->params(), data, micro_batch, batches);
    spdlog::info("data: {} windows of {} tokens | loss {:.4f} | perplexity {:.3f}", windows, T, loss, std::exp(loss));
    out["data"] = {{"loss", loss}, {"perplexity", std::exp(loss)}, {"windows", windows}, {"tokens", windows * T}};
    // The keys `l3c eval --data --json` always had.
    out["loss"] = loss;
    out["perplexity"] = std::exp(loss);
    out["windows"] = windows;
    out["tokens"] = windows * T;
  }
  TextOptions text_options{T, stride_arg, max_bytes, true};
  if (args.has("text")) {
    const TextResult text = evaluate_text(*scorer, corpus, text_options);
    spdlog::info("text: {} tokens, {} bytes in {} files (windows of {}, stride {}) | loss {:.4f} | ppl {:.3f} | "
                 "{:.4f} bits per byte | {:.1f}s", text.tokens, text.bytes, text.files.size(), T, text.stride,
                 text.loss(), text.perplexity(), text.bits_per_byte(), text.seconds);
    out["text"] = text.to_json();
  }
  if (!tasks.empty()) {
    nlohmann::ordered_json tasks_json = nlohmann::ordered_json::object();
    std::ofstream details;
    if (args.has("details")) {
      details.open(args.get("details", ""));
      if (!details) fail("--details: cannot write {}", args.get("details", ""));
    }
    for (const TaskSpec& task : tasks) {
      const TaskResult r = evaluate_task(*scorer, *tokenizer, task, {T, limit, true});
      if (task.format == TaskFormat::LastWord)
        spdlog::info("{}: acc {:.4f} ± {:.4f} | ppl {:.3f} ± {:.3f} | {} examples in {:.1f}s ({:.1f}/s)", task.name, r.acc,
                     r.acc_stderr, r.ppl, r.ppl_stderr, r.examples, r.seconds, r.examples / std::max(r.seconds, 1e-9));
      else
        spdlog::info("{}: acc {:.4f} ± {:.4f} | acc_norm {:.4f} ± {:.4f} | {} examples in {:.1f}s ({:.1f}/s)", task.name,
                     r.acc, r.acc_stderr, r.acc_norm, r.acc_norm_stderr, r.examples, r.seconds,
                     r.examples / std::max(r.seconds, 1e-9));
      tasks_json[task.name] = r.to_json();
      if (details.is_open())
        for (const nlohmann::ordered_json& line : r.details()) details << line.dump() << "\n";
    }
    out["tasks"] = tasks_json;
  }
  if (lens) {
    const LensResult result = evaluate_lens(*scorer, corpus, text_options, lens_tokens);
    spdlog::info("{}", result.table());
    out["lens"] = result.to_json();
    if (args.has("plot")) {
      plot_lens(out["lens"], dir, args.get("plot", ""));
      spdlog::info("lens plot: {}", args.get("plot", ""));
    }
  }
  if (args.flag("json")) cli::print_json_line(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  return 0;
}

}  // namespace l3c::cmd
