// Checkpoints, exact resume and faults, end to end through the `l3c` binary on tiny models: a run stopped and
// resumed equals the straight run bit for bit (dense, MoE and L3, with gradient accumulation); SIGTERM, SIGKILL in
// the middle of a write, damaged checkpoints and a full disk each end as documented without losing earlier
// checkpoints; config changes on resume, non-finite steps, --init-from with frozen parameters, pruning, and
// the Hugging Face export (with a transformers logits check where transformers is installed).
#include <catch2/catch.hpp>

#include "test_util.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/sha256.h"
#include "data/shard.h"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

using Result = l3c::test::CommandResult;
using namespace l3c::test;  // files, commands, the l3c binary and its errors

const std::string kL3c = std::string(L3C_BINARY_DIR) + "/l3c";

// Every l3c started here skips the CPU peak measurement (about 0.3 s per command; MFU is not under test).
const bool kPeakGiven = ::setenv("L3C_CPU_PEAK_GFLOPS", "100", 1) == 0;

// A training shard of 5000 ids below 31 in `dir`.
std::string write_train_shard(const fs::path& dir) {
  std::vector<uint32_t> tokens(5000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>((i * 7 + i / 13) % 31);
  const fs::path shard = dir / "train.bin";
  l3c::write_shard(shard.string(), tokens);
  return shard.string();
}

// dir/`name` (returned): a config of the model section `model` (its JSON text) that trains on `shard` in
// 2 micro-batches of 2 x 16 tokens per step (gradient accumulation), `steps` steps at learning rate `lr`, with a
// checkpoint every 3 steps.
fs::path write_config(const fs::path& dir, const std::string& name, const std::string& model, const std::string& shard,
                      int steps, const std::string& lr) {
  const fs::path config = dir / name;
  write_text(config, R"({
  "model": )" + model + R"(,
  "data": {"train": ")" + shard + R"(", "seq_len": 16},
  "train": {"steps": )" + std::to_string(steps) + R"(, "batch_tokens": 64, "micro_batch": 2, "lr": )" + lr + R"(, "warmup_steps": 2},
  "checkpoint": {"every": 3, "keep": 2},
  "run": {"dir": ")" + (dir / "run").string() + R"("}
})");
  return config;
}

// A tiny dense model, written to dir/c.json.
fs::path dense_config(const fs::path& dir, int steps = 8) {
  const std::string shard = write_train_shard(dir);
  return write_config(dir, "c.json",
                      R"({"vocab_size": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64})",
                      shard, steps, "1e-3");
}

// The same with one L3 layer (LZW allocation from the shard) after layer 1.
fs::path l3_config(const fs::path& dir, int steps = 8) {
  const std::string shard = write_train_shard(dir);
  return write_config(dir, "l3.json", R"({"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
            "l3": {"after_layers": [1], "v": 512, "k": 4, "d_emb": 16, "d_up": 32,
                   "allocation": {"method": "lzw", "data": ")" + shard + R"("}}})",
                      shard, steps, "1e-3");
}

// The dense model with MoE FFNs: `layers` ("all" or a JSON list), 4 experts, top-2, and a shared expert of
// `shared` hidden units (0: none).
fs::path moe_config(const fs::path& dir, int steps = 8, const std::string& layers = "\"all\"", int shared = 0) {
  const std::string shard = write_train_shard(dir);
  return write_config(dir, "moe.json", R"({"vocab_size": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
            "moe": {"layers": )" + layers + R"(, "experts": 4, "top_k": 2, "expert_hidden": 24,
                    "shared_expert_hidden": )" + std::to_string(shared) + R"(}})",
                      shard, steps, "1e-2");
}

std::string run_dir_set(const fs::path& run) { return " --set run.dir=" + run.string(); }

// step -> loss of the step records of a metrics file (later records of a step win). A line being written
// while the file is read does not parse and is left out.
std::map<int64_t, double> losses(const fs::path& metrics) {
  std::map<int64_t, double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const auto record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_discarded()) continue;
    if (record.contains("loss") && record["loss"].is_number()) out[record["step"].get<int64_t>()] = record["loss"];
  }
  return out;
}

// A safetensors file without its metadata: the tensor entries of the header and the data bytes.
std::pair<nlohmann::json, std::string> tensors_of(const fs::path& path) {
  const std::string bytes = read_text(path);
  if (bytes.size() < 8) throw std::runtime_error(path.string() + ": not a safetensors file");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_len));
  header.erase("__metadata__");
  return {header, bytes.substr(8 + header_len)};
}

// The bytes of one tensor of a safetensors file.
std::string tensor_bytes(const fs::path& path, const std::string& name) {
  const auto [header, data] = tensors_of(path);
  if (!header.contains(name)) throw std::runtime_error(path.string() + ": no tensor " + name);
  const auto begin = header[name]["data_offsets"][0].get<size_t>(), end = header[name]["data_offsets"][1].get<size_t>();
  return data.substr(begin, end - begin);
}

// The same tensors, bit for bit (metadata aside), in two safetensors files.
bool same_tensors(const fs::path& a, const fs::path& b) { return tensors_of(a) == tensors_of(b); }
// Tensor `name` has the same bytes in two files.
bool same_tensor(const fs::path& a, const fs::path& b, const std::string& name) {
  return tensor_bytes(a, name) == tensor_bytes(b, name);
}

fs::path checkpoint(const fs::path& run, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%08lld", static_cast<long long>(step));
  return run / "checkpoints" / name;
}

// Same losses at every step and the same final weights, bit for bit.
void check_same_run(const fs::path& a, const fs::path& b) {
  const auto la = losses(a / "metrics.jsonl"), lb = losses(b / "metrics.jsonl");
  CHECK(la.size() == lb.size());
  for (const auto& [step, loss] : la) {
    INFO("step " << step);
    REQUIRE(lb.count(step) == 1);
    CHECK(lb.at(step) == loss);  // exact
  }
  CHECK(same_tensors(a / "model.safetensors", b / "model.safetensors"));
}

// Trains `config` (with `options`) without interruption into `straight`; `run` must equal that run bit for bit.
void check_same_as_straight_run(const fs::path& config, const fs::path& run, const fs::path& straight,
                                const std::string& options = "") {
  REQUIRE(run_l3c("train " + config.string() + options + run_dir_set(straight)).exit_code == 0);
  check_same_run(straight, run);
}

// Starts l3c in the background (stdout and stderr to `log`); `env` is prepended to the command.
pid_t spawn_l3c(const std::string& args, const fs::path& log, const std::string& env = "") {
  const std::string command = env + " exec " + kL3c + " " + args + " > " + log.string() + " 2>&1";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  REQUIRE(pid > 0);
  return pid;
}

int wait_status(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

void flip_byte(const fs::path& path, std::streamoff offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.get(c);
  f.seekp(offset);
  f.put(static_cast<char>(c ^ 0x5A));
}

void check_exact_resume(const fs::path& dir, const fs::path& config) {
  const fs::path straight = dir / "straight", resumed = dir / "resumed";
  const Result a = run_l3c("train " + config.string() + run_dir_set(straight));
  INFO(a.output);
  REQUIRE(a.exit_code == 0);
  // Stop after step 4 (between the periodic checkpoints at 3 and 6), then continue.
  const Result b = run_l3c("train " + config.string() + run_dir_set(resumed) + " --stop-at 4 --json");
  INFO(b.output);
  REQUIRE(b.exit_code == 0);
  CHECK_THAT(b.output, Contains("stopped after step 4 of 8 (--stop-at)"));
  CHECK(fs::exists(checkpoint(resumed, 4) / "trainer.json"));
  CHECK_FALSE(fs::exists(resumed / "model.safetensors"));
  const Result c = run_l3c("train " + config.string() + run_dir_set(resumed) + " --resume auto");
  INFO(c.output);
  REQUIRE(c.exit_code == 0);
  CHECK_THAT(c.output, Contains("continuing from " + checkpoint(resumed, 4).string()));
  check_same_run(straight, resumed);
  // The final checkpoints agree too, optimizer state included.
  CHECK(same_tensors(checkpoint(straight, 8) / "optimizer.safetensors", checkpoint(resumed, 8) / "optimizer.safetensors"));
  // The checksums in trainer.json are those sha256sum computes.
  const auto trainer = nlohmann::json::parse(read_text(checkpoint(resumed, 8) / "trainer.json"));
  for (const auto& [file, entry] : trainer["files"].items()) {
    const Result sum = l3c::test::run_command("sha256sum " + (checkpoint(resumed, 8) / file).string());
    CHECK(sum.output.substr(0, 64) == entry["sha256"].get<std::string>());
  }
  // eval reads a checkpoint folder.
  const Result e = run_l3c("eval --json --checkpoint " + checkpoint(resumed, 8).string() + " --data " +
                           (dir / "train.bin").string() + " --batches 2");
  INFO(e.output);
  CHECK(e.exit_code == 0);
}

}  // namespace

TEST_CASE("a dense run stopped at step 4 and resumed equals the straight run bit for bit", "[checkpoint]") {
  const fs::path dir = fresh_dir("exact_dense");
  check_exact_resume(dir, dense_config(dir));
}

TEST_CASE("an L3 run stopped at step 4 and resumed equals the straight run bit for bit", "[checkpoint][l3]") {
  const fs::path dir = fresh_dir("exact_l3");
  check_exact_resume(dir, l3_config(dir));
}

TEST_CASE("an MoE run stopped at step 4 and resumed equals the straight run bit for bit", "[checkpoint][moe]") {
  const fs::path dir = fresh_dir("exact_moe");
  check_exact_resume(dir, moe_config(dir, 8, "[1]", 8));
}

TEST_CASE("SIGTERM finishes the step, writes a checkpoint and exits 0, and resuming matches the straight run",
          "[checkpoint]") {
  const fs::path dir = fresh_dir("sigterm");
  const fs::path config = dense_config(dir, 16);
  const fs::path run = dir / "run", straight = dir / "straight";
  const pid_t pid = spawn_l3c("train " + config.string(), dir / "log.txt", "L3C_TEST_STEP_PAUSE_MS=100");
  REQUIRE(wait_until([&] { return losses(run / "metrics.jsonl").size() >= 2; }));
  ::kill(pid, SIGTERM);
  const int status = wait_status(pid);
  const std::string log = read_text(dir / "log.txt");
  INFO(log);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(log, Contains("(SIGTERM): checkpoint"));
  const int64_t stopped_at = static_cast<int64_t>(losses(run / "metrics.jsonl").size());
  CHECK(stopped_at < 16);
  CHECK(read_text(run / "checkpoints" / "latest") == checkpoint(run, stopped_at).filename().string() + "\n");

  const Result resume = run_l3c("train " + config.string() + " --resume auto");
  INFO(resume.output);
  REQUIRE(resume.exit_code == 0);
  check_same_as_straight_run(config, run, straight);
}

TEST_CASE("a second SIGINT stops the trainer at once", "[checkpoint]") {
  const fs::path dir = fresh_dir("sigint");
  const fs::path config = dense_config(dir, 16);
  // The first signal's checkpoint pauses 2 s after each file, so the second signal surely comes before it ends.
  const pid_t pid = spawn_l3c("train " + config.string() + " --set checkpoint.every=0", dir / "log.txt",
                              "L3C_TEST_STEP_PAUSE_MS=300 L3C_TEST_CHECKPOINT_PAUSE_MS=2000");
  REQUIRE(wait_until([&] { return !losses(dir / "run" / "metrics.jsonl").empty(); }));
  ::kill(pid, SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(pid, SIGINT);
  const int status = wait_status(pid);
  INFO(read_text(dir / "log.txt"));
  CHECK(WIFSIGNALED(status));
  CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGINT));
}

TEST_CASE("SIGKILL in the middle of a checkpoint write: --resume auto takes the previous one and finishes",
          "[checkpoint]") {
  const fs::path dir = fresh_dir("sigkill");
  const fs::path config = dense_config(dir, 8);
  const fs::path run = dir / "run", straight = dir / "straight";
  // A checkpoint at step 3; then, resumed, each file of the write at step 6 is followed by a 2 s pause, and the
  // trainer is killed with model.safetensors written and the rest missing.
  REQUIRE(run_l3c("train " + config.string() + " --stop-at 3").exit_code == 0);
  const pid_t pid =
      spawn_l3c("train " + config.string() + " --resume auto", dir / "log.txt", "L3C_TEST_CHECKPOINT_PAUSE_MS=2000");
  const fs::path partial = run / "checkpoints" / ".tmp_step_00000006";
  REQUIRE(wait_until([&] { return fs::exists(partial / "model.safetensors"); }));
  ::kill(pid, SIGKILL);
  wait_status(pid);
  CHECK(fs::exists(checkpoint(run, 3) / "trainer.json"));
  CHECK_FALSE(fs::exists(checkpoint(run, 6)));

  const Result resume = run_l3c("train " + config.string() + " --resume auto");
  INFO(resume.output);
  REQUIRE(resume.exit_code == 0);
  CHECK_THAT(resume.output, Contains("removing " + partial.string()));
  CHECK_THAT(resume.output, Contains("continuing from " + checkpoint(run, 3).string()));
  CHECK_FALSE(fs::exists(partial));
  check_same_as_straight_run(config, run, straight);
}

TEST_CASE("a damaged checkpoint is reported precisely, never loaded, and resume auto takes the one before",
          "[checkpoint]") {
  const fs::path dir = fresh_dir("damaged");
  const fs::path config = dense_config(dir, 6);
  const fs::path original = dir / "original";
  const Result r = run_l3c("train " + config.string() + run_dir_set(original) + " --stop-at 5");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);  // checkpoints at steps 3 and 5

  struct Damage {
    const char* what;
    std::function<void(const fs::path&)> apply;
    const char* message;
  };
  const std::vector<Damage> damages = {
      {"a flipped byte in the weights", [](const fs::path& c) { flip_byte(c / "model.safetensors", 5000); },
       "model.safetensors: sha256 mismatch (the file is corrupted)"},
      {"a flipped byte in the optimizer state", [](const fs::path& c) { flip_byte(c / "optimizer.safetensors", 9000); },
       "optimizer.safetensors: sha256 mismatch (the file is corrupted)"},
      {"a changed value in trainer.json",
       [](const fs::path& c) {
         std::string text = read_text(c / "trainer.json");
         text.replace(text.find("\"tokens_seen\": 320"), 18, "\"tokens_seen\": 330");
         write_text(c / "trainer.json", text);
       },
       "trainer.json: checksum mismatch"},
      {"a flipped byte in the JSON syntax of trainer.json", [](const fs::path& c) { flip_byte(c / "trainer.json", 0); },
       "trainer.json is unreadable: "},
      {"a truncated weights file",
       [](const fs::path& c) { fs::resize_file(c / "model.safetensors", fs::file_size(c / "model.safetensors") - 100); },
       "model.safetensors is truncated: "},
      {"a missing optimizer file", [](const fs::path& c) { fs::remove(c / "optimizer.safetensors"); },
       "optimizer.safetensors is missing"},
      {"a missing trainer.json", [](const fs::path& c) { fs::remove(c / "trainer.json"); }, "trainer.json is missing"},
  };
  int index = 0;
  for (const Damage& damage : damages) {
    INFO(damage.what);
    const fs::path run = dir / ("run" + std::to_string(index++));
    fs::copy(original, run, fs::copy_options::recursive);
    damage.apply(checkpoint(run, 5));
    // Named explicitly: an error with the reason.
    check_user_error(run_l3c("train " + config.string() + run_dir_set(run) + " --resume " + checkpoint(run, 5).string()),
                     damage.message);
    // Found by auto: passed over with the reason, and the previous checkpoint is used.
    const Result resume = run_l3c("train " + config.string() + run_dir_set(run) + " --resume auto");
    INFO(resume.output);
    CHECK(resume.exit_code == 0);
    CHECK_THAT(resume.output, Contains("passing over " + checkpoint(run, 5).string() + ": " + damage.message));
    CHECK_THAT(resume.output, Contains("continuing from " + checkpoint(run, 3).string()));
    CHECK(losses(run / "metrics.jsonl").size() == 6);
  }
  // eval refuses a damaged checkpoint folder too.
  const fs::path run = dir / "eval";
  fs::copy(original, run, fs::copy_options::recursive);
  flip_byte(checkpoint(run, 5) / "model.safetensors", 3000);
  check_user_error(run_l3c("eval --checkpoint " + checkpoint(run, 5).string() + " --data " + (dir / "train.bin").string()),
                   "model.safetensors: sha256 mismatch");
}

TEST_CASE("a full disk (a file-size limit) fails the checkpoint with a clear error and keeps the earlier ones",
          "[checkpoint]") {
  const fs::path dir = fresh_dir("full_disk");
  const fs::path config = dense_config(dir, 8);
  const fs::path run = dir / "run";
  REQUIRE(run_l3c("train " + config.string() + " --stop-at 3").exit_code == 0);
  // 40 KiB per file: the metrics and config files fit, the 85 KB weights file does not.
  const Result r = l3c::test::run_command("bash -c 'ulimit -f 40; exec " + kL3c + " train " + config.string() +
                                          " --resume auto' 2>&1");
  check_user_error(r, "step 6: writing checkpoint " + checkpoint(run, 6).string() + " failed: ");
  CHECK_THAT(r.output, Contains("File too large"));
  CHECK_THAT(r.output, Contains("the earlier checkpoints are intact (newest: " + checkpoint(run, 3).string() + ")"));
  CHECK_FALSE(fs::exists(run / "checkpoints" / ".tmp_step_00000006"));
  // ... and they are: the run continues from step 3 once there is room.
  const Result resume = run_l3c("train " + config.string() + " --resume auto");
  INFO(resume.output);
  CHECK(resume.exit_code == 0);
  CHECK_THAT(resume.output, Contains("continuing from " + checkpoint(run, 3).string()));
}

TEST_CASE("resuming refuses config changes outside the allowed keys and accepts the allowed ones", "[checkpoint]") {
  const fs::path dir = fresh_dir("config_change");
  const fs::path config = dense_config(dir, 8);
  const fs::path run = dir / "run";
  // --resume auto on a folder without a run starts one.
  const Result first = run_l3c("train " + config.string() + " --resume auto --stop-at 3");
  INFO(first.output);
  REQUIRE(first.exit_code == 0);
  CHECK_THAT(first.output, Contains("holds no run yet; starting a new run"));
  // Starting over in the same folder is refused.
  check_user_error(run_l3c("train " + config.string()), "already holds a run");

  const Result changed = run_l3c("train " + config.string() + " --resume auto --set train.lr=0.002 --set model.n_layers=3");
  check_user_error(changed, "cannot change on resume");
  CHECK_THAT(changed.output, Contains("train.lr: 0.001 -> 0.002"));
  CHECK_THAT(changed.output, Contains("model.n_layers: 2 -> 3"));

  const Result allowed =
      run_l3c("train " + config.string() + " --resume auto --set train.steps=10 --set eval.every=5 --json");
  INFO(allowed.output);
  REQUIRE(allowed.exit_code == 0);
  CHECK_THAT(allowed.output, Contains("config change train.steps: 8 -> 10"));
  CHECK(losses(run / "metrics.jsonl").size() == 10);

  // Resuming from an older checkpoint of the same run would overwrite newer ones: refused.
  REQUIRE(fs::exists(checkpoint(run, 9)));
  check_user_error(run_l3c("train " + config.string() + " --set train.steps=10 --resume " + checkpoint(run, 9).string()),
                   "holds a newer checkpoint");
}

TEST_CASE("non-finite steps stop the run naming the step, or are skipped and counted", "[checkpoint]") {
  const fs::path dir = fresh_dir("nonfinite");
  const fs::path config = dense_config(dir, 6);
  const std::string explode = " --set train.lr=1e4 --set train.grad_clip=0 --set train.warmup_steps=0";
  // The step that first overflows depends on the compiler's rounding (step 2 with GCC, later with clang).
  check_user_error(run_l3c("train " + config.string() + explode + run_dir_set(dir / "stop")), ": non-finite loss");
  const Result skip =
      run_l3c("train " + config.string() + explode + run_dir_set(dir / "skip") + " --set train.on_nonfinite=skip --json");
  INFO(skip.output);
  REQUIRE(skip.exit_code == 0);
  CHECK_THAT(skip.output, Contains("step skipped, weights unchanged"));
  std::set<int64_t> skipped;
  std::ifstream metrics(dir / "skip" / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    const auto record = nlohmann::json::parse(line);
    if (record.value("skipped", false)) skipped.insert(record["step"].get<int64_t>());
  }
  CHECK_THAT(skip.output, Contains("\"skipped_steps\":" + std::to_string(skipped.size())));
  const auto trainer = nlohmann::json::parse(read_text(checkpoint(dir / "skip", 6) / "trainer.json"));
  CHECK(trainer["skipped_steps"] == skipped.size());
  CHECK(trainer["optimizer_steps"] == 6 - skipped.size());
  // Once the weights have exploded every step is non-finite; skipped steps leave the weights as they were.
  REQUIRE((skipped.count(4) && skipped.count(5) && skipped.count(6)));
  CHECK(same_tensors(checkpoint(dir / "skip", 3) / "model.safetensors", checkpoint(dir / "skip", 6) / "model.safetensors"));
}

TEST_CASE("init-from starts a new run from trained weights, and frozen parameters stay byte for byte",
          "[checkpoint][l3]") {
  const fs::path dir = fresh_dir("init_from");
  const fs::path dense = dense_config(dir, 4);
  const Result base = run_l3c("train " + dense.string() + run_dir_set(dir / "base"));
  INFO(base.output);
  REQUIRE(base.exit_code == 0);
  const fs::path trained = checkpoint(dir / "base", 4) / "model.safetensors";

  // Only the feed-forward weights train.
  const Result ffn = run_l3c("train " + dense.string() + run_dir_set(dir / "ffn") + " --set train.trainable=ffn --init-from " +
                             checkpoint(dir / "base", 4).string());
  INFO(ffn.output);
  REQUIRE(ffn.exit_code == 0);
  const fs::path tuned = dir / "ffn" / "model.safetensors";
  CHECK(same_tensor(tuned, trained, "model.layers.0.self_attn.q_proj.weight"));
  CHECK(same_tensor(tuned, trained, "lm_head.weight"));
  CHECK(same_tensor(tuned, trained, "model.norm.weight"));
  CHECK_FALSE(same_tensor(tuned, trained, "model.layers.1.mlp.up_proj.weight"));
  // Frozen parameters get no AdamW state.
  const fs::path moments = checkpoint(dir / "ffn", 4) / "optimizer.safetensors";
  CHECK((tensor_bytes(moments, "exp_avg.lm_head.weight") == std::string(32 * 32 * 4, '\0')));

  // New L3 tables on the trained dense trunk (same vocabulary), which stays frozen.
  const fs::path l3 = l3_config(dir, 3);
  const Result tables = run_l3c("train " + l3.string() + run_dir_set(dir / "tables") +
                                " --set model.vocab_size=32 --set model.l3.v=64 --set train.trainable=model.l3. "
                                "--init-from " + checkpoint(dir / "base", 4).string());
  INFO(tables.output);
  REQUIRE(tables.exit_code == 0);
  CHECK_THAT(tables.output, Contains("freshly initialised: model.l3.0."));
  const fs::path with_tables = dir / "tables" / "model.safetensors";
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"})
    CHECK(same_tensor(with_tables, trained, name));
  // A checkpoint whose shapes do not fit is refused, naming the tensor.
  check_user_error(run_l3c("train " + l3.string() + run_dir_set(dir / "misfit") + " --init-from " +
                           checkpoint(dir / "base", 4).string()),
                   "model.embed_tokens.weight has shape (32, 32), the model expects (256, 32)");
  // --resume and --init-from exclude each other; an unknown group is named.
  check_user_error(run_l3c("train " + dense.string() + run_dir_set(dir / "x") + " --resume auto --init-from " +
                           checkpoint(dir / "base", 4).string()),
                   "exclude each other");
  check_user_error(run_l3c("train " + dense.string() + run_dir_set(dir / "y") + " --set train.trainable=moe"),
                   "train.trainable: \"moe\" matches no parameter");
}

TEST_CASE("checkpoints are pruned to the newest checkpoint.keep plus every milestone", "[checkpoint]") {
  const fs::path dir = fresh_dir("prune");
  const fs::path config = dense_config(dir, 6);
  const Result r = run_l3c("train " + config.string() +
                           " --set checkpoint.every=1 --set checkpoint.keep=2 --set checkpoint.milestone_every=2");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir / "run" / "checkpoints")) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"latest", "step_00000002", "step_00000004", "step_00000005", "step_00000006"});
  CHECK(read_text(dir / "run" / "checkpoints" / "latest") == "step_00000006\n");
}

TEST_CASE("export hf writes Llama for a dense model and L3LlamaForCausalLM with its modeling file for an L3 model, "
          "import hf reads both back", "[checkpoint][l3]") {
  const fs::path dir = fresh_dir("export");
  const fs::path dense = dense_config(dir, 2);
  REQUIRE(run_l3c("train " + dense.string() + run_dir_set(dir / "dense") + " --set model.tie_embeddings=true").exit_code == 0);
  const Result r = run_l3c("export hf " + checkpoint(dir / "dense", 2).string() + " " + (dir / "hf").string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const auto hf = nlohmann::json::parse(read_text(dir / "hf" / "config.json"));
  CHECK(hf["architectures"] == nlohmann::json{"LlamaForCausalLM"});
  CHECK(hf["hidden_size"] == 32);
  CHECK(hf["num_key_value_heads"] == 2);
  CHECK(hf["tie_word_embeddings"] == true);
  CHECK(hf["torch_dtype"] == "float32");
  const auto [header, data] = tensors_of(dir / "hf" / "model.safetensors");
  CHECK(header.contains("model.embed_tokens.weight"));
  CHECK(header.contains("model.layers.1.self_attn.o_proj.weight"));
  CHECK_FALSE(header.contains("lm_head.weight"));  // tied
  check_user_error(run_l3c("export hf " + checkpoint(dir / "dense", 2).string() + " " + (dir / "hf").string()),
                   "already holds");

  // import hf gives back the model: same weights, same logits
  const Result imported = run_l3c("import hf " + (dir / "hf").string() + " " + (dir / "imported").string());
  INFO(imported.output);
  REQUIRE(imported.exit_code == 0);
  const std::string tokens = " --tokens \"3 1 4 1 5 9 2 6\" --out ";
  REQUIRE(run_l3c("logits --checkpoint " + checkpoint(dir / "dense", 2).string() + tokens + (dir / "a.safetensors").string())
              .exit_code == 0);
  REQUIRE(run_l3c("logits --checkpoint " + (dir / "imported").string() + tokens + (dir / "b.safetensors").string())
              .exit_code == 0);
  CHECK(tensors_of(dir / "a.safetensors").second == tensors_of(dir / "b.safetensors").second);
  check_user_error(run_l3c("import hf " + (dir / "hf").string() + " " + (dir / "imported").string()), "already holds");
  check_user_error(run_l3c("import hf " + (dir / "nothing").string() + " " + (dir / "x").string()), "config.json is missing");

  const fs::path l3 = l3_config(dir, 2);
  REQUIRE(run_l3c("train " + l3.string() + run_dir_set(dir / "l3")).exit_code == 0);
  const Result l3_export = run_l3c("export hf " + checkpoint(dir / "l3", 2).string() + " " + (dir / "hf_l3").string());
  INFO(l3_export.output);
  REQUIRE(l3_export.exit_code == 0);
  const auto hf_l3 = nlohmann::json::parse(read_text(dir / "hf_l3" / "config.json"));
  CHECK(hf_l3["architectures"] == nlohmann::json{"L3LlamaForCausalLM"});
  CHECK(hf_l3["auto_map"]["AutoModelForCausalLM"] == "modeling_l3c.L3LlamaForCausalLM");
  CHECK(hf_l3["l3_after_layers"].size() >= 1);
  CHECK_THAT(read_text(dir / "hf_l3" / "modeling_l3c.py"), Contains("class L3LlamaForCausalLM(LlamaForCausalLM)"));
  const auto [l3_header, l3_data] = tensors_of(dir / "hf_l3" / "model.safetensors");
  CHECK(l3_header.contains("model.l3.0.w_k"));
  CHECK(l3_header["model.l3.0.alloc"]["dtype"] == "I32");
  REQUIRE(run_l3c("import hf " + (dir / "hf_l3").string() + " " + (dir / "imported_l3").string()).exit_code == 0);
  REQUIRE(run_l3c("logits --checkpoint " + checkpoint(dir / "l3", 2).string() + tokens + (dir / "c.safetensors").string())
              .exit_code == 0);
  REQUIRE(run_l3c("logits --checkpoint " + (dir / "imported_l3").string() + tokens + (dir / "d.safetensors").string())
              .exit_code == 0);
  CHECK(tensors_of(dir / "c.safetensors").second == tensors_of(dir / "d.safetensors").second);
}

TEST_CASE("export hf writes a Mixtral config for an MoE model and refuses MoE layouts Mixtral cannot run",
          "[checkpoint][moe]") {
  const fs::path dir = fresh_dir("export_moe");
  REQUIRE(run_l3c("train " + moe_config(dir, 2).string() + run_dir_set(dir / "moe")).exit_code == 0);
  const Result r = run_l3c("export hf " + checkpoint(dir / "moe", 2).string() + " " + (dir / "hf").string());
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const auto hf = nlohmann::json::parse(read_text(dir / "hf" / "config.json"));
  CHECK(hf["architectures"] == nlohmann::json{"MixtralForCausalLM"});
  CHECK(hf["model_type"] == "mixtral");
  CHECK(hf["num_local_experts"] == 4);
  CHECK(hf["num_experts_per_tok"] == 2);
  CHECK(hf["intermediate_size"] == 24);
  const auto [header, data] = tensors_of(dir / "hf" / "model.safetensors");
  CHECK(header.contains("model.layers.1.block_sparse_moe.gate.weight"));
  CHECK(header.contains("model.layers.0.block_sparse_moe.experts.3.w2.weight"));

  const fs::path partial = dir / "partial";
  fs::create_directories(partial);
  REQUIRE(run_l3c("train " + moe_config(partial, 2, "[1]", 8).string() + run_dir_set(partial / "run")).exit_code == 0);
  const Result refused = run_l3c("export hf " + checkpoint(partial / "run", 2).string() + " " + (dir / "hf2").string());
  check_user_error(refused, "MixtralForCausalLM cannot run it");
  CHECK_THAT(refused.output, Contains("decoder layer 0 has a dense FFN") && Contains("no shared expert"));
  CHECK_FALSE(fs::exists(dir / "hf2"));
}

TEST_CASE("exported dense, L3 and MoE models give l3c's logits in Hugging Face transformers, and imported Llama "
          "models give transformers' logits in l3c", "[checkpoint][hf][slow]") {
  // A Python that can import transformers and torch; the test is skipped (exit code 4) without one.
  std::string python;
  // scripts/install_deps.sh installs transformers for Debian's torch into .cache/python-hf.
  const std::string installed = "PYTHONPATH=" + std::string(L3C_SOURCE_DIR) + "/.cache/python-hf /usr/bin/python3";
  for (const std::string& candidate : {std::string("python3"), std::string("/usr/bin/python3"), installed})
    if (l3c::test::run_command(candidate + " -c 'import transformers, torch, safetensors' 2>&1").exit_code == 0) {
      python = candidate;
      break;
    }
  if (python.empty()) {
    std::printf("skipped: Hugging Face transformers (with torch and safetensors) is not importable by python3, "
                "/usr/bin/python3 or with .cache/python-hf (scripts/install_deps.sh installs it there)\n");
    std::exit(4);
  }
  const fs::path dir = fresh_dir("hf_logits");
  // Trains `config` (3 steps, with `options`) into `run`; hf_logits_check.py on its last checkpoint (work folder
  // `work`) exits 0 and prints what `expected` matches.
  auto check_logits = [&](const fs::path& config, const std::string& options, const fs::path& run, const fs::path& work,
                          const auto& expected) {
    REQUIRE(run_l3c("train " + config.string() + run_dir_set(run) + options).exit_code == 0);
    const Result check = l3c::test::run_command(python + " " + L3C_SOURCE_DIR + "/scripts/hf_logits_check.py --l3c " +
                                                kL3c + " --checkpoint " + checkpoint(run, 3).string() + " --work " +
                                                work.string() + " 2>&1");
    INFO(check.output);
    CHECK(check.exit_code == 0);
    CHECK_THAT(check.output, expected);
  };
  const fs::path dense = dense_config(dir, 3);
  for (const char* tied : {"false", "true"}) {
    INFO("tie_embeddings " << tied);
    check_logits(dense, std::string(" --set model.tie_embeddings=") + tied, dir / (std::string("run_") + tied),
                 dir / (std::string("work_") + tied), Contains("\"ok\": true"));
  }
  // import hf: a Llama made by transformers gives transformers' logits in l3c (untied and tied)
  for (const char* tied : {"", " --tied"}) {
    const Result imported = l3c::test::run_command(python + " " + L3C_SOURCE_DIR + "/scripts/hf_import_check.py --l3c " +
                                                   kL3c + " --work " + (dir / (std::string("import") + (*tied ? "_tied" : ""))).string() +
                                                   tied + " 2>&1");
    INFO(imported.output);
    CHECK(imported.exit_code == 0);
    CHECK_THAT(imported.output, Contains("\"ok\": true"));
  }
  // an L3 model through modeling_l3c.py (trust_remote_code)
  check_logits(l3_config(dir, 3), "", dir / "run_l3", dir / "work_l3",
               Contains("L3LlamaForCausalLM") && Contains("\"ok\": true"));
  check_logits(moe_config(dir, 3), "", dir / "run_moe", dir / "work_moe",
               Contains("MixtralForCausalLM") && Contains("\"ok\": true"));
}

// ---- one trainer per run folder; hostile checkpoints and shards ------------------------------------------------

namespace {
// Rewrites trainer.json of a checkpoint with `change` applied and its self-checksum and file checksums made to
// match again: what a crafted checkpoint looks like (the checksums guard against damage, not against an author).
void recheck_trainer_json(const fs::path& checkpoint_dir, const std::function<void(nlohmann::json&)>& change) {
  nlohmann::json trainer = nlohmann::json::parse(read_text(checkpoint_dir / "trainer.json"));
  change(trainer);
  for (auto& [file, entry] : trainer["files"].items()) {
    entry["bytes"] = fs::file_size(checkpoint_dir / file);
    entry["sha256"] = l3c::sha256_hex(read_text(checkpoint_dir / file));
  }
  trainer.erase("self_sha256");
  trainer["self_sha256"] = l3c::sha256_hex(trainer.dump());
  write_text(checkpoint_dir / "trainer.json", trainer.dump(2) + "\n");
}
}  // namespace

TEST_CASE("a second trainer on a run folder is refused with the first one's pid, and the lock dies with it",
          "[checkpoint][lock]") {
  const fs::path dir = fresh_dir("lock");
  const fs::path config = dense_config(dir, 40);
  const fs::path run = dir / "run";
  const pid_t pid = spawn_l3c("train " + config.string() + " --resume auto", dir / "log.txt", "L3C_TEST_STEP_PAUSE_MS=300");
  REQUIRE(wait_until([&] { return fs::exists(checkpoint(run, 3) / "trainer.json"); }));
  // Before the lock, both ran: each moved the other's checkpoints aside and their metrics interleaved.
  const Result second = run_l3c("train " + config.string() + " --resume auto");
  check_user_error(second, "is in use by another l3c train (pid " + std::to_string(pid) + " on ");
  check_user_error(run_l3c("train " + config.string()), "is in use by another l3c train (pid " + std::to_string(pid));
  CHECK_THAT(read_text(run / "l3c.lock"), Contains("pid " + std::to_string(pid)));
  // SIGKILL: no cleanup runs, the kernel releases the lock, and the next trainer continues the run.
  ::kill(pid, SIGKILL);
  wait_status(pid);
  const Result resumed = run_l3c("train " + config.string() + " --resume auto");
  INFO(resumed.output);
  CHECK(resumed.exit_code == 0);
  CHECK_THAT(read_text(run / "l3c.lock"), !Contains("pid " + std::to_string(pid)));
}

TEST_CASE("a folder holding the user's own config.json is not overwritten by a new run", "[checkpoint][lock]") {
  const fs::path dir = fresh_dir("user_config");
  const fs::path config = dense_config(dir, 2);
  fs::create_directories(dir / "run");
  write_text(dir / "run" / "config.json", "{\"mine\": true}\n");
  check_user_error(run_l3c("train " + config.string()), "holds a config.json but no run");
  check_user_error(run_l3c("train " + config.string() + " --resume auto"), "holds a config.json but no run");
  CHECK(read_text(dir / "run" / "config.json") == "{\"mine\": true}\n");
  CHECK_FALSE(fs::exists(dir / "run" / "metrics.jsonl"));
}

TEST_CASE("a shard truncated under the trainer ends the run naming it, after a checkpoint, and resume is exact",
          "[checkpoint][data]") {
  const fs::path dir = fresh_dir("truncated_shard");
  const fs::path config = dense_config(dir, 12);
  const fs::path run = dir / "run", straight = dir / "straight", shard = dir / "train.bin";
  const std::string original = read_text(shard);
  const pid_t pid = spawn_l3c("train " + config.string() + " --set checkpoint.every=0", dir / "log.txt",
                              "L3C_TEST_STEP_PAUSE_MS=200");
  REQUIRE(wait_until([&] { return losses(run / "metrics.jsonl").size() >= 2; }));
  fs::resize_file(shard, 1024 + 2 * 40);  // a memory-mapped shard killed the trainer with SIGBUS here
  const int status = wait_status(pid);
  const std::string log = read_text(dir / "log.txt");
  INFO(log);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 2);
  CHECK_THAT(log, Contains("error: " + shard.string() + ": the shard changed while it was being read"));
  CHECK_THAT(log, Contains("wrote checkpoint"));
  const auto done = losses(run / "metrics.jsonl");
  REQUIRE(!done.empty());
  const int64_t last = done.rbegin()->first;
  CHECK(fs::exists(checkpoint(run, last) / "trainer.json"));
  // The same data back: the run continues from that checkpoint and equals the run that was never interrupted.
  write_text(shard, original);
  const Result resume = run_l3c("train " + config.string() + " --set checkpoint.every=0 --resume auto");
  INFO(resume.output);
  REQUIRE(resume.exit_code == 0);
  CHECK_THAT(resume.output, Contains("continuing from " + checkpoint(run, last).string()));
  check_same_as_straight_run(config, run, straight, " --set checkpoint.every=0");
}

TEST_CASE("crafted checkpoints with matching checksums are refused with the field or tensor named",
          "[checkpoint][safetensors]") {
  const fs::path dir = fresh_dir("crafted");
  const fs::path config = dense_config(dir, 3);
  const fs::path original = dir / "run";
  REQUIRE(run_l3c("train " + config.string()).exit_code == 0);
  auto copy_of = [&](const std::string& name) {
    fs::copy(original, dir / name, fs::copy_options::recursive);
    return dir / name;
  };
  {  // a negative step: the loop would start before the first window
    const fs::path run = copy_of("negative_step");
    recheck_trainer_json(checkpoint(run, 3), [](nlohmann::json& t) { t["step"] = -3; });
    check_user_error(run_l3c("train " + config.string() + run_dir_set(run) + " --resume " + checkpoint(run, 3).string()),
                     "trainer.json: step: expected an integer >= 0, got -3");
  }
  {  // a fractional token count
    const fs::path run = copy_of("fraction");
    recheck_trainer_json(checkpoint(run, 3), [](nlohmann::json& t) { t["tokens_seen"] = 2.5; });
    check_user_error(run_l3c("train " + config.string() + run_dir_set(run) + " --resume " + checkpoint(run, 3).string()),
                     "trainer.json: tokens_seen: expected an integer >= 0, got 2.5");
  }
  {  // weights whose offsets wrap around 2^64, behind correct checksums: --init-from and --resume refuse them
    const fs::path run = copy_of("wrapped");
    const fs::path weights = checkpoint(run, 3) / "model.safetensors";
    std::string bytes = read_text(weights);
    uint64_t length = 0;
    std::memcpy(&length, bytes.data(), 8);
    nlohmann::json header = nlohmann::json::parse(bytes.substr(8, length));
    auto& offsets = header["model.norm.weight"]["data_offsets"];
    const uint64_t size = offsets[1].get<uint64_t>() - offsets[0].get<uint64_t>(), end = ~uint64_t{0} - 7;
    offsets = {end - size, end};
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    const uint64_t new_length = text.size();
    std::string rewritten(reinterpret_cast<const char*>(&new_length), 8);
    write_text(weights, rewritten + text + bytes.substr(8 + length));
    recheck_trainer_json(checkpoint(run, 3), [](nlohmann::json&) {});
    check_user_error(run_l3c("train " + config.string() + run_dir_set(dir / "init") + " --init-from " +
                             checkpoint(run, 3).string()),
                     "tensor model.norm.weight: data_offsets");
    check_user_error(run_l3c("train " + config.string() + run_dir_set(run) + " --set train.steps=5 --resume " +
                             checkpoint(run, 3).string()),
                     "overflows");
  }
}
