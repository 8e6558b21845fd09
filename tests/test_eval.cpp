// Tests of src/eval and `l3c eval`: the inference forward scores what the training forward scores, batching and
// padding change no score, sliding windows score every token once, bits per byte of a byte-level model is its
// loss / ln 2, hand-made tasks whose answers a trained model knows, agreement with the PyTorch reference on a few
// examples of every task (scripts/eval_reference.py), the logit lens and its plot, evaluation during training, and
// one clear error (exit 2) for each kind of bad input.
#include <catch2/catch.hpp>

#include "test_util.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "data/allocation.h"
#include "data/tokenizer.h"
#include "eval/scorer.h"
#include "eval/tasks.h"
#include "eval/text.h"
#include "model/llama.h"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;
using namespace l3c;

namespace {

using Result = test::CommandResult;
using test::check_user_error;
using test::fresh_dir;
using test::last_json_line;
using test::run_l3c;
using test::write_text;

// A small model with a dense layer, an MoE layer and an L3 layer (byte vocabulary), in f64 with random weights.
struct MixedModel {
  Config config;
  std::unique_ptr<Llama> model;
  FlatBuffer params;
  MixedModel() {
    config = config_from_json(nlohmann::json::parse(R"({
      "model": {"vocab_size": 256, "d_model": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 48,
                "l3": {"after_layers": [0, 2], "v": 600, "k": 4, "allocation": {"method": "uniform"}},
                "moe": {"layers": [1], "experts": 4, "top_k": 2, "expert_hidden": 24}},
      "data": {"train": "unused", "seq_len": 24},
      "train": {"steps": 1, "dtype": "f64"}})"));
    model = std::make_unique<Llama>(config.model);
    params = FlatBuffer(model->registry().total(), DType::F64);
    init_params(model->registry(), params, 7);
    model->set_l3_allocations(uniform_allocation(256, 600, 4), "test");
  }
};

std::vector<int32_t> random_ids(size_t n, uint64_t seed) {
  test::SplitMix64 rng(seed);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.next() % 256);
  return ids;
}

// The repeated sentences the end-to-end model learns.
std::string training_text() {
  const char* sentences[] = {"the sky is blue. ", "the grass is green. ", "the sun is hot. ", "the snow is cold. "};
  test::SplitMix64 rng(3);
  std::string text;
  for (int i = 0; i < 3000; ++i) {
    text += sentences[rng.next() % 4];
    if (i % 20 == 19) text += "\n";
  }
  return text;
}

}  // namespace

TEST_CASE("the inference forward scores what the training forward scores, in any batch", "[eval]") {
  MixedModel m;
  const int64_t T = 24, B = 3;
  const std::vector<int32_t> ids = random_ids(static_cast<size_t>(B * (T + 1)), 11);
  std::vector<int32_t> tokens, targets;
  std::vector<ScoreRequest> requests;
  for (int64_t b = 0; b < B; ++b) {
    const auto row = ids.begin() + b * (T + 1);
    tokens.insert(tokens.end(), row, row + T);
    targets.insert(targets.end(), row + 1, row + T + 1);
    requests.push_back({std::vector<int32_t>(row, row + T + 1), 1});
  }
  Arena arena(m.model->activation_bytes(B, T, DType::F64, false), "test");
  const LossReport report = m.model->forward_backward(m.params, nullptr, Tensor(tokens.data(), DType::I32, {B, T}),
                                                      Tensor(targets.data(), DType::I32, {B, T}), 0.0, arena);
  Scorer scorer(*m.model, m.params, B * T);
  const std::vector<SequenceScore> scores = scorer.score(requests);
  double log_prob = 0.0;
  for (const SequenceScore& s : scores) {
    CHECK(s.tokens == T);
    log_prob += s.log_prob;
  }
  CHECK(-log_prob / static_cast<double>(B * T) == Approx(report.cross_entropy).epsilon(1e-12));

  // Requests of different lengths and first scored positions, scored together (padded, several batches of a small
  // scorer) and one at a time, give the same scores.
  std::vector<ScoreRequest> mixed;
  for (int i = 0; i < 7; ++i) {
    ScoreRequest r{random_ids(static_cast<size_t>(5 + 3 * i), 100 + i), 1 + i % 4};
    mixed.push_back(r);
  }
  Scorer small(*m.model, m.params, 60);
  const std::vector<SequenceScore> together = small.score(mixed);
  for (size_t i = 0; i < mixed.size(); ++i) {
    const SequenceScore alone = scorer.score({mixed[i]})[0];
    CHECK(together[i].log_prob == Approx(alone.log_prob).epsilon(1e-12));
    CHECK(together[i].greedy == alone.greedy);
    CHECK(together[i].tokens == static_cast<int64_t>(mixed[i].tokens.size()) - mixed[i].first_scored);
  }
}

TEST_CASE("sliding windows score every token after the first exactly once", "[eval]") {
  for (const int64_t L : {1, 2, 10, 17, 33, 100}) {
    for (const int64_t stride : {1, 5, 8, 16}) {
      std::vector<int32_t> ids(static_cast<size_t>(L));
      std::iota(ids.begin(), ids.end(), 0);
      std::vector<int> scored(static_cast<size_t>(L), 0);
      for (const ScoreRequest& w : text_windows(ids, 16, stride)) {
        REQUIRE(static_cast<int64_t>(w.tokens.size()) <= 17);
        REQUIRE(w.first_scored >= 1);
        for (size_t t = static_cast<size_t>(w.first_scored); t < w.tokens.size(); ++t) ++scored[w.tokens[t]];
        // the context before the scored tokens is as long as the window allows
        if (w.tokens.front() != 0) CHECK(static_cast<int64_t>(w.tokens.size()) == 17);
      }
      INFO("L " << L << " stride " << stride);
      if (L > 0) CHECK(scored[0] == 0);
      for (int64_t t = 1; t < L; ++t) CHECK(scored[t] == 1);
    }
  }
}

TEST_CASE("bits per byte of a byte-level model is its loss / ln 2", "[eval]") {
  MixedModel m;
  const fs::path dir = fresh_dir("bpb");
  write_text(dir / "a.txt", "Held-out text: caf\xc3\xa9, na\xc3\xafve \xe2\x80\x94 and more.\nA second line.\n");
  write_text(dir / "b.txt", std::string(300, 'x') + " tail");
  const ByteTokenizer bytes;
  const TextCorpus corpus = read_text_corpus({dir.string()}, bytes, 256, 0);
  REQUIRE(corpus.documents.size() == 2);
  Scorer scorer(*m.model, m.params, 100);
  for (const int64_t stride : {8, 24}) {
    const TextResult r = evaluate_text(scorer, corpus, {24, stride, 0, false});
    CHECK(r.bytes == r.tokens);  // every byte but each file's first is scored
    CHECK(r.tokens == static_cast<int64_t>(fs::file_size(dir / "a.txt") + fs::file_size(dir / "b.txt")) - 2);
    CHECK(r.bits_per_byte() == Approx(r.loss() / std::log(2.0)).epsilon(1e-12));
    CHECK(r.perplexity() == Approx(std::exp(r.loss())));
  }
  // max_bytes cuts at a character boundary: never inside the two bytes of "é" (bytes 18 and 19 of a.txt).
  const TextCorpus cut = read_text_corpus({(dir / "a.txt").string()}, bytes, 256, 19);
  CHECK(cut.documents[0].ids.size() == 18);
}

TEST_CASE("bad task files and text are one clear error each", "[eval]") {
  const fs::path dir = fresh_dir("bad_tasks");
  auto task_error = [&](const std::string& name, const std::string& contents, const std::string& message) {
    write_text(dir / (name + ".jsonl"), contents);
    INFO(name);
    CHECK_THROWS_WITH(load_task_examples(find_task(name, dir.string()), 0), Contains(message));
  };
  task_error("not_jsonl", "{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 0}\nthis is not JSON\n",
             "not_jsonl.jsonl line 2: not a JSON object");
  task_error("missing", "{\"query\": \"q\", \"gold\": 0, \"choices\": [\"a\"]}\n{\"query\": \"q\", \"gold\": 0, \"choices\": 3}\n",
             "line 2: field \"choices\" must be a list of strings");
  task_error("no_gold", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"]}\n", "line 1: missing field \"gold\"");
  task_error("gold_range", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n",
             "line 1: gold index 2 is out of range for 2 choices");
  task_error("empty_choices", "{\"query\": \"q\", \"choices\": [], \"gold\": 0}\n", "field \"choices\" is an empty list");
  task_error("wino", "{\"context_options\": [\"a\"], \"gold\": 0}\n", "missing field \"continuation\"");
  write_text(dir / "empty.jsonl", "\n");
  CHECK_THROWS_WITH(find_task("empty", dir.string()), Contains("no examples"));
  CHECK_THROWS_WITH(find_task("nope", dir.string()), Contains("unknown task 'nope'") && Contains("arc_easy"));
  write_text(dir / "latin1.txt", "caf\xe9\n");
  const ByteTokenizer bytes;
  CHECK_THROWS_WITH(read_text_corpus({(dir / "latin1.txt").string()}, bytes, 256, 0), Contains("UTF-8"));
}

TEST_CASE("l3c eval: held-out text, hand-made and real tasks, the lens, the reference, eval during training",
          "[eval][cli]") {
  const fs::path dir = fresh_dir("e2e");
  write_text(dir / "train.txt", training_text());
  write_text(dir / "heldout.txt", "the sun is hot. the sky is blue. the snow is cold.\n");
  const Result prep = run_l3c("prepare --tokenizer bytes --out " + (dir / "data").string() + " " + (dir / "train.txt").string());
  REQUIRE(prep.exit_code == 0);
  // Hand-made tasks in each format, whose answers the training text holds.
  const fs::path tasks = dir / "tasks";
  fs::create_directories(tasks);
  write_text(tasks / "colors.jsonl",
             "{\"query\": \"the sky is\", \"choices\": [\"green.\", \"blue.\"], \"gold\": 1}\n"
             "{\"query\": \"the grass is\", \"choices\": [\"green.\", \"blue.\", \"cold.\"], \"gold\": 0}\n"
             "{\"query\": \"the snow is\", \"choices\": [\"hot.\", \"cold.\"], \"gold\": 1}\n"
             "{\"query\": \"the sun is\", \"choices\": [\"hot.\", \"cold.\"], \"gold\": 0}\n");
  write_text(tasks / "which.jsonl",
             "{\"context_options\": [\"the sun\", \"the snow\"], \"continuation\": \"is cold.\", \"gold\": 1}\n"
             "{\"context_options\": [\"the sky\", \"the grass\"], \"continuation\": \"is blue.\", \"gold\": 0}\n");
  write_text(tasks / "last.jsonl", "{\"context\": \"the grass is green. the sky is\", \"continuation\": \"blue.\"}\n");
  // A model with an MoE layer and an L3 layer, evaluated on the hand-made tasks and the held-out text as it trains.
  const std::string config = R"({
    "model": {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "ffn_hidden": 128,
              "l3": {"after_layers": [0], "v": 1024, "k": 8, "allocation": {"method": "uniform"}},
              "moe": {"layers": [1], "experts": 4, "top_k": 2, "expert_hidden": 64}},
    "data": {"train": ")" + (dir / "data").string() + R"(", "val": ")" + (dir / "data" / "val_000000.bin").string() +
                           R"(", "seq_len": 48, "tokenizer": "bytes"},
    "train": {"steps": 100, "micro_batch": 8, "lr": 1e-2, "warmup_steps": 10, "weight_decay": 0},
    "eval": {"every": 50, "batches": 2, "tasks": ["colors", "which"], "tasks_dir": ")" + tasks.string() +
                           R"(", "text": [")" + (dir / "heldout.txt").string() + R"("]},
    "run": {"dir": ")" + (dir / "run").string() + R"("}})";
  write_text(dir / "c.json", config);
  const Result train = run_l3c("train " + (dir / "c.json").string());
  INFO(train.output);
  REQUIRE(train.exit_code == 0);
  {  // metrics.jsonl: the tasks and the text next to the validation loss, at step 50 and at the end
    std::ifstream metrics(dir / "run" / "metrics.jsonl");
    std::string line;
    std::vector<int64_t> steps;
    while (std::getline(metrics, line)) {
      const auto j = nlohmann::json::parse(line);
      if (!j.contains("val_loss")) continue;
      steps.push_back(j["step"].get<int64_t>());
      CHECK(j["tasks"]["colors"]["examples"] == 4);
      CHECK(j["tasks"]["which"].contains("acc_stderr"));
      CHECK(j["text"]["bits_per_byte"].get<double>() > 0);
    }
    CHECK(steps == std::vector<int64_t>{50, 100});
  }
  const std::string run = (dir / "run").string();

  // One call: text, tasks and lens, one JSON object.
  const fs::path details = dir / "details.jsonl", plot = dir / "lens.png";
  const bool plotting = test::run_command("python3 -c 'import matplotlib' 2>&1").exit_code == 0 ||
                        test::run_command("/usr/bin/python3 -c 'import matplotlib' 2>&1").exit_code == 0;
  const Result e = run_l3c("eval --json --checkpoint " + run + " --text " + (dir / "heldout.txt").string() + " " +
                           (dir / "train.txt").string() + " --max-bytes 2000 --stride 32 --tasks colors,which,last --tasks-dir " +
                           tasks.string() + " --details " + details.string() + " --lens --lens-tokens 500" +
                           (plotting ? " --plot " + plot.string() : ""));
  INFO(e.output);
  REQUIRE(e.exit_code == 0);
  const auto j = last_json_line(e.output);
  CHECK(j["checkpoint"] == run);
  CHECK(j["tokenizer"]["spec"] == "bytes");
  CHECK(j["text"]["stride"] == 32);
  CHECK(j["text"]["files"].size() == 2);
  CHECK(j["text"]["files"][0]["sha256"].get<std::string>().size() == 64);
  CHECK(j["text"]["bits_per_byte"].get<double>() == Approx(j["text"]["loss"].get<double>() / std::log(2.0)));
  CHECK(j["text"]["files"][0]["bits_per_byte"].get<double>() < 1.0);  // the model knows these sentences
  CHECK(j["tasks"]["colors"]["acc"] == 1.0);
  CHECK(j["tasks"]["colors"]["acc_norm"] == 1.0);
  CHECK(j["tasks"]["colors"]["examples"] == 4);
  CHECK(j["tasks"]["which"]["acc"] == 1.0);
  CHECK(j["tasks"]["last"]["acc"] == 1.0);
  CHECK(j["tasks"]["last"]["ppl"].get<double>() < 1.5);
  const auto& layers = j["lens"]["layers"];
  REQUIRE(layers.size() == 3);  // layer 0, the L3 layer after it, layer 1
  CHECK(layers[1]["l3"] == true);
  CHECK(layers[2]["kl"].get<double>() == Approx(0.0).margin(1e-9));  // the final residual stream
  CHECK(layers[0]["kl"].get<double>() > 0.01);
  CHECK(j["lens"]["tokens"] == 500);
  if (plotting) CHECK(fs::file_size(plot) > 1000);
  // --details: one line per example with its log-likelihoods
  std::ifstream detail_lines(details);
  std::string line;
  int examples = 0;
  while (std::getline(detail_lines, line)) ++examples;
  CHECK(examples == 7);

  // The PyTorch reference scores a few examples of every real task as l3c does.
  const fs::path evals = fs::path(L3C_SOURCE_DIR) / ".." / "shared" / "data" / "evals";
  const bool torch = test::run_command("/usr/bin/python3 -c 'import torch' 2>&1").exit_code == 0;
  if (!fs::exists(evals) || !torch) {
    WARN("skipped the reference agreement: needs ../shared/data/evals and torch in /usr/bin/python3");
    return;
  }
  const fs::path real_details = dir / "real.jsonl";
  const Result real = run_l3c("eval --json --checkpoint " + run + " --tasks all --limit 3 --tasks-dir " + evals.string() +
                              " --details " + real_details.string());
  INFO(real.output);
  REQUIRE(real.exit_code == 0);
  CHECK(last_json_line(real.output)["tasks"]["arc_easy"]["examples"] == 3);
  const Result ref = test::run_command("/usr/bin/python3 " + std::string(L3C_SOURCE_DIR) +
                                       "/scripts/eval_reference.py --threads 2 --checkpoint " + run +
                                       " --tasks all --limit 3 --tasks-dir " + evals.string() + " --compare " +
                                       real_details.string() + " 2>&1");
  INFO(ref.output);
  REQUIRE(ref.exit_code == 0);
  const auto agreement = last_json_line(ref.output);
  CHECK(agreement["ok"] == true);
  CHECK(agreement["worst_relative_difference"].get<double>() < 1e-4);
  for (const auto& [name, task] : last_json_line(real.output)["tasks"].items())
    CHECK(agreement["tasks"][name]["acc"] == task["acc"]);
}

TEST_CASE("l3c eval: bad command lines and inputs exit 2 with one clear message", "[eval][cli]") {
  const fs::path dir = fresh_dir("cli_errors");
  write_text(dir / "train.txt", training_text().substr(0, 20000));
  REQUIRE(run_l3c("prepare --tokenizer bytes --out " + (dir / "data").string() + " " + (dir / "train.txt").string())
              .exit_code == 0);
  write_text(dir / "c.json", R"({"model": {"vocab_size": 256, "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32},
    "data": {"train": ")" + (dir / "data").string() + R"(", "seq_len": 32, "tokenizer": "bytes"},
    "train": {"steps": 1}, "run": {"dir": ")" + (dir / "run").string() + R"("}})");
  REQUIRE(run_l3c("train " + (dir / "c.json").string()).exit_code == 0);
  const std::string eval = "eval --checkpoint " + (dir / "run").string() + " ";
  write_text(dir / "bad.jsonl", "{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 3}\n");
  write_text(dir / "latin1.txt", "caf\xe9\n");
  check_user_error(run_l3c(eval), "nothing to evaluate");
  check_user_error(run_l3c(eval + "--tasks nope --tasks-dir " + dir.string()), "unknown task 'nope'");
  check_user_error(run_l3c(eval + "--tasks bad --tasks-dir " + dir.string()), "gold index 3 is out of range");
  check_user_error(run_l3c(eval + "--text " + (dir / "latin1.txt").string()), "invalid UTF-8");
  check_user_error(run_l3c(eval + "--text " + (dir / "missing.txt").string()), "missing.txt");
  check_user_error(run_l3c(eval + "--lens"), "--lens reads held-out text");
  check_user_error(run_l3c(eval + "--text " + (dir / "train.txt").string() + " --stride 33"), "--stride");
  check_user_error(run_l3c(eval + "extra.txt --tasks copa"), "unexpected argument 'extra.txt'");
  write_text(dir / "c2.json", R"({"model": {"vocab_size": 256, "d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32},
    "data": {"train": ")" + (dir / "data").string() + R"(", "seq_len": 32, "tokenizer": "bytes"},
    "eval": {"tasks": ["nope"], "tasks_dir": ")" + dir.string() + R"("},
    "train": {"steps": 1}, "run": {"dir": ")" + (dir / "run2").string() + R"("}})");
  check_user_error(run_l3c("train " + (dir / "c2.json").string()), "eval.tasks: unknown task 'nope'");
}
