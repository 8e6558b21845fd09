// `l3c allocate --data SHARD... --v N --k K [--method lzw|uniform|unigram] --out FILE [--vocab-size V]
// [--eot ID] [--json]`: an L3 allocation (rows per token id, MODEL.md "LZW allocation") from token
// shards, written as FILE (format in src/data/allocation.h) plus a JSON summary beside it
// (FILE with .json for .safetensors). The vocabulary size and the end-of-text id default to the
// manifest.json beside the shards (`l3c prepare` writes one); --eot -1 means no end-of-text id.
#include <limits>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/limits.h"
#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "data/allocation.h"

namespace l3c::cmd {

namespace {

// A one-line progress bar on stderr when it is a terminal; otherwise a log line every 15 seconds.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label) : label_(std::move(label)), tty_(::isatty(2) == 1) {}
  void operator()(int64_t done, int64_t total) {
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double fraction = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(fraction * kWidth);
      std::fprintf(stderr, "\r%s [%s%s] %5.1f%% %.1fM/%.1fM tokens %.1fM tok/s", label_.c_str(),
                   std::string(static_cast<size_t>(filled), '#').c_str(),
                   std::string(static_cast<size_t>(kWidth - filled), '.').c_str(), 100.0 * fraction, done / 1e6,
                   total / 1e6, rate / 1e6);
      if (done >= total) std::fputc('\n', stderr);
      std::fflush(stderr);
    } else if (std::chrono::duration<double>(now - last_log_).count() >= 15.0 || done >= total) {
      last_log_ = now;
      spdlog::info("{}: {:.1f}% ({:.1f}M of {:.1f}M tokens, {:.1f}M tok/s)", label_, 100.0 * fraction, done / 1e6,
                   total / 1e6, rate / 1e6);
    }
  }

 private:
  std::string label_;
  bool tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_log_ = start_;
};

std::string summary_path(const std::string& out) {
  namespace fs = std::filesystem;
  const fs::path p(out);
  return p.extension() == ".safetensors" ? fs::path(p).replace_extension(".json").string() : out + ".json";
}

}  // namespace

int allocate(const std::vector<std::string>& argv) {
  const char* usage =
      "l3c allocate --data SHARD... --v N --k K [--method lzw|uniform|unigram] --out FILE [--vocab-size V] "
      "[--eot ID (-1: none)] [--json]";
  const cli::Args args =
      cli::parse(argv, {{"data", "v", "k", "method", "out", "vocab-size", "eot"}, {"json"}, 0, 1 << 20, usage});
  const AllocationMethod method = parse_choice<AllocationMethod>(args.get("method", "lzw"), "--method");
  const std::string out = args.require("out");
  const int64_t v = args.get_int("v", 0, 1, std::numeric_limits<int32_t>::max());
  const int64_t k = args.get_int("k", 0, 1, limits::kMaxWidth);
  if (!args.has("v")) fail("missing required option --v (table rows per L3 layer)\nusage: {}", usage);
  if (!args.has("k")) fail("missing required option --k (the most rows one token owns)\nusage: {}", usage);

  std::vector<std::string> data;
  if (args.has("data")) data.push_back(args.get("data", ""));
  data.insert(data.end(), args.positional.begin(), args.positional.end());
  const bool uniform = method == AllocationMethod::Uniform;
  if (data.empty() && !(uniform && args.has("vocab-size")))
    fail("missing required option --data (token shards: files, folders or globs)\nusage: {}", usage);

  // Vocabulary size and end-of-text id: the options, else the manifest beside the shards.
  std::optional<ManifestTokenizer> manifest;
  if (!data.empty()) manifest = read_manifest_tokenizer(data.front(), "--data");
  int64_t vocab_size = args.get_int("vocab-size", 0, 1, limits::kMaxVocabSize);
  if (!args.has("vocab-size")) {
    if (!manifest)
      fail("--vocab-size is required: there is no manifest.json beside {} to take it from", data.front());
    vocab_size = manifest->vocab_size;
  } else if (manifest && manifest->vocab_size != vocab_size) {
    fail("--vocab-size {}: {} says the shards were made with a vocabulary of {}", vocab_size, manifest->path,
         manifest->vocab_size);
  }
  int64_t eot = args.get_int("eot", -1, -1, limits::kMaxVocabSize);
  if (!args.has("eot") && manifest && manifest->eot_id) eot = *manifest->eot_id;
  if (eot >= vocab_size) fail("--eot: {} is outside the vocabulary of {}", eot, vocab_size);
  check_allocation_sizes(vocab_size, v, k, "allocate");

  AllocationRequest request;
  request.data = uniform ? std::vector<std::string>{} : data;
  request.method = method;
  request.vocab_size = vocab_size;
  request.v = v;
  request.k = k;
  request.eot = eot;
  spdlog::info("allocate: {} over {} with V = {}, v = {}, k = {}, end-of-text {}", choice_name(method),
               uniform ? std::string("no data") : fmt::format("{} shard spec(s)", data.size()), vocab_size, v,
               k, eot >= 0 ? std::to_string(eot) : std::string("none"));
  const auto start = std::chrono::steady_clock::now();
  ProgressBar bar(fmt::format("allocate ({})", choice_name(method)));
  const Allocation allocation = compute_allocation(request, [&](int64_t done, int64_t total) { bar(done, total); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  write_allocation_file(out, allocation);
  nlohmann::ordered_json summary = allocation_summary(allocation);
  summary["eot_id"] = eot >= 0 ? nlohmann::ordered_json(eot) : nlohmann::ordered_json();
  summary["seconds"] = seconds;
  summary["out"] = out;
  const std::string json_path = summary_path(out);
  {
    std::ofstream file(json_path);
    file << summary.dump(2) << "\n";
    if (!file.flush()) fail("{}: cannot write the summary", json_path);
  }

  if (allocation.corpus)
    spdlog::info("allocate: parsed {} tokens ({} documents, {} shards) into {} codewords in {:.2f}s; corpus checksum {}",
                 allocation.corpus->tokens_parsed, allocation.corpus->documents, allocation.corpus->shards.size(),
                 allocation.corpus->codewords, seconds, summary["corpus"]["checksum_fnv1a64"].get<std::string>());
  spdlog::info("allocate: {} rows allocated (v = {}), {} tokens at the cap k = {}; most rows: {}",
               summary["rows_allocated"].get<int64_t>(), v, summary["tokens_at_k"].get<int64_t>(), k,
               summary["most_rows"].dump());
  spdlog::info("allocate: histogram of rows per token: {}", summary["histogram"].dump());
  spdlog::info("allocate: wrote {} and {}", out, json_path);
  if (args.flag("json")) cli::print_json_line(summary.dump());
  return 0;
}

}  // namespace l3c::cmd
