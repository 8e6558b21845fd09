// Tests of the config system (src/core/config.h): defaults, every error message, extends, --set
// overrides, the JSON round trip. Config files are written under a fresh temporary folder.
#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "core/config.h"
#include "core/errors.h"
#include "core/json_input.h"
#include "model/llama.h"
#include "test_util.h"

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {
using l3c::test::user_error;

// A fresh folder (l3c::test::fresh_dir), removed with everything in it at scope end.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = l3c::test::fresh_dir("config_" + std::to_string(counter++));
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  // Writes text to path/relative (creating folders) and returns the file's path.
  std::string write(const std::string& relative, const std::string& text) const {
    l3c::test::write_text(path / relative, text);
    return (path / relative).string();
  }
};

// The smallest valid config: every required field, nothing else.
json minimal() {
  return json::parse(R"({
    "model": {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "ffn_hidden": 128},
    "data": {"train": "data/tiny/train_*.bin", "seq_len": 32},
    "train": {"steps": 10}
  })");
}

// minimal() with j[section][key] = value.
json with(const std::string& section, const std::string& key, const json& value) {
  json j = minimal();
  j[section][key] = value;
  return j;
}

// minimal() with `changes` merged in (a JSON merge patch: {"model": {"d_model": 250}} sets one field).
json patched(const json& changes) {
  json j = minimal();
  j.merge_patch(changes);
  return j;
}

// minimal() without j[section][key].
json without(const std::string& section, const std::string& key) {
  json j = minimal();
  j[section].erase(key);
  return j;
}

std::string error_from_json(const json& j) {
  return user_error([&] { l3c::config_from_json(j); });
}

}  // namespace

TEST_CASE("a minimal config reads with every default filled in", "[config]") {
  l3c::Config c = l3c::config_from_json(minimal());
  CHECK(c.model.vocab_size == 256);
  CHECK(c.model.d_model == 64);
  CHECK(c.model.n_layers == 2);
  CHECK(c.model.n_heads == 4);
  CHECK(c.model.ffn_hidden == 128);
  CHECK(c.model.rope_theta == 10000.0);
  CHECK(c.model.norm_eps == 1e-5);
  CHECK(c.model.tie_embeddings == false);
  CHECK(c.model.init_std == 0.02);
  CHECK(c.data.train == "data/tiny/train_*.bin");
  CHECK(c.data.val == "");
  CHECK(c.data.seq_len == 32);
  CHECK(c.train.steps == 10);
  CHECK(c.train.micro_batch == 1);
  CHECK(c.train.lr == 3e-4);
  CHECK(c.train.min_lr == 0.0);
  CHECK(c.train.warmup_steps == 0);
  CHECK(c.train.schedule == l3c::Schedule::Cosine);
  CHECK(c.train.decay_fraction == 0.2);
  CHECK(c.train.weight_decay == 0.1);
  CHECK(c.train.beta1 == 0.9);
  CHECK(c.train.beta2 == 0.95);
  CHECK(c.train.eps == 1e-8);
  CHECK(c.train.grad_clip == 1.0);
  CHECK(c.train.seed == 1337);
  CHECK(c.train.threads == 0);
  CHECK(c.train.device == l3c::DeviceChoice::Auto);
  CHECK(c.train.dtype == l3c::DType::F32);
  CHECK(c.train.precision == l3c::Precision::Fp32);
  CHECK(c.train.recompute == l3c::RecomputeChoice::None);
  CHECK(c.eval.every == 0);
  CHECK(c.eval.batches == 8);
  CHECK(c.eval.tasks.empty());
  CHECK(c.eval.text.empty());
  CHECK(c.eval.tasks_dir == "../shared/data/evals");
  CHECK(c.eval.limit == 0);
  CHECK(c.checkpoint.every == 0);
  CHECK(c.checkpoint.keep == 2);
  CHECK(c.run.dir == "runs/default");
}

TEST_CASE("an absent or zero batch_tokens resolves to one micro-batch per step", "[config]") {
  CHECK(l3c::config_from_json(minimal()).train.batch_tokens == 32);
  json j = minimal();
  j["train"]["micro_batch"] = 4;
  j["train"]["batch_tokens"] = 0;
  l3c::Config c = l3c::config_from_json(j);
  CHECK(c.train.batch_tokens == 128);
  CHECK(c.train.grad_accum_steps(c.data.seq_len) == 1);
  j["train"]["batch_tokens"] = 512;
  CHECK(l3c::config_from_json(j).train.grad_accum_steps(32) == 4);
}

TEST_CASE("n_kv_heads absent or 0 resolves to n_heads, and an explicit value is kept", "[config]") {
  CHECK(l3c::config_from_json(minimal()).model.n_kv_heads == 4);
  CHECK(l3c::config_from_json(with("model", "n_kv_heads", 0)).model.n_kv_heads == 4);
  CHECK(l3c::config_from_json(with("model", "n_kv_heads", 2)).model.n_kv_heads == 2);
  CHECK(l3c::config_to_json(l3c::config_from_json(minimal()))["model"]["n_kv_heads"] == 4);
}

TEST_CASE("load_config reads a file and keeps data paths as written", "[config]") {
  TempDir dir;
  std::string path = dir.write("configs/tiny.json", R"({
    "description": "a tiny model for tests",
    "model": {"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "ffn_hidden": 128},
    "data": {"train": "../data/train.bin", "val": "data/val.bin", "seq_len": 32},
    "train": {"steps": 10, "lr": 1e-3}
  })");
  l3c::Config c = l3c::load_config(path);
  CHECK(c.train.lr == 1e-3);
  CHECK(c.data.train == "../data/train.bin");
  CHECK(c.data.val == "data/val.bin");
}

TEST_CASE("malformed JSON is an error with file, line and column", "[config]") {
  TempDir dir;
  std::string path = dir.write("x.json", "{\n  \"model\": {\n    \"d_model\": 64,}\n}\n");
  std::string message = user_error([&] { l3c::load_config(path); });
  // The parser stops at the '}' after the trailing comma: line 3, column 19.
  CHECK_THAT(message, StartsWith(path + ":3:19: malformed JSON: "));
  CHECK_THAT(message, Contains("syntax error while parsing object key"));
  CHECK_THAT(message, !Contains("json.exception"));

  std::string empty = dir.write("empty.json", "");
  CHECK_THAT(user_error([&] { l3c::read_json_file(empty); }),
             StartsWith(empty + ":1:1: malformed JSON: ") && Contains("unexpected end of input"));

  std::string unterminated = dir.write("open.json", "{\"a\": 1,\n \"b\": [1, 2\n");
  CHECK_THAT(user_error([&] { l3c::read_json_file(unterminated); }),
             StartsWith(unterminated + ":3:1: malformed JSON: "));
}

TEST_CASE("read_json_file reads any JSON and reports a missing file", "[config]") {
  TempDir dir;
  std::string path = dir.write("a.json", R"({"experts": [1, 2, 3]})");
  CHECK(l3c::read_json_file(path)["experts"][2] == 3);
  std::string missing = (dir.path / "nope.json").string();
  CHECK_THAT(user_error([&] { l3c::read_json_file(missing); }), Contains("file not found: " + missing));
  CHECK_THAT(user_error([&] { l3c::read_json_file(dir.path.string()); }), Contains("is a folder"));
}

TEST_CASE("a missing config file is an error naming the path", "[config]") {
  TempDir dir;
  std::string missing = (dir.path / "missing.json").string();
  CHECK_THAT(user_error([&] { l3c::load_config(missing); }), Contains("config file not found: " + missing));
}

TEST_CASE("an unknown key is an error listing the section's known keys", "[config]") {
  std::string message = error_from_json(with("model", "d_modle", 64));
  CHECK_THAT(message, Contains("model.d_modle: unknown key (known keys in model: vocab_size, d_model, n_layers, "
                               "n_heads, n_kv_heads, ffn_hidden, rope_theta, norm_eps, tie_embeddings, "
                               "init_std, l3, moe)"));
  CHECK_THAT(error_from_json(with("run", "folder", "x")),
             Contains("run.folder: unknown key (known keys in run: dir)"));

  // In a file, the message also names the file.
  TempDir dir;
  json j = with("train", "learning_rate", 1e-3);
  std::string path = dir.write("x.json", j.dump());
  CHECK_THAT(user_error([&] { l3c::load_config(path); }),
             Contains(path + ": train.learning_rate: unknown key (known keys in train: steps, batch_tokens,"));
}

TEST_CASE("an unknown top-level section is an error listing the known ones", "[config]") {
  json j = minimal();
  j["optimizer"] = json::object();
  CHECK_THAT(error_from_json(j), Contains("optimizer: unknown key (known keys at the top level: model, data, "
                                          "train, eval, checkpoint, dist, run, extends, description)"));
}

TEST_CASE("a value of the wrong type is an error naming the expected type and the value", "[config]") {
  CHECK_THAT(error_from_json(with("train", "lr", "abc")), Contains("train.lr: expected a number, got string \"abc\""));
  CHECK_THAT(error_from_json(with("model", "n_layers", 2.5)), Contains("model.n_layers: expected an integer, got 2.5"));
  CHECK_THAT(error_from_json(with("model", "n_layers", "2")),
             Contains("model.n_layers: expected an integer, got string \"2\""));
  CHECK_THAT(error_from_json(with("model", "tie_embeddings", 1)),
             Contains("model.tie_embeddings: expected true or false, got 1"));
  CHECK_THAT(error_from_json(with("model", "tie_embeddings", "yes")),
             Contains("model.tie_embeddings: expected true or false, got string \"yes\""));
  CHECK_THAT(error_from_json(with("data", "train", 5)), Contains("data.train: expected a string, got 5"));
  CHECK_THAT(error_from_json(with("data", "val", nullptr)), Contains("data.val: expected a string, got null"));
  CHECK_THAT(error_from_json(with("train", "seed", -1)),
             Contains("train.seed: expected a non-negative integer, got -1"));
  CHECK_THAT(error_from_json(with("train", "steps", json::array({1}))),
             Contains("train.steps: expected an integer, got array [1]"));
  json j = minimal();
  j["eval"] = 3;
  CHECK_THAT(error_from_json(j), Contains("eval: expected an object, got 3"));
  j = minimal();
  j["description"] = 1;
  CHECK_THAT(error_from_json(j), Contains("description: expected a string, got 1"));
  CHECK_THAT(error_from_json(json::array()), Contains("expected a JSON object at the top level, got array []"));
}

TEST_CASE("integers written as integral floats are accepted", "[config]") {
  CHECK(l3c::config_from_json(with("model", "n_layers", 3.0)).model.n_layers == 3);
  CHECK(l3c::config_from_json(with("train", "steps", 1e3)).train.steps == 1000);
}

TEST_CASE("an out-of-range value is an error naming the bound and the value", "[config]") {
  CHECK_THAT(error_from_json(with("train", "lr", -1)), Contains("train.lr: must be > 0, got -1"));
  CHECK_THAT(error_from_json(with("train", "lr", 0)), Contains("train.lr: must be > 0, got 0"));
  CHECK_THAT(error_from_json(with("model", "n_layers", 0)), Contains("model.n_layers: must be >= 1, got 0"));
  CHECK_THAT(error_from_json(with("model", "n_kv_heads", -2)), Contains("model.n_kv_heads: must be >= 0, got -2"));
  CHECK_THAT(error_from_json(with("data", "seq_len", 0)), Contains("data.seq_len: must be >= 1, got 0"));
  CHECK_THAT(error_from_json(with("train", "beta1", 1)), Contains("train.beta1: must be in [0, 1), got 1"));
  CHECK_THAT(error_from_json(with("train", "beta2", -0.5)), Contains("train.beta2: must be in [0, 1), got -0.5"));
  CHECK_THAT(error_from_json(with("train", "eps", 0)), Contains("train.eps: must be > 0, got 0"));
  CHECK_THAT(error_from_json(with("train", "decay_fraction", 1.5)),
             Contains("train.decay_fraction: must be in [0, 1], got 1.5"));
  CHECK(l3c::config_from_json(with("train", "decay_fraction", 1)).train.decay_fraction == 1.0);
  CHECK_THAT(error_from_json(with("train", "weight_decay", -0.1)),
             Contains("train.weight_decay: must be >= 0, got -0.1"));
  CHECK_THAT(error_from_json(with("train", "grad_clip", -1)), Contains("train.grad_clip: must be >= 0, got -1"));
  CHECK_THAT(error_from_json(with("train", "micro_batch", 0)), Contains("train.micro_batch: must be >= 1, got 0"));
  CHECK_THAT(error_from_json(with("eval", "every", -1)), Contains("eval.every: must be >= 0, got -1"));
  CHECK_THAT(error_from_json(with("eval", "batches", 0)), Contains("eval.batches: must be >= 1, got 0"));
  CHECK_THAT(error_from_json(with("eval", "limit", -1)), Contains("eval.limit: must be >= 0, got -1"));
  CHECK_THAT(error_from_json(with("eval", "tasks", 3)), Contains("eval.tasks"));
  CHECK_THAT(error_from_json(with("checkpoint", "keep", 0)), Contains("checkpoint.keep: must be >= 1, got 0"));
  CHECK_THAT(error_from_json(with("data", "train", "")), Contains("data.train: must not be empty"));
  CHECK_THAT(error_from_json(with("run", "dir", "")), Contains("run.dir: must not be empty"));
}

TEST_CASE("an enumeration value outside its set is an error naming the allowed values", "[config]") {
  CHECK_THAT(error_from_json(with("train", "schedule", "linear")),
             Contains("train.schedule: must be one of cosine, wsd, constant; got \"linear\""));
  CHECK_THAT(error_from_json(with("train", "dtype", "bf16")),
             Contains("train.dtype: must be one of f32, f64; got \"bf16\""));
  CHECK_THAT(error_from_json(with("train", "device", "tpu")),
             Contains("train.device: must be one of auto, cpu, cuda; got \"tpu\""));
  CHECK(l3c::config_from_json(with("train", "device", "cuda")).train.device == l3c::DeviceChoice::Cuda);  // checked when training starts
  CHECK_THAT(error_from_json(with("train", "precision", "fp16")),
             Contains("train.precision: must be one of fp32, bf16; got \"fp16\""));
  CHECK_THAT(error_from_json(with("train", "recompute", "everything")),
             Contains("train.recompute: must be one of none, swiglu, attention, all"));
  CHECK(l3c::config_from_json(with("train", "schedule", "wsd")).train.schedule == l3c::Schedule::Wsd);
  CHECK(l3c::config_from_json(with("train", "dtype", "f64")).train.dtype == l3c::DType::F64);
}

TEST_CASE("a choice is parsed once into its enum and written back as the same name", "[config]") {
  // Every name of every choice field of the train section round-trips: the JSON of a config, its resolved
  // config.json and trainer.json keep the strings they always had.
  const std::pair<const char*, std::vector<std::string>> choices[] = {
      {"schedule", {"cosine", "wsd", "constant"}},   {"device", {"auto", "cpu", "cuda"}},
      {"dtype", {"f32", "f64"}},                     {"on_nonfinite", {"stop", "skip"}},
      {"recompute", {"none", "swiglu", "attention", "all"}},
  };
  for (const auto& [key, names] : choices)
    for (const std::string& name : names) {
      CAPTURE(key, name);
      const l3c::Config c = l3c::config_from_json(with("train", key, name));
      CHECK(json(l3c::config_to_json(c))["train"][key] == name);
    }
  const l3c::Config bf16 = l3c::config_from_json(with("train", "precision", "bf16"));
  CHECK(bf16.train.precision == l3c::Precision::Bf16);
  CHECK(json(l3c::config_to_json(bf16))["train"]["precision"] == "bf16");
  CHECK(l3c::config_from_json(with("dist", "nccl_bootstrap", "tcp")).dist.nccl_bootstrap == l3c::NcclBootstrap::Tcp);
  // A choice is spelled by a string; --set reads a bare word as one.
  CHECK_THAT(error_from_json(with("train", "schedule", 3)), Contains("train.schedule: expected a string, got 3"));
  TempDir dir;
  const std::string path = dir.write("x.json", minimal().dump());
  CHECK(l3c::load_config(path, {"train.recompute=all"}).train.recompute == l3c::RecomputeChoice::All);
  CHECK_THROWS_WITH(l3c::load_config(path, {"train.dtype=1"}),
                    Catch::Contains("train.dtype: must be one of f32, f64; got \"1\""));
  // DType's names are dtype_name's, so a message and a config spell a dtype alike.
  for (const l3c::DType d : {l3c::DType::F32, l3c::DType::F64, l3c::DType::BF16, l3c::DType::I32})
    CHECK(l3c::choice_name(d) == l3c::dtype_name(d));
  CHECK_THROWS_WITH(l3c::parse_choice<l3c::Precision>("fp16", "--precision"),
                    Catch::Contains("--precision: must be one of fp32, bf16; got \"fp16\""));
}

TEST_CASE("a missing required field is an error naming it", "[config]") {
  const std::pair<const char*, const char*> required[] = {
      {"model", "vocab_size"}, {"model", "d_model"}, {"model", "n_layers"}, {"model", "n_heads"},
      {"model", "ffn_hidden"}, {"data", "train"},    {"data", "seq_len"},   {"train", "steps"}};
  for (const auto& [section, key] : required) {
    INFO(section << "." << key);
    CHECK_THAT(error_from_json(without(section, key)), Contains(std::string(section) + "." + key + ": required"));
  }
  json j = minimal();
  j.erase("model");
  CHECK_THAT(error_from_json(j), Contains("model.vocab_size: required"));
}

TEST_CASE("rules relating several fields are checked after all fields are read", "[config]") {
  CHECK_THAT(error_from_json(patched({{"model", {{"d_model", 250}, {"n_heads", 8}}}})),
             Contains("model.d_model (250) must be divisible by model.n_heads (8)"));
  CHECK_THAT(error_from_json(patched({{"model", {{"n_heads", 8}, {"d_model", 128}, {"n_kv_heads", 3}}}})),
             Contains("model.n_heads (8) must be divisible by model.n_kv_heads (3)"));
  CHECK_THAT(error_from_json(patched({{"model", {{"d_model", 28}}}})),  // head dimension 7
             Contains("model.d_model / model.n_heads = 7 (the head dimension) must be even for rotary embeddings "
                      "(RoPE)"));
  CHECK_THAT(error_from_json(
                 patched({{"data", {{"seq_len", 256}}}, {"train", {{"micro_batch", 2}, {"batch_tokens", 1000}}}})),
             Contains("train.batch_tokens (1000) must be a multiple of train.micro_batch * data.seq_len (512)"));
  CHECK_THAT(error_from_json(patched({{"train", {{"lr", 0.01}, {"min_lr", 0.1}}}})),
             Contains("train.min_lr (0.1) must be <= train.lr (0.01)"));
  CHECK_THAT(error_from_json(patched({{"train", {{"warmup_steps", 200}, {"steps", 100}}}})),
             Contains("train.warmup_steps (200) must be <= train.steps (100)"));
}

TEST_CASE("config_from_json rejects extends", "[config]") {
  json j = minimal();
  j["extends"] = "base.json";
  CHECK_THAT(error_from_json(j), Contains("extends: only allowed in config files read by load_config"));
}

TEST_CASE("extends merges a parent file, the child winning, objects merged recursively", "[config]") {
  TempDir dir;
  json base = minimal();
  base["train"]["lr"] = 1e-3;
  base["train"]["warmup_steps"] = 5;
  dir.write("configs/base.json", base.dump(2));
  std::string child = dir.write("configs/child.json", R"({
    "extends": "base.json",
    "description": "the base with a smaller learning rate",
    "model": {"n_layers": 4},
    "train": {"lr": 5e-4}
  })");
  l3c::Config c = l3c::load_config(child);
  CHECK(c.model.n_layers == 4);       // child wins
  CHECK(c.model.d_model == 64);       // the rest of the parent's model section kept
  CHECK(c.train.lr == 5e-4);
  CHECK(c.train.warmup_steps == 5);
  CHECK(c.data.train == "data/tiny/train_*.bin");
}

TEST_CASE("extends chains over two levels with paths relative to each file", "[config]") {
  TempDir dir;
  json root = minimal();
  root["train"]["lr"] = 1e-3;
  dir.write("configs/base/root.json", root.dump());
  dir.write("configs/base/mid/mid.json", R"({"extends": "../root.json", "model": {"d_model": 128},
                                             "train": {"steps": 50}})");
  std::string leaf = dir.write("configs/exp/leaf.json", R"({"extends": "../base/mid/mid.json",
                                                            "train": {"steps": 70}})");
  l3c::Config c = l3c::load_config(leaf);
  CHECK(c.model.d_model == 128);
  CHECK(c.train.steps == 70);
  CHECK(c.train.lr == 1e-3);
  CHECK(c.model.vocab_size == 256);

  // Relative to the file, not to the working directory.
  fs::path cwd = fs::current_path();
  fs::current_path(dir.path / "configs");
  l3c::Config again = l3c::load_config("exp/leaf.json");
  fs::current_path(cwd);
  CHECK(again.train.steps == 70);
}

TEST_CASE("an extends cycle is an error showing the cycle", "[config]") {
  TempDir dir;
  std::string a = dir.write("a.json", R"({"extends": "sub/b.json"})");
  std::string b = dir.write("sub/b.json", R"({"extends": "../a.json"})");
  std::string message = user_error([&] { l3c::load_config(a); });
  CHECK_THAT(message, Contains("extends cycle: " + a + " -> " + b + " -> " + a));

  std::string self = dir.write("self.json", R"({"extends": "self.json"})");
  CHECK_THAT(user_error([&] { l3c::load_config(self); }), Contains("extends cycle: " + self + " -> " + self));
}

TEST_CASE("a missing parent file is an error naming it and the file that extends it", "[config]") {
  TempDir dir;
  std::string child = dir.write("child.json", R"({"extends": "gone.json"})");
  std::string parent = (dir.path / "gone.json").string();
  CHECK_THAT(user_error([&] { l3c::load_config(child); }),
             Contains("config file not found: " + parent + " (extended by " + child + ")"));
}

TEST_CASE("an error inside a parent file names that file", "[config]") {
  TempDir dir;
  dir.write("base.json", R"({"train": {"lr": "fast"}})");
  std::string child = dir.write("child.json", R"({"extends": "base.json"})");
  std::string parent = (dir.path / "base.json").string();
  CHECK_THAT(user_error([&] { l3c::load_config(child); }),
             Contains(parent + ": train.lr: expected a number, got string \"fast\""));
}

TEST_CASE("overrides set numbers, booleans, strings and paths", "[config]") {
  TempDir dir;
  std::string path = dir.write("x.json", minimal().dump());
  l3c::Config c = l3c::load_config(path, {"train.lr=3e-3", "model.tie_embeddings=true", "run.dir=runs/x",
                                          "data.train=some/path", "model.n_layers=6", "train.seed=7",
                                          "train.schedule=wsd", "run.dir=2024", "data.val=\"quoted\""});
  CHECK(c.train.lr == 3e-3);
  CHECK(c.model.tie_embeddings == true);
  CHECK(c.data.train == "some/path");
  CHECK(c.model.n_layers == 6);
  CHECK(c.train.seed == 7);
  CHECK(c.train.schedule == l3c::Schedule::Wsd);
  CHECK(c.run.dir == "2024");          // a string field takes a number-looking value as text; the last --set wins
  CHECK(c.data.val == "quoted");       // a JSON string literal is unquoted
  CHECK(l3c::load_config(path, {"data.val="}).data.val == "");
}

TEST_CASE("a list of strings is set as JSON or as comma-separated text, and checked", "[config]") {
  TempDir dir;
  std::string path = dir.write("x.json", minimal().dump());
  using List = std::vector<std::string>;
  CHECK(l3c::load_config(path).train.trainable.empty());
  CHECK(l3c::load_config(path, {"train.trainable=l3_table,norm"}).train.trainable == List{"l3_table", "norm"});
  CHECK(l3c::load_config(path, {R"(train.trainable=["model.l3.", "ffn"])"}).train.trainable == List{"model.l3.", "ffn"});
  CHECK(l3c::load_config(path, {"train.trainable=[]"}).train.trainable.empty());
  CHECK_THROWS_WITH(l3c::load_config(path, {"train.trainable=[1]"}), Catch::Contains("train.trainable[0]: expected a string"));
  CHECK_THROWS_WITH(l3c::load_config(path, {"train.on_nonfinite=ignore"}),
                    Catch::Contains("train.on_nonfinite: must be one of stop, skip"));
  CHECK(l3c::load_config(path, {"checkpoint.milestone_every=1000"}).checkpoint.milestone_every == 1000);
}

TEST_CASE("overrides apply after extends and before validation", "[config]") {
  TempDir dir;
  dir.write("base.json", minimal().dump());
  std::string child = dir.write("child.json", R"({"extends": "base.json", "train": {"lr": 1e-3}})");
  CHECK(l3c::load_config(child, {"train.lr=2e-3"}).train.lr == 2e-3);
  // An override can supply a missing required field, or break a rule.
  json partial = minimal();
  partial["train"].erase("steps");
  std::string partial_path = dir.write("partial.json", partial.dump());
  CHECK(l3c::load_config(partial_path, {"train.steps=3"}).train.steps == 3);
  CHECK_THAT(user_error([&] { l3c::load_config(child, {"train.lr=-1"}); }), Contains("train.lr: must be > 0, got -1"));
}

TEST_CASE("a malformed or unknown override is an error naming it", "[config]") {
  TempDir dir;
  std::string path = dir.write("x.json", minimal().dump());
  auto error_with = [&](const std::string& text) { return user_error([&] { l3c::load_config(path, {text}); }); };
  CHECK_THAT(error_with("train.lr"), Contains("--set train.lr: expected KEY=VALUE, e.g. --set train.lr=3e-4"));
  CHECK_THAT(error_with("=3"), Contains("--set =3: empty key; expected KEY=VALUE"));
  CHECK_THAT(error_with("model.foo=1"), Contains("--set model.foo=1: unknown key (known keys in model: vocab_size, "
                                                 "d_model,"));
  CHECK_THAT(error_with("optim.lr=1"), Contains("--set optim.lr=1: unknown key (keys are SECTION.KEY; known "
                                                "sections: model, data, train, eval, checkpoint, dist, run)"));
  CHECK_THAT(error_with("model=1"), Contains("--set model=1: unknown key (known keys in model: vocab_size"));
  CHECK_THAT(error_with("train.lr=abc"), Contains("--set train.lr=abc: train.lr: expected a number, got string "
                                                  "\"abc\""));
  CHECK_THAT(error_with("model.tie_embeddings=yes"),
             Contains("--set model.tie_embeddings=yes: model.tie_embeddings: expected true or false, got string "
                      "\"yes\""));
}

TEST_CASE("config_to_json round-trips exactly and lists every field in schema order", "[config]") {
  l3c::Config c = l3c::config_from_json(minimal());
  c.model.n_kv_heads = 2;
  c.model.rope_theta = 500000.0;
  c.model.norm_eps = 1e-6;
  c.model.tie_embeddings = true;
  c.model.init_std = 0.1 / 3.0;  // not exactly representable in few digits
  c.data.val = "data/val.bin";
  c.train.batch_tokens = 96;
  c.train.micro_batch = 3;
  c.train.lr = 1.0 / 3.0;
  c.train.min_lr = 1e-7;
  c.train.warmup_steps = 2;
  c.train.schedule = l3c::Schedule::Wsd;
  c.train.decay_fraction = 0.3;
  c.train.weight_decay = 0.0;
  c.train.beta1 = 0.8;
  c.train.beta2 = 0.999;
  c.train.eps = 1e-10;
  c.train.grad_clip = 0.0;
  c.train.seed = 18446744073709551615ull;
  c.train.threads = 3;
  c.train.dtype = l3c::DType::F64;
  c.train.on_nonfinite = l3c::NonFinitePolicy::Skip;
  c.train.trainable = {"attention", "model.layers.0."};
  c.eval.every = 5;
  c.eval.batches = 2;
  c.checkpoint.every = 4;
  c.checkpoint.keep = 1;
  c.checkpoint.milestone_every = 8;
  c.run.dir = "runs/round trip";

  nlohmann::ordered_json out = l3c::config_to_json(c);
  l3c::Config back = l3c::config_from_json(out);
  CHECK(l3c::config_to_json(back) == out);
  CHECK(back.model.init_std == c.model.init_std);
  CHECK(back.train.lr == c.train.lr);
  CHECK(back.train.seed == c.train.seed);
  CHECK(back.run.dir == c.run.dir);
  CHECK(back.train.trainable == c.train.trainable);

  std::vector<std::string> sections;
  for (const auto& item : out.items()) sections.push_back(item.key());
  CHECK(sections == std::vector<std::string>{"model", "data", "train", "eval", "checkpoint", "dist", "run"});
  std::vector<std::string> model_keys;
  for (const auto& item : out["model"].items()) model_keys.push_back(item.key());
  CHECK(model_keys == std::vector<std::string>{"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                                               "ffn_hidden", "rope_theta", "norm_eps", "tie_embeddings",
                                               "init_std"});
  CHECK(out["train"].size() == 24);  // ... table_lr_scale, table_weight_decay, ..., zero, on_nonfinite, trainable
  CHECK(out["checkpoint"].size() == 3);  // every, keep, milestone_every
  CHECK(out["data"].size() == 5);  // train, val, seq_len, shuffle, tokenizer
  CHECK(out["dist"].size() == 5);  // timeout, bucket_mb, row_sparse, nccl_bootstrap, shared_dir

  // A saved config reads back through load_config too.
  TempDir dir;
  std::string path = dir.write("resolved.json", out.dump(2));
  CHECK(l3c::config_to_json(l3c::load_config(path)) == out);
}

// ---- model.l3: a nested object with a list, optional as a whole ------------------------------------------

namespace {
// minimal() with a valid model.l3 (V = 256, 2 layers) plus the given keys of model.l3.
json with_l3(const json& extra = json::object()) {
  json j = minimal();
  j["model"]["l3"] = {{"after_layers", {0, 1}}, {"v", 1024}, {"k", 8}, {"allocation", {{"method", "uniform"}}}};
  for (const auto& [key, value] : extra.items()) j["model"]["l3"][key] = value;
  return j;
}
}  // namespace

TEST_CASE("model.l3 reads with derived sizes and defaults, and absent means a dense model", "[config][l3]") {
  l3c::Config dense = l3c::config_from_json(minimal());
  CHECK_FALSE(dense.model.l3.enabled());
  CHECK_FALSE(l3c::config_to_json(dense)["model"].contains("l3"));

  l3c::Config c = l3c::config_from_json(with_l3());
  const l3c::L3Config& l3 = c.model.l3;
  CHECK(l3.enabled());
  CHECK(l3.after_layers == std::vector<int64_t>{0, 1});
  CHECK(l3.v == 1024);
  CHECK(l3.k == 8);
  CHECK(l3.d_emb == 32);  // d_model / 2
  CHECK(l3.d_up == 256);  // 4 d_model
  CHECK_FALSE(l3.tie_kv);
  CHECK_FALSE(l3.residual);
  CHECK(l3.init_std == 0.02);
  CHECK(l3.allocation.method == l3c::AllocationMethod::Uniform);
  CHECK(l3.allocation.eot == -1);
  CHECK(l3c::config_from_json(with_l3({{"tie_kv", true}})).model.l3.d_emb == 64);  // tied: d_model

  // The round trip keeps model.l3, nested, after the other model keys.
  nlohmann::ordered_json out = l3c::config_to_json(c);
  CHECK(out["model"]["l3"]["allocation"]["method"] == "uniform");
  CHECK(json(out["model"]["l3"]["after_layers"]) == json::array({0, 1}));
  CHECK(l3c::config_to_json(l3c::config_from_json(out)) == out);
  std::vector<std::string> keys;
  for (const auto& item : out["model"]["l3"].items()) keys.push_back(item.key());
  CHECK(keys == std::vector<std::string>{"after_layers", "v", "k", "d_emb", "d_up", "tie_kv", "residual", "init_std",
                                         "mix_init", "allocation"});
}

TEST_CASE("model.l3 errors name the field", "[config][l3]") {
  CHECK_THAT(error_from_json(with_l3({{"k", 0}})), Contains("model.l3.k: must be >= 1, got 0"));
  CHECK_THAT(error_from_json(with_l3({{"after_layers", {0, 7}}})),
             Contains("model.l3.after_layers: layer 7 does not exist (model.n_layers = 2"));
  CHECK_THAT(error_from_json(with_l3({{"after_layers", {1, 1}}})),
             Contains("model.l3.after_layers: must be strictly increasing"));
  CHECK_THAT(error_from_json(with_l3({{"after_layers", json::array()}})),
             Contains("model.l3.after_layers: must not be empty"));
  CHECK_THAT(error_from_json(with_l3({{"after_layers", {-1}}})),
             Contains("model.l3.after_layers: every entry must be >= 0, got -1"));
  CHECK_THAT(error_from_json(with_l3({{"after_layers", 1}})),
             Contains("model.l3.after_layers: expected a list of integers, got 1"));
  CHECK_THAT(error_from_json(with_l3({{"after_layers", {0, "one"}}})),
             Contains("model.l3.after_layers[1]: expected an integer, got string \"one\""));
  CHECK_THAT(error_from_json(with_l3({{"v", 100}})),
             Contains("model.l3.v: must be >= model.vocab_size (256) so that every token owns a row, got 100"));
  CHECK_THAT(error_from_json(with_l3({{"v", 2049}})),
             Contains("model.l3.v: must be <= model.vocab_size * model.l3.k = 256 * 8 = 2048"));
  CHECK_THAT(error_from_json(with_l3({{"tie_kv", true}, {"d_emb", 32}})),
             Contains("model.l3.tie_kv: tied keys and values need model.l3.d_emb == model.d_model (64), got d_emb 32"));
  CHECK_THAT(error_from_json(with_l3({{"allocation", {{"method", "lzw"}}}})),
             Contains("model.l3.allocation: method \"lzw\" needs data (token shards to compute it from) or path"));
  CHECK_THAT(error_from_json(with_l3({{"allocation", {{"data", "a.bin"}, {"path", "b.safetensors"}}}})),
             Contains("model.l3.allocation: give data"));
  CHECK_THAT(error_from_json(with_l3({{"allocation", {{"method", "bpe"}}}})),
             Contains("model.l3.allocation.method: must be one of lzw, uniform, unigram; got \"bpe\""));
  CHECK_THAT(error_from_json(with_l3({{"vv", 3}})),
             Contains("model.l3.vv: unknown key (known keys in model.l3: after_layers, v, k, d_emb, d_up, tie_kv, "
                      "residual, init_std, mix_init, allocation)"));
  CHECK_THAT(error_from_json(with_l3({{"allocation", {{"file", "x"}}}})),
             Contains("model.l3.allocation.file: unknown key (known keys in model.l3.allocation: method, data, path, "
                      "eot)"));
  CHECK_THAT(error_from_json(with_l3({{"allocation", 3}})), Contains("model.l3.allocation: expected an object, got 3"));
  json j = minimal();
  j["model"]["l3"] = {{"v", 1024}};
  CHECK_THAT(error_from_json(j), Contains("model.l3.after_layers: required"));
  j["model"]["l3"] = "yes";
  CHECK_THAT(error_from_json(j), Contains("model.l3: expected an object, got string \"yes\""));
}

TEST_CASE("overrides with --set reach nested model.l3 keys, lists included", "[config][l3]") {
  TempDir dir;
  std::string path = dir.write("l3.json", with_l3().dump());
  l3c::Config c = l3c::load_config(path, {"model.l3.k=16", "model.l3.after_layers=[1]", "model.l3.allocation.method=lzw",
                                          "model.l3.allocation.data=data/train.bin"});
  CHECK(c.model.l3.k == 16);
  CHECK(c.model.l3.after_layers == std::vector<int64_t>{1});
  CHECK(c.model.l3.allocation.data == "data/train.bin");
  // On a dense config, --set creates model.l3, which then needs its required keys.
  std::string dense = dir.write("dense.json", minimal().dump());
  CHECK_THAT(user_error([&] { l3c::load_config(dense, {"model.l3.k=16"}); }), Contains("model.l3.after_layers: required"));
  CHECK_THAT(user_error([&] { l3c::load_config(path, {"model.l3.kk=16"}); }),
             Contains("--set model.l3.kk=16: unknown key (known keys in model.l3: after_layers, v, k"));
  CHECK_THAT(user_error([&] { l3c::load_config(path, {"model.l3.allocation.x=1"}); }),
             Contains("(known keys in model.l3.allocation: method, data, path, eot)"));
  CHECK_THAT(user_error([&] { l3c::load_config(path, {"model.l3.k=0"}); }), Contains("model.l3.k: must be >= 1, got 0"));
  CHECK_THAT(user_error([&] { l3c::load_config(path, {"model.l3.after_layers=[0,9]"}); }),
             Contains("model.l3.after_layers: layer 9 does not exist"));
}

TEST_CASE("the shipped L3 configs load, and extends merges model.l3 into the dense parent", "[config][l3]") {
  const std::string root = L3C_SOURCE_DIR;
  l3c::Config tiny = l3c::load_config(root + "/configs/tiny/l3.json");
  CHECK(tiny.model.l3.enabled());
  CHECK(tiny.model.d_model == 256);  // from tiny/dense.json
  CHECK(tiny.model.l3.v == 4096);
  l3c::Config paper = l3c::load_config(root + "/configs/paper/l3_800m.json");
  CHECK(paper.model.l3.after_layers == std::vector<int64_t>{3, 15});
  CHECK(paper.model.l3.k == 512);
  CHECK(paper.model.vocab_size == 180000);
}

TEST_CASE("sizes beyond l3c's limits are refused before anything is allocated for them", "[config][limits]") {
  // n_layers or experts in the billions grew memory without bound before the memory check ran.
  CHECK_THAT(error_from_json(with("model", "n_layers", 2000000000)),
             Contains("model.n_layers: must be <= 1024") && Contains("limits.h") && Contains("got 2000000000"));
  json moe = minimal();
  moe["model"]["moe"] = {{"layers", "all"}, {"experts", 1000000000}, {"expert_hidden", 64}};
  CHECK_THAT(error_from_json(moe), Contains("model.moe.experts: must be <= 4096"));
  CHECK_THAT(error_from_json(with("model", "vocab_size", int64_t{1} << 40)), Contains("model.vocab_size: must be <= "));
  CHECK_THAT(error_from_json(with("data", "seq_len", int64_t{1} << 50)), Contains("data.seq_len: must be <= "));
  json l3 = minimal();
  l3["model"]["l3"] = {{"after_layers", {0, 5000}}, {"v", 256}, {"k", 4}};
  CHECK_THAT(error_from_json(l3), Contains("model.l3.after_layers") && Contains("<= 1024"));
  // Within every per-field limit, a model whose parameter count overflows is refused while it is described.
  json huge = minimal();
  huge["model"]["vocab_size"] = int64_t{1} << 24;
  huge["model"]["d_model"] = int64_t{1} << 20;
  huge["model"]["n_heads"] = 1 << 10;
  const l3c::Config config = l3c::config_from_json(huge);
  CHECK_THAT(user_error([&] { l3c::Llama model(config.model); }),
             Contains("more than 4398046511104 parameters") && Contains("model.embed_tokens.weight"));
}

TEST_CASE("numbers no double holds and nesting beyond the limit are errors naming the file", "[config][limits]") {
  TempDir dir;
  // 1e400 was an internal error (exit 1): nlohmann::json reports it as out_of_range, not as a parse error.
  const std::string big = dir.write("big.json", R"({"model": {"vocab_size": 1e400}})");
  CHECK_THAT(user_error([&] { l3c::load_config(big); }), Contains("big.json") && Contains("malformed JSON") &&
                                                             Contains("1e400"));
  CHECK_THAT(user_error([&] { l3c::read_json_file(big); }), Contains("big.json: malformed JSON"));
  // 100,000 levels overflowed the stack while the error message was built.
  const std::string deep =
      dir.write("deep.json", R"({"model": {"vocab_size": )" + std::string(100000, '[') + std::string(100000, ']') + "}}");
  CHECK_THAT(user_error([&] { l3c::load_config(deep); }), Contains("deep.json:1:") && Contains("nested deeper than 128"));
  const std::string fine = dir.write("fine.json", minimal().dump());
  CHECK_THAT(user_error([&] { l3c::load_config(fine, {"train.lr=" + std::string(100000, '[')}); }),
             Contains("train.lr") && Contains("nested deeper than 128"));
  CHECK_THAT(user_error([&] { l3c::load_config(fine, {"train.lr=1e400"}); }), Contains("train.lr: expected a number"));
  // A value that is not valid UTF-8 (found by fuzz_config): the message shows it with U+FFFD instead of throwing
  // from inside the error path.
  CHECK_THAT(user_error([&] { l3c::load_config(fine, {"train.lr=4e-\x7f\x8e"}); }), Contains("train.lr: expected a number"));
  // Escaped quotes and brackets inside strings do not count as nesting.
  CHECK(l3c::json_depth_exceeded(R"({"a": "[[[[\"[[[["})", 2) == std::string_view::npos);
  CHECK(l3c::json_depth_exceeded("[[[1]]]", 2) == 2);
}
