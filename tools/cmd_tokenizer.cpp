// `l3c tokenizer train|encode|decode|bench`: byte-level BPE tokenizers (src/data/bpe_tokenizer.h,
// src/data/bpe_trainer.h) from the command line.
//   train  --vocab-size N --out DIR [--threads T] [--json] INPUT...   learn a vocabulary from files / folders
//   encode --tokenizer DIR [--threads T] [--json] [FILE]              ids of FILE (or stdin), one line
//   decode --tokenizer DIR                                            ids on stdin -> bytes on stdout
//   bench  --tokenizer DIR [--threads T] [--repeat R] [--ids-out F] [--json] FILE...   encoding speed
// encode and bench take the bytes as they are (no BOM or newline normalisation); train normalises them.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/limits.h"
#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "data/bpe_tokenizer.h"
#include "data/bpe_trainer.h"

namespace l3c::cmd {

namespace {

constexpr const char* kUsage = R"(usage: l3c tokenizer SUBCOMMAND ...
  train --vocab-size N --out DIR [--threads T] [--json] INPUT...   train a byte-level BPE (files or folders)
  encode --tokenizer DIR [--threads T] [--json] [FILE]             print the ids of FILE (stdin without FILE)
  decode --tokenizer DIR                                           ids on stdin -> text on stdout
  bench --tokenizer DIR [--threads T] [--repeat R] [--ids-out F] [--json] FILE...   encoding MB/s)";

int default_threads() { return static_cast<int>(std::max(1u, std::min(std::thread::hardware_concurrency(), 64u))); }

std::string read_all(const std::string& path) {
  if (path.empty()) {
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    return text;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: read error", path);
  return text;
}

std::unique_ptr<BpeTokenizer> load_bpe(const cli::Args& args) { return BpeTokenizer::load(args.require("tokenizer")); }

// CPU time of the whole process (all threads), to tell a busy machine from a slow encoder.
double process_cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int tokenizer_train(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(argv, {{"vocab-size", "out", "threads"}, {"json"}, 1, 1 << 20,
                                           "l3c tokenizer train --vocab-size N --out DIR [--threads T] [--json] INPUT..."});
  const int64_t vocab_size = args.get_int("vocab-size", 0, 257, limits::kMaxVocabSize);
  if (!args.has("vocab-size")) fail("missing required option --vocab-size");
  const std::string out = args.require("out");
  const int threads = std::max(1, limits::checked_threads(args.get_int("threads", default_threads(), 1), "--threads"));
  const auto start = std::chrono::steady_clock::now();
  const std::vector<std::string> files = BpeTrainer::input_files(args.positional);
  BpeTrainer trainer(threads);
  for (const std::string& file : files) trainer.add_file(file);
  const BpeVocabulary vocabulary = trainer.train(vocab_size);
  write_bpe_files(out, vocabulary);
  const BpeTrainStats& s = trainer.stats();
  const double seconds = seconds_since(start);
  spdlog::info("tokenizer train: {} files, {:.1f} MB, {} pre-tokens ({} distinct) -> {} merges, vocabulary {} "
               "(<|endoftext|> = {}) in {:.1f} s (counting {:.1f} s, merging {:.1f} s) -> {}",
               files.size(), static_cast<double>(s.bytes) / 1e6, s.pretokens, s.unique_words, s.merges,
               vocabulary.tokens.size(), vocabulary.eot_id(), seconds, s.count_seconds, s.merge_seconds, out);
  if (static_cast<int64_t>(vocabulary.tokens.size()) < vocab_size)
    spdlog::warn("the text ran out of pairs: the vocabulary has {} tokens, not {}", vocabulary.tokens.size(), vocab_size);
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"out", out},
                                        {"files", files.size()},
                                        {"bytes", s.bytes},
                                        {"pretokens", s.pretokens},
                                        {"unique_words", s.unique_words},
                                        {"merges", s.merges},
                                        {"skipped_pairs", s.skipped_pairs},
                                        {"vocab_size", vocabulary.tokens.size()},
                                        {"eot_id", vocabulary.eot_id()},
                                        {"threads", threads},
                                        {"seconds", seconds},
                                        {"count_seconds", s.count_seconds},
                                        {"merge_seconds", s.merge_seconds}}
                             .dump());
  return 0;
}

int tokenizer_encode(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(argv, {{"tokenizer", "threads"}, {"json"}, 0, 1,
                                           "l3c tokenizer encode --tokenizer DIR [--threads T] [--json] [FILE]"});
  const auto tokenizer = load_bpe(args);
  const int threads = std::max(1, limits::checked_threads(args.get_int("threads", default_threads(), 1), "--threads"));
  const std::string text = read_all(args.positional.empty() ? "" : args.positional[0]);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<uint32_t> ids = tokenizer->encode_parallel(text, threads);
  const double seconds = seconds_since(start);
  std::string line;
  line.reserve(ids.size() * 6 + 1);
  char buffer[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) line.push_back(' ');
    const auto result = std::to_chars(buffer, buffer + sizeof buffer, ids[i]);
    line.append(buffer, result.ptr);
  }
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"tokens", ids.size()}, {"bytes", text.size()}, {"seconds", seconds}}.dump());
  return 0;
}

int tokenizer_decode(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(argv, {{"tokenizer"}, {}, 0, 0, "l3c tokenizer decode --tokenizer DIR < IDS"});
  const auto tokenizer = load_bpe(args);
  const std::string input = read_all("");
  std::vector<uint32_t> ids;
  size_t i = 0, number = 0;
  auto is_space = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; };
  while (i < input.size()) {
    if (is_space(input[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < input.size() && !is_space(input[j])) ++j;
    ++number;
    const std::string_view word(input.data() + i, j - i);
    uint64_t value = 0;
    const auto result = std::from_chars(word.data(), word.data() + word.size(), value);
    if (result.ec != std::errc() || result.ptr != word.data() + word.size() || value > UINT32_MAX)
      fail("stdin: item {} (byte {}): expected a token id, got '{}'", number, i, word.substr(0, 40));
    ids.push_back(static_cast<uint32_t>(value));
    i = j;
  }
  const std::string text = tokenizer->decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
  return 0;
}

int tokenizer_bench(const std::vector<std::string>& argv) {
  const cli::Args args =
      cli::parse(argv, {{"tokenizer", "threads", "repeat", "ids-out"}, {"json"}, 1, 1 << 20,
                        "l3c tokenizer bench --tokenizer DIR [--threads T] [--repeat R] [--ids-out FILE] [--json] FILE..."});
  const auto tokenizer = load_bpe(args);
  const int threads = std::max(1, limits::checked_threads(args.get_int("threads", 1, 1), "--threads"));
  const int64_t repeat = args.get_int("repeat", 3, 1);
  std::vector<std::string> texts;
  size_t bytes = 0;
  for (const std::string& file : BpeTrainer::input_files(args.positional)) {
    texts.push_back(read_all(file));
    bytes += texts.back().size();
  }
  // Each file is one document; each repetition starts from a cold per-thread cache (a fresh tokenizer
  // would behave the same), so the best time is not the result of a warm cache.
  double best = 1e300, best_cpu = 0;
  size_t tokens = 0;
  std::vector<uint32_t> all_ids;
  for (int64_t r = 0; r < repeat; ++r) {
    const auto fresh = BpeTokenizer::load(args.require("tokenizer"));
    tokens = 0;
    const double cpu_start = process_cpu_seconds();
    const auto start = std::chrono::steady_clock::now();
    for (const std::string& text : texts) {
      std::vector<uint32_t> ids = fresh->encode_parallel(text, threads);
      tokens += ids.size();
      if (r == 0 && args.has("ids-out")) all_ids.insert(all_ids.end(), ids.begin(), ids.end());
    }
    const double seconds = seconds_since(start);
    if (seconds < best) best = seconds, best_cpu = process_cpu_seconds() - cpu_start;
  }
  if (args.has("ids-out")) {
    std::ofstream out(args.get("ids-out", ""), std::ios::binary);
    if (!out) fail("--ids-out {}: cannot open for writing", args.get("ids-out", ""));
    out.write(reinterpret_cast<const char*>(all_ids.data()), static_cast<std::streamsize>(all_ids.size() * 4));
  }
  const double mb_per_s = static_cast<double>(bytes) / 1e6 / best;
  spdlog::info("tokenizer bench: {} files, {:.1f} MB, {} tokens, {} thread{}: best of {} = {:.3f} s ({:.3f} CPU s), "
               "{:.1f} MB/s",
               texts.size(), static_cast<double>(bytes) / 1e6, tokens, threads, threads == 1 ? "" : "s", repeat, best,
               best_cpu, mb_per_s);
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"files", texts.size()}, {"bytes", bytes}, {"tokens", tokens},
                                        {"threads", threads}, {"seconds", best}, {"cpu_seconds", best_cpu},
                                        {"mb_per_s", mb_per_s}}
                             .dump());
  return 0;
}

}  // namespace

int tokenizer(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::puts(kUsage);
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "train") return tokenizer_train(rest);
  if (args[0] == "encode") return tokenizer_encode(rest);
  if (args[0] == "decode") return tokenizer_decode(rest);
  if (args[0] == "bench") return tokenizer_bench(rest);
  fail("unknown tokenizer subcommand '{}'\n{}", args[0], kUsage);
}

}  // namespace l3c::cmd
