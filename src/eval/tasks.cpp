// Zero-shot tasks: files, requests, scores and metrics (see tasks.h).
#include "eval/tasks.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/file_io.h"
#include "core/sha256.h"

namespace l3c {

namespace {

struct KnownTask {
  const char* name;
  const char* file;
  TaskFormat format;
  const char* answer_prompt;
};
constexpr KnownTask kKnownTasks[] = {
    {"arc_easy", "arc_easy.jsonl", TaskFormat::MultipleChoice, "\nAnswer:"},
    {"arc_challenge", "arc_challenge.jsonl", TaskFormat::MultipleChoice, "\nAnswer:"},
    {"piqa", "piqa.jsonl", TaskFormat::MultipleChoice, "Answer:"},
    {"openbook_qa", "openbook_qa.jsonl", TaskFormat::MultipleChoice, ""},
    {"copa", "copa.jsonl", TaskFormat::MultipleChoice, ""},
    {"winogrande", "winogrande.jsonl", TaskFormat::PartialContext, ""},
    {"lambada", "lambada_openai.jsonl", TaskFormat::LastWord, ""},
};

// The format a task file's first record has, by its fields.
TaskFormat detect_format(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot read the task file", path);
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_discarded() || !record.is_object()) fail("{} line {}: not a JSON object (a task file is JSONL)", path, number);
    if (record.contains("context_options")) return TaskFormat::PartialContext;
    if (record.contains("choices")) return TaskFormat::MultipleChoice;
    if (record.contains("context")) return TaskFormat::LastWord;
    fail("{} line {}: not a known task format: expected the fields query, choices, gold (multiple choice), "
         "context_options, continuation, gold (Winogrande) or context, continuation (LAMBADA)", path, number);
  }
  fail("{}: no examples (the file is empty)", path);
}

const nlohmann::json& field(const nlohmann::json& record, const char* name, const std::string& where) {
  if (!record.contains(name)) fail("{}: missing field \"{}\"", where, name);
  return record[name];
}

std::string string_field(const nlohmann::json& record, const char* name, const std::string& where) {
  const nlohmann::json& v = field(record, name, where);
  if (!v.is_string()) fail("{}: field \"{}\" must be a string, got {}", where, name, v.type_name());
  return v.get<std::string>();
}

std::vector<std::string> string_list_field(const nlohmann::json& record, const char* name, const std::string& where) {
  const nlohmann::json& v = field(record, name, where);
  if (!v.is_array()) fail("{}: field \"{}\" must be a list of strings, got {}", where, name, v.type_name());
  if (v.empty()) fail("{}: field \"{}\" is an empty list", where, name);
  std::vector<std::string> out;
  for (const nlohmann::json& item : v) {
    if (!item.is_string()) fail("{}: field \"{}\" must be a list of strings, holds {}", where, name, item.type_name());
    out.push_back(item.get<std::string>());
  }
  return out;
}

int64_t gold_field(const nlohmann::json& record, int64_t choices, const std::string& where) {
  const nlohmann::json& v = field(record, "gold", where);
  if (!v.is_number_integer()) fail("{}: field \"gold\" must be an integer, got {}", where, v.dump());
  const int64_t gold = v.get<int64_t>();
  if (gold < 0 || gold >= choices) fail("{}: gold index {} is out of range for {} choices", where, gold, choices);
  return gold;
}

// Standard error of the mean of 0/1 outcomes with success rate p over n examples (sample variance, n - 1).
double binary_stderr(double p, int64_t n) { return n > 1 ? std::sqrt(p * (1.0 - p) / static_cast<double>(n - 1)) : 0.0; }

size_t argmax_first(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

}  // namespace

std::vector<std::string> known_task_names() {
  std::vector<std::string> names;
  for (const KnownTask& t : kKnownTasks) names.push_back(t.name);
  return names;
}

TaskSpec find_task(const std::string& name, const std::string& tasks_dir) {
  namespace fs = std::filesystem;
  for (const KnownTask& t : kKnownTasks) {
    if (name != t.name) continue;
    const std::string path = (fs::path(tasks_dir) / t.file).string();
    if (!fs::exists(path)) fail("task {}: {} does not exist (--tasks-dir names the folder of task files)", name, path);
    return {name, path, t.format, t.answer_prompt};
  }
  const std::string path = (fs::path(tasks_dir) / (name + ".jsonl")).string();
  if (name.empty() || name.find('/') != std::string::npos || !fs::is_regular_file(path)) {
    std::string known;
    for (const std::string& n : known_task_names()) known += (known.empty() ? "" : ", ") + n;
    fail("unknown task '{}': the known tasks are {} (or all); another task is a file NAME.jsonl in --tasks-dir ({})",
         name, known, tasks_dir);
  }
  return {name, path, detect_format(path), ""};
}

std::vector<TaskSpec> parse_task_list(const std::string& list, const std::string& tasks_dir) {
  std::vector<TaskSpec> tasks;
  size_t begin = 0;
  while (begin <= list.size()) {
    size_t end = list.find(',', begin);
    if (end == std::string::npos) end = list.size();
    const std::string name = list.substr(begin, end - begin);
    if (name == "all") {
      for (const std::string& n : known_task_names()) tasks.push_back(find_task(n, tasks_dir));
    } else {
      tasks.push_back(find_task(name, tasks_dir));
    }
    begin = end + 1;
  }
  return tasks;
}

std::vector<TaskExample> load_task_examples(const TaskSpec& task, int64_t limit) {
  std::ifstream in(task.file);
  if (!in) fail("{}: cannot read the task file", task.file);
  std::vector<TaskExample> examples;
  std::string line;
  int64_t number = 0;
  while ((limit == 0 || static_cast<int64_t>(examples.size()) < limit) && std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{} line {}", task.file, number);
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_discarded() || !record.is_object()) fail("{}: not a JSON object (a task file is JSONL)", where);
    TaskExample ex;
    switch (task.format) {
      case TaskFormat::MultipleChoice: {
        const std::string context = string_field(record, "query", where) + task.answer_prompt;
        for (const std::string& choice : string_list_field(record, "choices", where)) {
          ex.contexts.push_back(context);
          ex.continuations.push_back(std::string(" ").append(choice));
        }
        ex.gold = gold_field(record, static_cast<int64_t>(ex.continuations.size()), where);
        break;
      }
      case TaskFormat::PartialContext: {
        const std::string continuation = std::string(" ").append(string_field(record, "continuation", where));
        for (const std::string& context : string_list_field(record, "context_options", where)) {
          ex.contexts.push_back(context);
          ex.continuations.push_back(continuation);
        }
        ex.gold = gold_field(record, static_cast<int64_t>(ex.contexts.size()), where);
        break;
      }
      case TaskFormat::LastWord:
        ex.contexts.push_back(string_field(record, "context", where));
        ex.continuations.push_back(std::string(" ").append(string_field(record, "continuation", where)));
        ex.gold = 0;
        break;
    }
    examples.push_back(std::move(ex));
  }
  if (examples.empty()) fail("{}: no examples (the file is empty)", task.file);
  return examples;
}

TaskResult evaluate_task(Scorer& scorer, const Tokenizer& tokenizer, const TaskSpec& task, const TaskOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  TaskResult result;
  result.name = task.name;
  result.file = task.file;
  result.format = task.format;
  result.sha256 = sha256_file(task.file);
  result.inputs = load_task_examples(task, options.limit);
  const int64_t n = static_cast<int64_t>(result.inputs.size());
  const std::optional<uint32_t> eot = tokenizer.eot_id();
  const int64_t max_tokens = options.seq_len + 1;
  auto encode = [&](const std::string& text) {
    std::vector<int32_t> ids;
    for (uint32_t id : tokenizer.encode(text)) ids.push_back(static_cast<int32_t>(id));
    return ids;
  };
  // One request per choice of every example, in example order.
  std::vector<ScoreRequest> requests;
  for (const TaskExample& ex : result.inputs) {
    for (size_t c = 0; c < ex.continuations.size(); ++c) {
      ScoreRequest r;
      if (eot) r.tokens.push_back(static_cast<int32_t>(*eot));
      const std::vector<int32_t> context = encode(ex.contexts[c]), continuation = encode(ex.continuations[c]);
      r.tokens.insert(r.tokens.end(), context.begin(), context.end());
      r.tokens.insert(r.tokens.end(), continuation.begin(), continuation.end());
      const int64_t length = static_cast<int64_t>(r.tokens.size());
      if (length > max_tokens) r.tokens.erase(r.tokens.begin(), r.tokens.begin() + (length - max_tokens));
      r.first_scored = std::max<int64_t>(1, static_cast<int64_t>(r.tokens.size() - continuation.size()));
      requests.push_back(std::move(r));
    }
  }
  result.requests = static_cast<int64_t>(requests.size());
  EvalProgress progress(task.name, "requests", options.progress);
  const std::vector<SequenceScore> scores = scorer.score(requests, progress.fn());

  size_t next = 0;
  double correct = 0, correct_norm = 0;
  std::vector<double> lambada_ll;
  for (const TaskExample& ex : result.inputs) {
    ExampleScores s;
    std::vector<double> normalized;
    for (size_t c = 0; c < ex.continuations.size(); ++c, ++next) {
      const int64_t bytes = static_cast<int64_t>(ex.continuations[c].size());
      s.log_likelihood.push_back(scores[next].log_prob);
      s.tokens.push_back(scores[next].tokens);
      s.greedy.push_back(scores[next].greedy);
      s.bytes.push_back(bytes);
      normalized.push_back(scores[next].log_prob / static_cast<double>(bytes));
    }
    if (task.format == TaskFormat::LastWord) {
      s.pred = s.pred_norm = s.greedy[0] ? 0 : -1;
      correct += s.greedy[0] ? 1 : 0;
      lambada_ll.push_back(s.log_likelihood[0]);
    } else {
      s.pred = static_cast<int64_t>(argmax_first(s.log_likelihood));
      s.pred_norm = static_cast<int64_t>(argmax_first(normalized));
      correct += s.pred == ex.gold ? 1 : 0;
      correct_norm += s.pred_norm == ex.gold ? 1 : 0;
    }
    result.scores.push_back(std::move(s));
  }
  result.examples = n;
  result.acc = correct / static_cast<double>(n);
  result.acc_stderr = binary_stderr(result.acc, n);
  if (task.format == TaskFormat::LastWord) {
    double mean = 0, var = 0;
    for (double ll : lambada_ll) mean += ll / static_cast<double>(n);
    for (double ll : lambada_ll) var += (ll - mean) * (ll - mean);
    var = n > 1 ? var / static_cast<double>(n - 1) : 0.0;
    result.ppl = std::exp(-mean);
    result.ppl_stderr = result.ppl * std::sqrt(var / static_cast<double>(n));
  } else {
    result.acc_norm = correct_norm / static_cast<double>(n);
    result.acc_norm_stderr = binary_stderr(result.acc_norm, n);
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

nlohmann::ordered_json TaskResult::to_json() const {
  nlohmann::ordered_json j = {{"file", file}, {"sha256", sha256}, {"format", std::string(choice_name(format))},
                              {"examples", examples}, {"requests", requests},
                              {"acc", acc}, {"acc_stderr", acc_stderr}};
  if (format == TaskFormat::LastWord) {
    j["ppl"] = ppl;
    j["ppl_stderr"] = ppl_stderr;
  } else {
    j["acc_norm"] = acc_norm;
    j["acc_norm_stderr"] = acc_norm_stderr;
  }
  j["seconds"] = seconds;
  j["examples_per_second"] = seconds > 0 ? static_cast<double>(examples) / seconds : 0.0;
  return j;
}

std::vector<nlohmann::ordered_json> TaskResult::details() const {
  std::vector<nlohmann::ordered_json> out;
  for (size_t i = 0; i < scores.size(); ++i) {
    const ExampleScores& s = scores[i];
    const bool correct = format == TaskFormat::LastWord ? s.greedy[0] : s.pred == inputs[i].gold;
    out.push_back({{"task", name}, {"index", i}, {"gold", inputs[i].gold}, {"log_likelihood", s.log_likelihood},
                   {"bytes", s.bytes}, {"tokens", s.tokens}, {"greedy", s.greedy}, {"pred", s.pred},
                   {"pred_norm", s.pred_norm}, {"correct", correct}});
  }
  return out;
}

}  // namespace l3c
