// Evaluation during training (see during_training.h).
#include "eval/during_training.h"

#include <spdlog/spdlog.h>

#include "core/errors.h"
#include "data/prepare.h"

namespace l3c {

namespace {
constexpr int64_t kBatchTokens = 4096;
}

TrainingEvaluator::TrainingEvaluator(const Config& config) : config_(config) {
  const EvalConfig& eval = config.eval;
  if (eval.tasks.empty() && eval.text.empty()) return;
  tokenizer_ = load_data_tokenizer(config.data.tokenizer, config.model.vocab_size);
  try {
    for (const std::string& name : eval.tasks) {
      tasks_.push_back(find_task(name, eval.tasks_dir));
      load_task_examples(tasks_.back(), eval.limit);
    }
  } catch (const UserError& e) {
    fail("eval.tasks: {}", e.what());
  }
  try {
    if (!eval.text.empty())
      corpus_ = read_text_corpus(eval.text, *tokenizer_, config.model.vocab_size, eval.text_max_bytes);
  } catch (const UserError& e) {
    fail("eval.text: {}", e.what());
  }
}

nlohmann::ordered_json TrainingEvaluator::run(const Llama& model, const FlatBuffer& params) const {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  if (!enabled()) return out;
  const int64_t T = config_.data.seq_len;
  Scorer scorer(model, params, std::max(kBatchTokens, T + 1));
  if (!tasks_.empty()) {
    nlohmann::ordered_json tasks = nlohmann::ordered_json::object();
    for (const TaskSpec& task : tasks_) {
      const TaskResult r = evaluate_task(scorer, *tokenizer_, task, {T, config_.eval.limit, /*progress=*/false});
      tasks[task.name] = r.to_json();
      spdlog::info("  {}: acc {:.4f} ± {:.4f} ({} examples, {:.1f}s)", task.name, r.acc, r.acc_stderr, r.examples,
                   r.seconds);
    }
    out["tasks"] = tasks;
  }
  if (!corpus_.documents.empty()) {
    const TextResult text = evaluate_text(scorer, corpus_, {T, 0, config_.eval.text_max_bytes, /*progress=*/false});
    nlohmann::ordered_json j = text.to_json();
    j.erase("files");
    out["text"] = j;
    spdlog::info("  held-out text: loss {:.4f} | ppl {:.3f} | {:.4f} bits per byte ({} tokens, {:.1f}s)", text.loss(),
                 text.perplexity(), text.bits_per_byte(), text.tokens, text.seconds);
  }
  return out;
}

}  // namespace l3c
