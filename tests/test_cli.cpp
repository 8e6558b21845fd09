// End-to-end tests of the `l3c` command: every kind of bad input ends with one clear message and
// exit code 2; a short training run on Tiny Shakespeare learns; its run folder is usable by eval,
// generate and the Python safetensors package; inspect and bench print their JSON line.
#include <catch2/catch.hpp>

#include "test_util.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "data/shard.h"
#include "kernels/device.h"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

using Result = l3c::test::CommandResult;
using namespace l3c::test;  // files, commands, the l3c binary and its errors

// A small valid config whose data lives in `dir`.
std::string small_config(const fs::path& dir) {
  std::vector<uint32_t> tokens(5000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>((i * 7) % 31);
  l3c::write_shard((dir / "train.bin").string(), tokens);
  return R"({
  "model": {"vocab_size": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64},
  "data": {"train": ")" + (dir / "train.bin").string() + R"(", "seq_len": 16},
  "train": {"steps": 3, "batch_tokens": 64, "micro_batch": 2, "lr": 1e-3},
  "run": {"dir": ")" + (dir / "run").string() + R"("}
})";
}

// Writes `text` to dir/c.json and returns its path.
fs::path write_config(const fs::path& dir, const std::string& text) {
  const fs::path config = dir / "c.json";
  write_text(config, text);
  return config;
}

// Runs l3c with `args`; it must exit 0 (the output is shown where it does not).
Result l3c_ok(const std::string& args) {
  const Result r = run_l3c(args);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return r;
}

// The same for `args` that ask for --json: the JSON line.
nlohmann::json l3c_json(const std::string& args) { return last_json_line(l3c_ok(args).output); }

// The options of `l3c eval` that read the run folder (or checkpoint) `run` and the shard `data`.
std::string eval_inputs(const fs::path& run, const fs::path& data) {
  return "--checkpoint " + run.string() + " --data " + data.string();
}

}  // namespace

TEST_CASE("bad configs and command lines exit 2 with one clear message", "[cli]") {
  const fs::path dir = fresh_dir("bad_config");
  const std::string good = small_config(dir);
  const fs::path config = dir / "c.json";

  SECTION("malformed JSON names file, line and column") {
    write_text(config, "{\n  \"model\": {\n    \"vocab_size\": 32,,\n  }\n}\n");
    check_user_error(run_l3c("train " + config.string()), "c.json:3:");
    check_user_error(run_l3c("train " + config.string()), "malformed JSON");
  }
  SECTION("unknown key") {
    std::string misspelt = good;
    misspelt.replace(misspelt.find("\"d_model\""), 9, "\"d_modle\"");
    write_text(config, misspelt);
    check_user_error(run_l3c("train " + config.string()), "model.d_modle: unknown key");
    write_text(config, good);
    check_user_error(run_l3c("train " + config.string() + " --set model.d_modle=3"), "model.d_modle=3: unknown key");
  }
  SECTION("wrong type") {
    write_text(config, good);
    check_user_error(run_l3c("inspect " + config.string() + " --set train.lr=fast"), "train.lr: expected a number");
  }
  SECTION("out-of-range value") {
    write_text(config, good);
    check_user_error(run_l3c("train " + config.string() + " --set train.steps=0"), "train.steps: must be >= 1");
  }
  SECTION("d_model not divisible by n_heads") {
    write_text(config, good);
    check_user_error(run_l3c("inspect " + config.string() + " --set model.n_heads=3"),
                     "model.d_model (32) must be divisible by model.n_heads (3)");
  }
  SECTION("a model that does not fit in memory") {
    write_text(config, good);
    check_user_error(run_l3c("train " + config.string() +
                             " --set model.d_model=16384 --set model.ffn_hidden=65536 --set model.n_layers=64"),
                     "of memory");
  }
  SECTION("a device this build or this machine cannot run on") {
    write_text(config, good);
    if (!l3c::built_with_cuda())
      check_user_error(run_l3c("train " + config.string() + " --device cuda"), "built without the CUDA backend");
    else if (l3c::cuda_device_count() == 0)
      check_user_error(run_l3c("train " + config.string() + " --device cuda"), "no GPU is visible");
    check_user_error(run_l3c("train " + config.string() + " --device tpu"), "--device: must be one of auto, cpu, cuda; got \"tpu\"");
    check_user_error(run_l3c("bench " + config.string() + " --device cpu --set train.precision=bf16"),
                     "train.precision \"bf16\" needs the GPU");
    check_user_error(run_l3c("train " + config.string() + " --set train.precision=bf16 --set train.dtype=f64"),
                     "train.dtype must be \"f32\"");
  }
  SECTION("missing config file") {
    check_user_error(run_l3c("train " + (dir / "absent.json").string()), "config file not found");
  }
  SECTION("unknown command and unknown option") {
    check_user_error(run_l3c("fly"), "unknown command 'fly'");
    write_text(config, good);
    check_user_error(run_l3c("train " + config.string() + " --speed 3"), "unknown option --speed");
  }
}

TEST_CASE("bad data exits 2 naming the shard, before anything is written", "[cli]") {
  const fs::path dir = fresh_dir("bad_data");
  const fs::path config = write_config(dir, small_config(dir));
  const std::string shard = (dir / "train.bin").string();

  SECTION("missing shard") {
    check_user_error(run_l3c("train " + config.string() + " --set data.train=" + (dir / "none.bin").string()),
                     "data.train: no shard");
  }
  SECTION("wrong magic") {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    const int32_t bad = 7;
    f.write(reinterpret_cast<const char*>(&bad), 4);
    f.close();
    check_user_error(run_l3c("train " + config.string()), "bad magic 7");
  }
  SECTION("truncated shard") {
    fs::resize_file(shard, 1024 + 100);
    check_user_error(run_l3c("train " + config.string()), "truncated shard");
  }
  SECTION("token id out of range for the model") {
    check_user_error(run_l3c("train " + config.string() + " --set model.vocab_size=16"),
                     "out of range for model.vocab_size 16");
  }
  CHECK_FALSE(fs::exists(dir / "run" / "model.safetensors"));
  CHECK_FALSE(fs::exists(dir / "run" / "metrics.jsonl"));
}

TEST_CASE("a finished run is never overwritten, and eval rejects a folder without weights", "[cli]") {
  const fs::path dir = fresh_dir("no_overwrite");
  const fs::path config = write_config(dir, small_config(dir));
  l3c_ok("train " + config.string());
  const auto before = fs::last_write_time(dir / "run" / "model.safetensors");
  check_user_error(run_l3c("train " + config.string()), "already holds a run");
  CHECK(fs::last_write_time(dir / "run" / "model.safetensors") == before);
  fs::create_directories(dir / "empty");
  check_user_error(run_l3c("eval " + eval_inputs(dir / "empty", dir / "train.bin")), "config.json: missing");
}

TEST_CASE("inspect and bench print one JSON object as their last line", "[cli]") {
  const fs::path dir = fresh_dir("json");
  const fs::path config = write_config(dir, small_config(dir));
  const auto j = l3c_json("inspect " + config.string() + " --json");
  // 2 x (32 x 32) embeddings + 2 layers x (attention 32x32 + 2 x 16x32 + 32x32, FFN 3 x 64x32, 2 norms) + norm
  CHECK(j["total_params"] == 2 * 32 * 32 + 2 * (2 * 1024 + 2 * 512 + 3 * 2048 + 64) + 32);
  CHECK(j["memory_bytes"]["total"].get<int64_t>() > 0);
  const auto b = l3c_json("bench " + config.string() + " --steps 2 --warmup 1 --json");
  CHECK(b["tokens_per_second"].get<double>() > 0);
  CHECK(b["tokens_per_step"] == 64);
  CHECK(b["mfu"].get<double>() > 0);
}

TEST_CASE("generate: prompts from a file in batches, L3 tables in memory or mapped alike, bench --generate, bad input",
          "[cli][infer]") {
  const fs::path dir = fresh_dir("generate");
  std::vector<uint32_t> text(4000);
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<uint32_t>("abcdefgh ,.\n"[(i * 7 + i / 5) % 12]);
  l3c::write_shard((dir / "train.bin").string(), text);
  const fs::path config = dir / "c.json";
  write_text(config, R"({
  "model": {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
            "l3": {"after_layers": [0], "v": 512, "k": 4, "d_emb": 16, "d_up": 32, "allocation": {"method": "uniform"}}},
  "data": {"train": ")" + (dir / "train.bin").string() + R"(", "seq_len": 24},
  "train": {"steps": 3, "batch_tokens": 96, "micro_batch": 4, "lr": 1e-3},
  "run": {"dir": ")" + (dir / "run").string() + R"("}
})");
  REQUIRE(run_l3c("train " + config.string()).exit_code == 0);
  const std::string run = (dir / "run").string();
  write_text(dir / "prompts.txt", "abc\nhead, \nx\n");
  auto generate_json = [&](const std::string& extra) {
    return l3c_json("generate --checkpoint " + run + " --prompts " + (dir / "prompts.txt").string() +
                    " --tokens 30 --temperature 0 --json " + extra)["results"];
  };
  const auto in_memory = generate_json("--batch 2");
  REQUIRE(in_memory.size() == 3);
  CHECK(in_memory[1]["text"].get<std::string>().rfind("head, ", 0) == 0);
  CHECK(in_memory[0]["generated_tokens"] == 30);  // past the context of 24: the window slides
  CHECK(generate_json("--batch 3 --l3-tables mmap") == in_memory);
  CHECK(generate_json("--batch 1 --l3-tables host") == in_memory);
  const Result streamed = run_l3c("generate --checkpoint " + run + " --prompt abc --tokens 5 --temperature 0");
  CHECK(streamed.exit_code == 0);
  CHECK_THAT(streamed.output, Contains("abc"));  // the prompt, then the continuation's raw bytes as they come

  const auto b = l3c_json("bench --generate " + run + " --batch 2 --prompt-tokens 8 --new-tokens 8 --repeats 1 "
                          "--l3-tables mmap --cold --json");
  CHECK(b["decode_tokens_per_second"].get<double>() > 0);
  CHECK(b["page_cache"] == "dropped");
  CHECK(b["table_bytes_in_memory"] == 0);
  CHECK(b["l3_bytes_per_token"].get<double>() > 0);
  const Result random = run_l3c("bench --generate " + config.string() + " --prompt-tokens 4 --new-tokens 4 --repeats 1 --json");
  REQUIRE(random.exit_code == 0);
  CHECK(last_json_line(random.output)["random_weights"] == true);

  write_text(dir / "empty.txt", "");
  check_user_error(run_l3c("generate --checkpoint " + run + " --prompts " + (dir / "empty.txt").string()), "no prompts");
  check_user_error(run_l3c("generate --checkpoint " + run + " --top-p 0"), "--top-p: must be in (0, 1], got 0");
  check_user_error(run_l3c("generate --checkpoint " + run + " --top-p 1.01"), "--top-p: must be in (0, 1]");
  check_user_error(run_l3c("generate --checkpoint " + run + " --prompt " + std::string(30, 'a')),
                   "the prompt is 30 tokens long: the model's context (data.seq_len) is 24 positions");
  check_user_error(run_l3c("generate --checkpoint " + run + " --tokenizer " + (dir / "no_tokenizer").string()),
                   "no_tokenizer");
  check_user_error(run_l3c("generate --checkpoint " + run + " --l3-tables disk"),
                   "--l3-tables: must be one of device, host, mmap; got \"disk\"");
  check_user_error(run_l3c("bench --generate " + run + " --batch 100000000 --prompt-tokens 8 --new-tokens 8"),
                   "bytes: KV cache");
  check_user_error(run_l3c("bench --generate " + run + " --cold"), "--cold: only with --l3-tables mmap");
}

TEST_CASE("training the tiny dense config on Tiny Shakespeare beats the unigram entropy", "[cli][train][slow]") {
  const fs::path shakespeare = fs::path(L3C_SOURCE_DIR) / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt";
  REQUIRE(fs::exists(shakespeare));
  const fs::path dir = fresh_dir("shakespeare");
  l3c_ok("prepare --out " + (dir / "data").string() + " " + shakespeare.string());

  // The byte unigram entropy of Tiny Shakespeare is 3.31 nats; a model that learned nothing about
  // context cannot go below it.
  const double unigram_entropy = 3.31;
  const fs::path run = dir / "run";
  const std::string config = std::string(L3C_SOURCE_DIR) + "/configs/tiny/dense.json";
  const Result train = run_l3c(
      "train " + config + " --json --set train.steps=40 --set train.warmup_steps=5 --set train.batch_tokens=2048" +
      " --set eval.batches=4 --set data.train=" + (dir / "data" / "train_000000.bin").string() +
      " --set data.val=" + (dir / "data" / "val_000000.bin").string() + " --set run.dir=" + run.string());
  INFO(train.output);
  REQUIRE(train.exit_code == 0);
  const auto summary = last_json_line(train.output);
  const double val_loss = summary["final_val_loss"].get<double>();
  CHECK(val_loss < 0.85 * unigram_entropy);

  // The run folder: resolved config, one metrics line per step plus validation and summary, weights.
  CHECK(fs::exists(run / "config.json"));
  std::ifstream metrics(run / "metrics.jsonl");
  int step_lines = 0;
  for (std::string line; std::getline(metrics, line);)
    if (nlohmann::json::parse(line).contains("grad_norm")) ++step_lines;
  CHECK(step_lines == 40);

  // eval over the same validation windows reproduces the training run's validation loss.
  const Result eval = run_l3c("eval --json --batches 4 " + eval_inputs(run, dir / "data" / "val_000000.bin"));
  INFO(eval.output);
  REQUIRE(eval.exit_code == 0);
  CHECK(last_json_line(eval.output)["loss"].get<double>() == Approx(val_loss).epsilon(1e-6));

  const Result sample = run_l3c("generate --json --tokens 40 --prompt ROMEO: --checkpoint " + run.string());
  INFO(sample.output);
  REQUIRE(sample.exit_code == 0);
  CHECK(last_json_line(sample.output)["text"].get<std::string>().size() == 6 + 40);

  // The weights load with the Python safetensors package under their Hugging Face names.
  const std::string python =
      "python3 -c \"from safetensors.numpy import load_file; w = load_file('" + (run / "model.safetensors").string() +
      "'); print(len(w), w['model.layers.3.mlp.down_proj.weight'].shape, w['lm_head.weight'].dtype)\" 2>&1";
  FILE* pipe = ::popen(python.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[512] = {0};
  const size_t n = std::fread(buffer, 1, sizeof buffer - 1, pipe);
  const int status = ::pclose(pipe);
  const std::string out(buffer, n);
  INFO(out);
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(out, Contains("39 (256, 688) float32"));
}

// ---- Large Lookup Layers: allocate, train, inspect, and bad allocations ------------------------------------

namespace {
// A small model (byte-level vocabulary) with one L3 layer after layer 1 whose LZW allocation comes from
// the training shard (5000 ids below 31), written into `dir`.
std::string small_l3_config(const fs::path& dir) {
  std::vector<uint32_t> tokens(5000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>((i * 7 + i / 13) % 31);
  l3c::write_shard((dir / "train.bin").string(), tokens);
  return R"({
  "model": {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
            "l3": {"after_layers": [1], "v": 512, "k": 4, "d_emb": 16, "d_up": 32,
                   "allocation": {"method": "lzw", "data": ")" + (dir / "train.bin").string() + R"("}}},
  "data": {"train": ")" + (dir / "train.bin").string() + R"(", "seq_len": 16},
  "train": {"steps": 3, "batch_tokens": 64, "micro_batch": 2, "lr": 1e-3},
  "run": {"dir": ")" + (dir / "run").string() + R"("}
})";
}

// Overwrites the I32 tensor `name` of a safetensors file with `values`.
void patch_i32_tensor(const fs::path& path, const std::string& name, const std::vector<int32_t>& values) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  uint64_t header_len = 0;
  f.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, ' ');
  f.read(header.data(), static_cast<std::streamsize>(header_len));
  const auto begin = nlohmann::json::parse(header)[name]["data_offsets"][0].get<uint64_t>();
  f.seekp(static_cast<std::streamoff>(8 + header_len + begin));
  f.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(4 * values.size()));
}
}  // namespace

TEST_CASE("l3c allocate writes an allocation and its summary, and sizes outside V <= v <= V*k exit 2", "[cli][l3]") {
  const fs::path dir = fresh_dir("allocate");
  small_l3_config(dir);  // writes train.bin
  const std::string shard = (dir / "train.bin").string(), out = (dir / "alloc.safetensors").string();
  const auto j = l3c_json("allocate --data " + shard + " --vocab-size 32 --v 100 --k 8 --out " + out + " --json");
  CHECK(j["method"] == "lzw");
  CHECK(j["v"] == 100);
  CHECK(j["k"] == 8);
  CHECK(j["rows_allocated"] == 100);
  CHECK(j["corpus"]["tokens_parsed"] == 5000);
  CHECK(j["corpus"]["codewords"].get<int64_t>() > 32);
  CHECK(j["histogram"].size() >= 2);
  CHECK(fs::exists(out));
  CHECK(nlohmann::json::parse(std::ifstream(dir / "alloc.json"))["v"] == 100);

  check_user_error(run_l3c("allocate --data " + shard + " --vocab-size 32 --v 20 --k 8 --out " + out),
                   "v = 20 is smaller than the vocabulary size 32");
  check_user_error(run_l3c("allocate --data " + shard + " --vocab-size 32 --v 300 --k 8 --out " + out),
                   "v = 300 is larger than vocabulary size * k = 32 * 8 = 256");
  check_user_error(run_l3c("allocate --data " + shard + " --vocab-size 32 --v 40 --k 0 --out " + out),
                   "--k: must be >= 1, got 0");
  check_user_error(run_l3c("allocate --data " + shard + " --v 40 --k 2 --out " + out), "--vocab-size is required");
  check_user_error(run_l3c("allocate --data " + shard + " --vocab-size 16 --v 40 --k 4 --out " + out),
                   "out of range for the vocabulary size 16");
  // The manifest beside the shards gives the vocabulary size and the end-of-text id.
  write_text(dir / "manifest.json", R"({"tokenizer": {"vocab_size": 32, "eot_id": 30}})");
  const Result m = run_l3c("allocate --data " + shard + " --v 64 --k 4 --method unigram --out " + out + " --json");
  INFO(m.output);
  REQUIRE(m.exit_code == 0);
  CHECK(last_json_line(m.output)["eot_id"] == 30);
  CHECK(last_json_line(m.output)["method"] == "unigram");
}

TEST_CASE("training an L3 model computes its allocation, saves it with the weights, and evaluates", "[cli][l3][slow]") {
  const fs::path dir = fresh_dir("l3_train");
  const fs::path config = write_config(dir, small_l3_config(dir));
  const auto i = l3c_json("inspect " + config.string() + " --json");
  // the tables (512 rows of 32 + 16) count k = 4 rows as active
  CHECK(i["total_params"].get<int64_t>() - i["active_params"].get<int64_t>() == (512 - 4) * (32 + 16));
  CHECK(i["sparsity"].get<double>() > 1.0);

  const Result train = run_l3c("train " + config.string() + " --json");
  INFO(train.output);
  REQUIRE(train.exit_code == 0);
  CHECK(fs::exists(dir / "run" / "allocation.safetensors"));
  const std::string python =
      "python3 -c \"from safetensors.numpy import load_file; w = load_file('" + (dir / "run" / "model.safetensors").string() +
      "'); a = w['model.l3.0.alloc']; print(a.dtype, a.shape, a.sum(), w['model.l3.0.w_k'].shape)\" 2>&1";
  FILE* pipe = ::popen(python.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[512] = {0};
  const size_t n = std::fread(buffer, 1, sizeof buffer - 1, pipe);
  ::pclose(pipe);
  CHECK_THAT(std::string(buffer, n), Contains("int32 (256,) 512 (512, 32)"));
  const Result eval = run_l3c("eval --json " + eval_inputs(dir / "run", dir / "train.bin"));
  INFO(eval.output);
  CHECK(eval.exit_code == 0);

  // A checkpoint whose allocation was damaged (a count of 0) is refused, naming the tensor.
  std::vector<int32_t> counts(256, 2);
  counts[3] = 0;
  counts[4] = 4;
  patch_i32_tensor(dir / "run" / "model.safetensors", "model.l3.0.alloc", counts);
  check_user_error(run_l3c("eval " + eval_inputs(dir / "run", dir / "train.bin")),
                   "model.l3.0.alloc: token 3 owns 0 rows");
}

TEST_CASE("bad L3 configs and allocation files exit 2 before anything is written", "[cli][l3]") {
  const fs::path dir = fresh_dir("l3_bad");
  const fs::path config = write_config(dir, small_l3_config(dir));
  const std::string shard = (dir / "train.bin").string();
  auto with_file = [&](const std::string& file) {
    return " --set model.l3.allocation.data= --set model.l3.allocation.path=" + file;
  };
  // allocation files that do not fit the model (V = 256, v = 512, k = 4)
  const std::string wrong_vocab = (dir / "v300.safetensors").string(), wrong_sum = (dir / "s520.safetensors").string();
  REQUIRE(run_l3c("allocate --data " + shard + " --vocab-size 300 --v 600 --k 4 --out " + wrong_vocab).exit_code == 0);
  REQUIRE(run_l3c("allocate --data " + shard + " --vocab-size 256 --v 520 --k 4 --out " + wrong_sum).exit_code == 0);
  check_user_error(run_l3c("train " + config.string() + with_file(wrong_vocab)),
                   "covers 300 token ids but the vocabulary has 256");
  check_user_error(run_l3c("train " + config.string() + with_file(wrong_sum)),
                   "the counts sum to 520 rows but model.l3.v is 512");
  fs::resize_file(wrong_sum, fs::file_size(wrong_sum) - 10);
  check_user_error(run_l3c("train " + config.string() + with_file(wrong_sum)), "truncated");
  check_user_error(run_l3c("train " + config.string() + with_file((dir / "none.safetensors").string())),
                   "no such allocation file");
  // config errors
  check_user_error(run_l3c("train " + config.string() + " --set model.l3.after_layers=[5]"),
                   "model.l3.after_layers: layer 5 does not exist (model.n_layers = 2");
  check_user_error(run_l3c("train " + config.string() + " --set model.l3.v=100"),
                   "model.l3.v: must be >= model.vocab_size (256)");
  check_user_error(run_l3c("inspect " + config.string() + " --set model.l3.k=0"), "model.l3.k: must be >= 1, got 0");
  CHECK_FALSE(fs::exists(dir / "run" / "model.safetensors"));
  CHECK_FALSE(fs::exists(dir / "run" / "metrics.jsonl"));
}

// ---- Mixture-of-Experts: train, log the routing, inspect --match, bad inputs ---------------------------------

TEST_CASE("training a model with MoE and L3 layers logs each loss term and the expert load, and evaluates",
          "[cli][moe][slow]") {
  const fs::path dir = fresh_dir("moe_train");
  nlohmann::json config = nlohmann::json::parse(small_l3_config(dir));
  config["model"]["moe"] = {{"layers", {0}}, {"experts", 4}, {"top_k", 2}, {"expert_hidden", 32},
                            {"shared_expert_hidden", 16}};
  write_text(dir / "c.json", config.dump());
  const Result train = run_l3c("train " + (dir / "c.json").string() + " --json");
  INFO(train.output);
  REQUIRE(train.exit_code == 0);
  CHECK_THAT(train.output, Contains("(ce "));  // the console shows the total and the cross-entropy
  std::ifstream metrics(dir / "run" / "metrics.jsonl");
  std::string line;
  int steps = 0;
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    ++steps;
    CHECK(j["total_loss"].get<double>() == Approx(j["loss"].get<double>() + j["aux_loss"].get<double>()));
    REQUIRE(j["moe"].size() == 1);
    const auto& layer = j["moe"][0];
    CHECK(layer["layer"] == 0);
    // 4 experts, top-2: each expert receives between 0 and all of the tokens, 0.5 on average
    CHECK(layer["load_max"].get<double>() >= 0.5);
    CHECK(layer["load_min"].get<double>() <= 0.5);
    CHECK(layer["router_entropy"].get<double>() <= std::log(4.0) + 1e-9);
    CHECK(layer["load_balance_loss"].get<double>() >= 0.01 - 1e-9);  // alpha at perfect balance, more otherwise
  }
  CHECK(steps == 3);
  const Result eval = run_l3c("eval --json " + eval_inputs(dir / "run", dir / "train.bin"));
  INFO(eval.output);
  CHECK(eval.exit_code == 0);
}

TEST_CASE("inspect --match compares two models and sizes the experts for iso-sparsity", "[cli][moe]") {
  const fs::path dir = fresh_dir("moe_match");
  const fs::path source = fs::path(L3C_SOURCE_DIR) / "configs" / "tiny";
  const auto match =
      l3c_json("inspect " + (source / "moe.json").string() + " --match " + (source / "l3.json").string() + " --json")["match"];
  // the committed tiny MoE config is iso-sparse with the tiny L3 config within 5%
  CHECK(std::abs(match["active_diff_percent"].get<double>()) < 5.0);
  CHECK(std::abs(match["total_diff_percent"].get<double>()) < 5.0);
  // the suggestion lands within one expert's worth of both targets
  const auto s = match["suggestion"];
  CHECK(std::abs(s["active_params"].get<double>() / match["active_params"].get<double>() - 1.0) < 0.01);
  CHECK(std::abs(s["total_params"].get<double>() / match["total_params"].get<double>() - 1.0) < 0.1);
  check_user_error(run_l3c("inspect " + (source / "moe.json").string() + " --match " + (dir / "none.json").string()),
                   "config file not found");
  check_user_error(run_l3c("inspect " + (source / "moe.json").string() + " --set model.moe.top_k=6"),
                   "model.moe.top_k (6) must be <= model.moe.experts (5)");
  check_user_error(run_l3c("inspect " + (source / "moe.json").string() + " --set model.moe.layers=[7]"),
                   "model.moe.layers: layer 7 does not exist");
}

// ---- hostile input: every file and option l3c reads ---------------------------------------------------------

namespace {
// Exit 2 with exactly one `error:` line naming the problem (and no internal error).
void check_one_user_error(const Result& r, const std::string& message) {
  check_user_error(r, message);
  size_t lines = 0;
  for (size_t at = r.output.find("error: "); at != std::string::npos; at = r.output.find("error: ", at + 1))
    lines += at == 0 || r.output[at - 1] == '\n';
  CHECK(lines == 1);
}

// Rewrites the JSON header of a safetensors file (the data bytes stay as they are).
void rewrite_safetensors_header(const fs::path& path, const std::function<void(nlohmann::json&)>& change) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, length));
  change(header);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t new_length = text.size();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&new_length), 8);
  out << text << bytes.substr(8 + length);
}
}  // namespace

TEST_CASE("thread counts beyond the machine and sizes beyond l3c's limits are refused before anything starts",
          "[cli][limits]") {
  const fs::path dir = fresh_dir("threads");
  const fs::path config = write_config(dir, small_config(dir));
  // 100000 threads crashed inside OpenMP.
  check_one_user_error(run_l3c("train " + config.string() + " --set train.threads=100000"),
                       "train.threads: 100000 threads is more than");
  write_text(dir / "text.txt", "hello world\n");
  check_one_user_error(run_l3c("prepare --tokenizer bytes --out " + (dir / "out").string() + " --threads 100000 " +
                               (dir / "text.txt").string()),
                       "--threads: 100000 threads is more than");
  check_one_user_error(run_l3c("tokenizer train --vocab-size 300 --out " + (dir / "tok").string() +
                               " --threads 100000 " + (dir / "text.txt").string()),
                       "--threads: 100000 threads is more than");
  // Sizes from the command line are bounded like those of a config.
  check_one_user_error(run_l3c("allocate --data " + (dir / "train.bin").string() + " --v 64 --k 99999999 --out " +
                               (dir / "a.safetensors").string()),
                       "--k: must be <= 1048576 (l3c's limit), got 99999999");
  check_one_user_error(run_l3c("tokenizer train --vocab-size 999999999999 --out " + (dir / "tok").string() + " " +
                               (dir / "text.txt").string()),
                       "--vocab-size: must be <= 16777216");
  CHECK_FALSE(fs::exists(dir / "run"));
}

TEST_CASE("JSON that no parser state can hold is a user error naming the file", "[cli][limits]") {
  const fs::path dir = fresh_dir("json_limits");
  const fs::path config = dir / "c.json";
  std::string text = small_config(dir);
  text.replace(text.find("\"lr\": 1e-3"), 10, "\"lr\": 1e400");
  write_text(config, text);
  check_one_user_error(run_l3c("train " + config.string()), "c.json: malformed JSON: number overflow parsing '1e400'");
  write_text(config, "{\"model\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  check_one_user_error(run_l3c("inspect " + config.string()), "nested deeper than 128 levels");
  // A JSONL document with such a number.
  write_text(dir / "docs.jsonl", "{\"text\": \"fine\"}\n{\"text\": \"x\", \"score\": 1e400}\n");
  check_one_user_error(run_l3c("prepare --tokenizer bytes --out " + (dir / "out").string() + " " +
                               (dir / "docs.jsonl").string()),
                       "docs.jsonl:2: not a JSON object (number overflow");
}

TEST_CASE("prepare names a device or a FIFO as what it is, not as missing", "[cli]") {
  const fs::path dir = fresh_dir("special_files");
  check_one_user_error(run_l3c("prepare --tokenizer bytes --out " + (dir / "a").string() + " /dev/null"),
                       "/dev/null: a character device, not a file or folder");
  const fs::path fifo = dir / "pipe";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  check_one_user_error(run_l3c("prepare --tokenizer bytes --out " + (dir / "b").string() + " " + fifo.string()),
                       "pipe: a FIFO (named pipe), not a file or folder");
}

TEST_CASE("a weights file whose offsets wrap around is refused by eval, export and generate", "[cli][safetensors]") {
  const fs::path dir = fresh_dir("wrapped_offsets");
  const fs::path config = write_config(dir, small_config(dir));
  l3c_ok("train " + config.string());
  const fs::path weights = dir / "run" / "model.safetensors";
  // data_offsets near 2^64: data start + end wrapped around to a small number and passed the size check, and the
  // tensor pointed far outside the file.
  rewrite_safetensors_header(weights, [](nlohmann::json& header) {
    const uint64_t bytes = header["model.norm.weight"]["data_offsets"][1].get<uint64_t>() -
                           header["model.norm.weight"]["data_offsets"][0].get<uint64_t>();
    const uint64_t end = ~uint64_t{0} - 7;
    header["model.norm.weight"]["data_offsets"] = {end - bytes, end};
  });
  const std::string data = (dir / "train.bin").string();
  check_one_user_error(run_l3c("eval " + eval_inputs(dir / "run", data)),
                       "tensor model.norm.weight: data_offsets");
  check_one_user_error(run_l3c("export hf " + (dir / "run").string() + " " + (dir / "hf").string()), "overflows");
  check_one_user_error(run_l3c("generate --tokens 3 --checkpoint " + (dir / "run").string()), "overflows");
  rewrite_safetensors_header(weights, [](nlohmann::json& header) { header["model.norm.weight"]["shape"] = {-1}; });
  check_one_user_error(run_l3c("eval " + eval_inputs(dir / "run", data)),
                       "must be a non-negative integer, got -1");
}

TEST_CASE("a run folder that cannot be created or written names the system's reason", "[cli]") {
  const fs::path dir = fresh_dir("unwritable");
  const fs::path config = write_config(dir, small_config(dir));
  write_text(dir / "file", "not a folder");
  check_one_user_error(run_l3c("train " + config.string() + " --set run.dir=" + (dir / "file" / "run").string()),
                       "Not a directory");
}
