// Evaluation during training: eval.tasks and eval.text scored at every validation (eval.every and the end), their
// results written to metrics.jsonl in the validation record.
#pragma once
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "data/tokenizer.h"
#include "eval/tasks.h"
#include "eval/text.h"

namespace l3c {

class TrainingEvaluator {
 public:
  // Reads the tokenizer, the task files and the held-out text now, so that bad input stops the run before its
  // first step (UserErrors name eval.tasks or eval.text).
  explicit TrainingEvaluator(const Config& config);
  bool enabled() const { return !tasks_.empty() || !corpus_.documents.empty(); }
  // {"tasks": {name: {acc, ...}}, "text": {loss, ppl, bits_per_byte, ...}} for the sections configured.
  nlohmann::ordered_json run(const Llama& model, const FlatBuffer& params) const;

 private:
  Config config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<TaskSpec> tasks_;
  TextCorpus corpus_;
};

}  // namespace l3c
