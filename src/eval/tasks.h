// Zero-shot tasks scored by log-likelihood, with lm-evaluation-harness's conventions.
//
// Formats (../shared/data/SOURCES.md), one JSON object per line:
//  - MultipleChoice {query, choices[], gold}: ARC-Easy/Challenge, PIQA, OpenBookQA, COPA. The context is the query
//    plus the task's answer prompt (ARC: "\nAnswer:", PIQA: "Answer:" after the query's own newline, the others
//    none), each continuation " " + choice.
//  - PartialContext {context_options[], continuation, gold}: Winogrande. Each option is a context; the shared
//    continuation " " + continuation is scored after each.
//  - LastWord {context, continuation}: LAMBADA. The continuation " " + continuation is scored once; the example is
//    right when every one of its tokens is the model's greedy prediction.
// The context (preceded by the end-of-text id when the tokenizer has one, as training documents are) and each
// continuation are tokenized separately; the sequence context + continuation is cut from the left to seq_len + 1
// tokens. A choice's score is the summed log-likelihood of its continuation's tokens. acc takes the best score,
// acc_norm the best score divided by the continuation's length in UTF-8 bytes (ties: the first choice); both with
// the standard error of the mean, sqrt(p (1 - p) / (n - 1)). LAMBADA reports acc and the perplexity
// exp(-mean over examples of the continuation's log-likelihood), its standard error by the delta method.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/choice.h"
#include "data/tokenizer.h"
#include "eval/scorer.h"

namespace l3c {

enum class TaskFormat { MultipleChoice, PartialContext, LastWord };
template <> struct ChoiceNames<TaskFormat> {  // as results.json spells them
  static constexpr std::array<std::string_view, 3> names = {"multiple_choice", "partial_context", "last_word"};
};

struct TaskSpec {
  std::string name;
  std::string file;         // path of the .jsonl file
  TaskFormat format = TaskFormat::MultipleChoice;
  std::string answer_prompt;  // appended to a MultipleChoice query
};

// The tasks this build knows by name: arc_easy, arc_challenge, piqa, openbook_qa, copa, winogrande, lambada
// (= lambada_openai).
std::vector<std::string> known_task_names();
// A task by name: a known task's file in tasks_dir, or tasks_dir/NAME.jsonl with its format told by the fields of
// its first line. UserError for an unknown name without such a file.
TaskSpec find_task(const std::string& name, const std::string& tasks_dir);
// "arc_easy,piqa" -> the tasks; "all" is every known task.
std::vector<TaskSpec> parse_task_list(const std::string& list, const std::string& tasks_dir);

struct TaskExample {
  std::vector<std::string> contexts;       // one per choice (MultipleChoice, LastWord: the same context)
  std::vector<std::string> continuations;  // one per choice
  int64_t gold = 0;
};

// The examples of a task file (the first `limit` when limit > 0). UserError naming the file and line for a line
// that is not a JSON object, a missing or mistyped field, an empty choice list or a gold index out of range.
std::vector<TaskExample> load_task_examples(const TaskSpec& task, int64_t limit);

// One example's scores, per choice.
struct ExampleScores {
  std::vector<double> log_likelihood;
  std::vector<int64_t> bytes;     // of each continuation
  std::vector<int64_t> tokens;    // scored tokens of each continuation
  std::vector<bool> greedy;
  int64_t pred = 0, pred_norm = 0;
};

struct TaskResult {
  std::string name, file, sha256;
  TaskFormat format = TaskFormat::MultipleChoice;
  int64_t examples = 0, requests = 0;
  double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0;
  double ppl = 0, ppl_stderr = 0;  // LastWord only
  double seconds = 0;
  std::vector<TaskExample> inputs;       // for --details
  std::vector<ExampleScores> scores;
  nlohmann::ordered_json to_json() const;
  // One JSON object per example: index, gold, log-likelihoods, bytes, greedy, pred, pred_norm, correct.
  std::vector<nlohmann::ordered_json> details() const;
};

struct TaskOptions {
  int64_t seq_len = 0;
  int64_t limit = 0;    // examples per task; 0: all
  bool progress = true;
};

TaskResult evaluate_task(Scorer& scorer, const Tokenizer& tokenizer, const TaskSpec& task, const TaskOptions& options);

}  // namespace l3c
