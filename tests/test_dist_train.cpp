// Data-parallel training end to end through `mpirun -np N l3c train` on tiny models (1 thread per rank): 2 ranks
// give the losses and weights of one process with twice the gradient accumulation (dense, L3, MoE; with and
// without ZeRO-1); a checkpoint of 2 ranks resumes on 1 and on 3 ranks on the same loss curve; SIGTERM to one
// rank stops every rank with one checkpoint; a killed rank ends the job; a rank with another config is refused;
// launcher states that cannot train are refused.
#include <catch2/catch.hpp>

#include "test_util.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "data/shard.h"
#include "dist/mpi_communicator.h"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
using l3c::test::fresh_dir;
using l3c::test::wait_until;

const std::string kL3c = std::string(L3C_BINARY_DIR) + "/l3c";
const bool kPeakGiven = ::setenv("L3C_CPU_PEAK_GFLOPS", "100", 1) == 0;

#ifdef L3C_MPIEXEC
// Local ranks inherit mpirun's environment (L3C_CPU_PEAK_GFLOPS, L3C_TEST_STEP_PAUSE_MS).
const std::string kMpirun = std::string(L3C_MPIEXEC) + " --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1 ";
#else
const std::string kMpirun;
#endif

bool skip_without_mpi() {
  if (l3c::built_with_mpi()) return false;
  WARN("this build has no MPI: skipped");
  return true;
}

// `l3c train` on `ranks` processes (1: without mpirun), stdout and stderr together.
l3c::test::CommandResult train(int ranks, const std::string& args, const std::string& env = "") {
  const std::string launcher = ranks == 1 ? "" : kMpirun + "-np " + std::to_string(ranks) + " ";
  return l3c::test::run_command(env + launcher + kL3c + " train " + args + " --set train.threads=1 2>&1");
}

enum class Model { Dense, L3, Moe };

// A tiny model of each kind on a shard of 5000 ids below 31; `batch_tokens` global tokens a step in micro-batches
// of 2 x 16. With `few_ids_per_window` the shard is runs of 40 equal ids out of 4 (0, 7, 14, 21), so that the
// row-sparse reduction moves only part of the tables.
fs::path write_config(const fs::path& dir, Model model, int steps, int batch_tokens, bool few_ids_per_window = false) {
  std::vector<uint32_t> tokens(5000);
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<uint32_t>(few_ids_per_window ? (i / 40 % 4) * 7 : (i * 7 + i / 13) % 31);
  const std::string shard = (dir / "train.bin").string();
  l3c::write_shard(shard, tokens);
  std::string layers;
  if (model == Model::L3)
    layers = R"(, "l3": {"after_layers": [1], "v": 96, "k": 4, "d_emb": 16, "d_up": 32,
                        "allocation": {"method": "lzw", "data": ")" + shard + R"("}})";
  if (model == Model::Moe) layers = R"(, "moe": {"layers": "all", "experts": 4, "top_k": 2, "expert_hidden": 24})";
  const fs::path config = dir / "c.json";
  std::ofstream(config) << R"({
  "model": {"vocab_size": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64)" + layers + R"(},
  "data": {"train": ")" + shard + R"(", "val": ")" + shard + R"(", "seq_len": 16},
  "eval": {"every": 2, "batches": 3},
  "train": {"steps": )" + std::to_string(steps) + R"(, "batch_tokens": )" + std::to_string(batch_tokens) +
                              R"(, "micro_batch": 2, "lr": 3e-3, "warmup_steps": 1},
  "dist": {"timeout": 20},
  "run": {"dir": ")" + (dir / "run").string() + R"("}
})";
  return config;
}

// step -> `key` ("loss" or "val_loss") of the records of a metrics file.
std::map<int64_t, double> losses(const fs::path& metrics, const std::string& key = "loss") {
  std::map<int64_t, double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const auto record = nlohmann::json::parse(line, nullptr, false);
    if (!record.is_discarded() && record.contains(key)) out[record["step"].get<int64_t>()] = record[key];
  }
  return out;
}

// Training and validation losses within `tolerance` (relative) at every step of `reference`.
void check_losses(const fs::path& run, const fs::path& reference, double tolerance) {
  for (const char* key : {"loss", "val_loss"}) {
    const auto a = losses(run / "metrics.jsonl", key), b = losses(reference / "metrics.jsonl", key);
    REQUIRE((!a.empty() && !b.empty()));
    for (const auto& [step, loss] : b) {
      INFO(run.string() << " step " << step << " " << key);
      if (step < a.begin()->first) continue;  // a resumed run starts later
      REQUIRE(a.count(step) == 1);
      CHECK(std::abs(a.at(step) - loss) <= tolerance * std::abs(loss));
    }
  }
}

// Every tensor within `tolerance` of the reference's, relative to its largest element.
void check_weights(const fs::path& a, const fs::path& b, double tolerance) {
  const l3c::SafetensorsFile fa(a.string()), fb(b.string());
  REQUIRE(fa.tensors().size() == fb.tensors().size());
  for (const auto& [name, tensor] : fb.tensors()) {
    INFO(a.string() << ": " << name);
    const std::vector<double> x = l3c::test::to_double_vector(fa.get(name)), y = l3c::test::to_double_vector(tensor);
    double largest = 0.0;
    for (double v : y) largest = std::max(largest, std::abs(v));
    CHECK(l3c::test::max_abs_error(x, y) <= tolerance * std::max(largest, 1e-30));
  }
}

// Starts `command` in the background; its output goes to `log`.
void start(const std::string& command, const fs::path& log) {
  REQUIRE(std::system(("(" + command + " > " + log.string() + " 2>&1; echo $? > " + log.string() + ".rc) &").c_str()) == 0);
}

// Each rank's pid, written by the rank itself into dir/pid.RANK before it becomes l3c.
std::string with_pid_files(const fs::path& dir, const std::string& l3c_args) {
  return kMpirun + "-np 2 sh -c 'echo $$ > " + dir.string() + "/pid.$OMPI_COMM_WORLD_RANK; exec " + kL3c + " train " +
         l3c_args + " --set train.threads=1'";
}

// Two ranks training the dense model in `dir` for 200 steps of at least 150 ms, in the background (start): each
// rank's pid in dir/pid.RANK, the job's output in dir/log, its exit code in dir/log.rc.
void start_slow_job(const fs::path& dir) {
  const fs::path config = write_config(dir, Model::Dense, 200, 128);
  start("L3C_TEST_STEP_PAUSE_MS=150 " + with_pid_files(dir, config.string()), dir / "log");
}

int read_pid(const fs::path& path) {
  std::ifstream in(path);
  int pid = 0;
  in >> pid;
  return pid;
}

}  // namespace

TEST_CASE("data parallel: 2 ranks give one process's losses and weights with twice the accumulation, ZeRO-1 too",
          "[dist][mpi]") {
  if (skip_without_mpi()) return;
  for (Model model : {Model::Dense, Model::L3, Model::Moe}) {
    const fs::path dir = fresh_dir("equal_" + std::to_string(static_cast<int>(model)));
    // 4 micro-batches: 4 x 1 rank, 2 x 2 ranks
    const fs::path config = write_config(dir, model, 4, 128, model == Model::L3);
    const auto one = train(1, config.string() + " --set run.dir=" + (dir / "one").string());
    REQUIRE(one.exit_code == 0);
    for (const std::string zero : {"0", "1"}) {
      const fs::path run = dir / ("two_zero" + zero);
      const auto two = train(2, config.string() + " --set run.dir=" + run.string() + " --set train.zero=" + zero);
      INFO(two.output);
      REQUIRE(two.exit_code == 0);
      CHECK_THAT(two.output, Contains("data parallel: 2 ranks (mpi)"));
      check_losses(run, dir / "one", 1e-6);
      check_weights(run / "model.safetensors", dir / "one" / "model.safetensors", 1e-5);
      if (model == Model::L3 && zero == "0") {  // the tables went row-sparse: part of their rows moved
        const auto reduced = losses(run / "metrics.jsonl", "table_rows_reduced"), rows = losses(run / "metrics.jsonl", "table_rows");
        REQUIRE(!reduced.empty());
        for (const auto& [step, count] : reduced) CHECK((count > 0 && count < rows.at(step) / 2));
      }
    }
    fs::remove_all(dir);
  }
}

TEST_CASE("data parallel: a checkpoint of 2 ranks (ZeRO-1) resumes on 1 and on 3 ranks on the same loss curve",
          "[dist][mpi]") {
  if (skip_without_mpi()) return;
  const fs::path dir = fresh_dir("resume");
  const fs::path config = write_config(dir, Model::L3, 6, 192);  // 6 micro-batches: 6, 3 or 2 per rank
  const std::string c = config.string();
  REQUIRE(train(2, c + " --set run.dir=" + (dir / "straight").string()).exit_code == 0);
  const auto stopped = train(2, c + " --set run.dir=" + (dir / "first").string() + " --set train.zero=1 --stop-at 3");
  INFO(stopped.output);
  REQUIRE(stopped.exit_code == 0);
  const fs::path checkpoint = dir / "first" / "checkpoints" / "step_00000003";
  REQUIRE(fs::exists(checkpoint / "optimizer.safetensors"));
  for (int ranks : {1, 3}) {
    const fs::path run = dir / ("on" + std::to_string(ranks));
    const auto resumed = train(ranks, c + " --set run.dir=" + run.string() + " --set train.zero=" +
                                          (ranks == 3 ? "1" : "0") + " --resume " + checkpoint.string());
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK_THAT(resumed.output, Contains("the checkpoint was written by 2 ranks, this run has " + std::to_string(ranks)));
    check_losses(run, dir / "straight", 1e-5);
    CHECK(losses(run / "metrics.jsonl").begin()->first == 4);
  }
  fs::remove_all(dir);
}

TEST_CASE("data parallel: SIGTERM to one rank stops every rank after the same step with one checkpoint", "[dist][mpi]") {
  if (skip_without_mpi()) return;
  const fs::path dir = fresh_dir("sigterm");
  start_slow_job(dir);
  REQUIRE(wait_until([&] { return losses(dir / "run" / "metrics.jsonl").size() >= 2; }));
  REQUIRE(::kill(read_pid(dir / "pid.1"), SIGTERM) == 0);
  REQUIRE(wait_until([&] { return fs::exists(dir / "log.rc"); }));
  const std::string output = l3c::test::read_text(dir / "log");
  INFO(output);
  CHECK(read_pid(dir / "log.rc") == 0);
  CHECK_THAT(output, Contains("(SIGTERM): checkpoint"));
  const int64_t last = losses(dir / "run" / "metrics.jsonl").rbegin()->first;
  CHECK(last < 200);
  char name[32];
  std::snprintf(name, sizeof name, "step_%08lld", static_cast<long long>(last));
  CHECK(fs::exists(dir / "run" / "checkpoints" / name / "trainer.json"));
  fs::remove_all(dir);
}

TEST_CASE("data parallel: a killed rank ends the job with an error naming it", "[dist][mpi]") {
  if (skip_without_mpi()) return;
  const fs::path dir = fresh_dir("kill");
  start_slow_job(dir);
  REQUIRE(wait_until([&] { return !losses(dir / "run" / "metrics.jsonl").empty(); }));
  const auto killed = std::chrono::steady_clock::now();
  REQUIRE(::kill(read_pid(dir / "pid.1"), SIGKILL) == 0);
  REQUIRE(wait_until([&] { return fs::exists(dir / "log.rc"); }, 30));
  CHECK(std::chrono::steady_clock::now() - killed < std::chrono::seconds(25));  // within dist.timeout (20 s) + exit
  const std::string output = l3c::test::read_text(dir / "log");
  INFO(output);
  CHECK(read_pid(dir / "log.rc") != 0);
  CHECK_THAT(output, Contains("rank 1"));
  fs::remove_all(dir);
}

TEST_CASE("data parallel: a rank started with another config is refused, naming the key", "[dist][mpi]") {
  if (skip_without_mpi()) return;
  const fs::path dir = fresh_dir("mismatch");
  const fs::path config = write_config(dir, Model::Dense, 2, 128);
  const auto r = l3c::test::run_command(kMpirun + "-np 2 sh -c '" + kL3c + " train " + config.string() +
                                        " --set train.seed=$((7 + OMPI_COMM_WORLD_RANK))' 2>&1");
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("error: rank 1 was started differently from rank 0"));
  CHECK_THAT(r.output, Contains("config train.seed: 7 -> 8"));
  CHECK(!fs::exists(dir / "run" / "checkpoints"));
  // Other data under the same config: data.train is relative, and the ranks start in folders whose shards differ.
  for (const char* rank : {"0", "1"}) fs::create_directories(dir / rank);
  fs::copy_file(dir / "train.bin", dir / "0" / "train.bin");
  l3c::write_shard((dir / "1" / "train.bin").string(), std::vector<uint32_t>(3000, 5));
  const auto data = l3c::test::run_command(kMpirun + "-np 2 sh -c 'cd " + dir.string() + "/$OMPI_COMM_WORLD_RANK && " +
                                           kL3c + " train " + config.string() + " --set data.train=train.bin' 2>&1");
  INFO(data.output);
  CHECK(data.exit_code != 0);
  CHECK_THAT(data.output, Contains("error: rank 1 was started differently from rank 0"));
  CHECK_THAT(data.output, Contains("\"tokens\":5000}, this rank {\"shards\":[\"train.bin\"],\"tokens\":3000}"));
  fs::remove_all(dir);
}

TEST_CASE("inspect --world-size: memory per rank with and without ZeRO-1, and the bytes a step reduces", "[dist]") {
  const fs::path dir = fresh_dir("inspect");
  const fs::path config = write_config(dir, Model::L3, 1, 128);
  auto json_of = [&](const std::string& args) {
    const auto r = l3c::test::run_command(kL3c + " inspect " + config.string() + " --json " + args + " 2>/dev/null");
    REQUIRE(r.exit_code == 0);
    std::string text = r.output;
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return nlohmann::json::parse(text.substr(text.rfind('\n') + 1));  // the last line
  };
  const nlohmann::json one = json_of(""), four = json_of("--world-size 4 --set train.zero=1");
  const int64_t params = one["total_params"];
  CHECK(one["memory_bytes"]["optimizer"] == 2 * 4 * params);  // f32 moments, whole
  CHECK(four["memory_bytes"]["optimizer"] == 2 * 4 * ((params + 3) / 4));  // one shard of four
  CHECK(four["communication"]["payload_bytes"] == 4.0 * params);
  CHECK(four["communication"]["ring_bytes_per_rank"] == 2.0 * 3 / 4 * 4.0 * params);
  CHECK(four["communication"]["other_zero_total_bytes"] > four["memory_bytes"]["total"]);
  fs::remove_all(dir);
}

TEST_CASE("data parallel: launcher states and batches that cannot train are refused, and zero 1 alone is a no-op",
          "[dist]") {
  const fs::path dir = fresh_dir("bad");
  const fs::path config = write_config(dir, Model::Dense, 1, 96);
  const std::string c = config.string();
  auto r = train(1, c, "RANK=0 ");
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Contains("error: environment: RANK is set but WORLD_SIZE is not"));
  r = train(1, c, "RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29999 ");
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Contains("CPU ranks talk through MPI; start them with mpirun -np 2"));
  r = train(1, c, "RANK=3 WORLD_SIZE=2 ");
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Contains("rank 3 is out of range for a world of 2 ranks"));
  r = train(1, c + " --set train.zero=1 --set run.dir=" + (dir / "zero").string());
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("train.zero 1 with one rank: nothing to shard"));
  if (!skip_without_mpi()) {
    r = train(2, c + " --set run.dir=" + (dir / "odd").string());  // 3 micro-batches do not split over 2 ranks
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Contains("train.batch_tokens (96) must be a multiple of train.micro_batch * data.seq_len * ranks"));
  }
  fs::remove_all(dir);
}
