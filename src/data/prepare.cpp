// `l3c prepare`: reading, splitting, parallel encoding, shard writing, progress and the manifest.
#include "data/prepare.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/config.h"
#include "core/errors.h"
#include "core/limits.h"
#include "core/file_io.h"
#include "core/rng.h"
#include "data/shard.h"

namespace l3c {

namespace fs = std::filesystem;

namespace {

// The Philox stream of the document split (epochs of the training order use streams from 0 up).
constexpr uint64_t kDocumentSplitStream = ~uint64_t{0};

double split_draw(uint64_t seed, int64_t index) {
  return Philox(seed, RngPurpose::Data, kDocumentSplitStream).uniform(static_cast<uint64_t>(index));
}

bool printable_ascii(char c) { return c > ' ' && c < 0x7F; }

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// A one-line progress bar on stderr when it is a terminal; otherwise a log line every 15 seconds.
class Progress {
 public:
  Progress(uint64_t total_bytes, bool enabled)
      : total_(std::max<uint64_t>(total_bytes, 1)), enabled_(enabled), tty_(::isatty(::fileno(stderr)) != 0),
        start_(clock_type::now()), last_(start_) {}

  void update(uint64_t bytes, int64_t tokens, bool final = false) {
    if (!enabled_) return;
    const auto now = clock_type::now();
    const double since_last = std::chrono::duration<double>(now - last_).count();
    if (!final && since_last < (tty_ ? 0.1 : 15.0)) return;
    last_ = now;
    const double elapsed = std::max(seconds_since(start_), 1e-9);
    const double fraction = std::min(1.0, static_cast<double>(bytes) / static_cast<double>(total_));
    const double mb_per_s = static_cast<double>(bytes) / 1e6 / elapsed;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(fraction * kWidth);
      std::string bar(static_cast<size_t>(filled), '=');
      if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
      std::fprintf(stderr, "\rprepare [%s] %5.1f%% %.1f/%.1f MB | %.1f MB/s | %.2fM tokens", bar.c_str(),
                   100.0 * fraction, static_cast<double>(bytes) / 1e6, static_cast<double>(total_) / 1e6, mb_per_s,
                   static_cast<double>(tokens) / 1e6);
      if (final) std::fputc('\n', stderr);
      std::fflush(stderr);
    } else if (!final) {
      spdlog::info("prepare: {:.1f}% of {:.1f} MB | {:.1f} MB/s | {:.2f}M tokens", 100.0 * fraction,
                   static_cast<double>(total_) / 1e6, mb_per_s, static_cast<double>(tokens) / 1e6);
    }
  }

 private:
  uint64_t total_;
  bool enabled_, tty_;
  clock_type::time_point start_, last_;
};

// One split's output: a sequence of shards of at most shard_tokens tokens each, written under temporary
// names and published together at the end.
class SplitOutput {
 public:
  SplitOutput(std::string prefix, fs::path dir, int64_t shard_tokens, bool wide)
      : prefix_(std::move(prefix)), dir_(std::move(dir)), shard_tokens_(shard_tokens), wide_(wide) {}

  void append(std::span<const uint32_t> tokens) {
    while (!tokens.empty()) {
      if (!current_) {
        const std::string name = fmt::format("{}_{:06d}.bin", prefix_, shards_.size());
        current_ = std::make_unique<ShardWriter>((dir_ / name).string(), wide_);
        names_.push_back(name);
      }
      const size_t take = std::min<size_t>(tokens.size(), static_cast<size_t>(shard_tokens_ - current_->size()));
      current_->append(tokens.first(take));
      tokens = tokens.subspan(take);
      tokens_ += static_cast<int64_t>(take);
      if (current_->size() == shard_tokens_) close_current();
    }
  }
  void append_one(uint32_t id) { append(std::span<const uint32_t>(&id, 1)); }

  void finish() { close_current(); }
  void publish() {
    for (auto& shard : shards_) shard->publish();
  }
  int64_t tokens() const { return tokens_; }
  const std::vector<std::string>& names() const { return names_; }
  int64_t documents = 0;

 private:
  void close_current() {
    if (!current_) return;
    current_->finish();
    shards_.push_back(std::move(current_));
  }
  std::string prefix_;
  fs::path dir_;
  int64_t shard_tokens_;
  bool wide_;
  std::unique_ptr<ShardWriter> current_;
  std::vector<std::unique_ptr<ShardWriter>> shards_;
  std::vector<std::string> names_;
  int64_t tokens_ = 0;
};

// A piece of a document's text, encoded on its own.
struct Piece {
  std::shared_ptr<const std::string> text;
  size_t begin = 0, end = 0;
  bool starts_document = false;
  bool val = false;
};

// Refuses an output folder that already holds a prepared dataset (or part of one).
void check_output_folder(const fs::path& out) {
  std::error_code ec;
  if (fs::exists(out, ec) && !fs::is_directory(out, ec)) fail("--out {}: exists and is not a folder", out.string());
  if (fs::is_directory(out, ec)) {
    for (const auto& entry : fs::directory_iterator(out, ec)) {
      const std::string name = entry.path().filename().string();
      const bool shard = (name.rfind("train_", 0) == 0 || name.rfind("val_", 0) == 0) && entry.path().extension() == ".bin";
      if (name == "manifest.json" || shard)
        fail("--out {}: already holds a prepared dataset ({}); choose another folder or remove it", out.string(),
             name);
    }
  }
  fs::create_directories(out, ec);
  if (ec) fail("--out {}: cannot create the folder: {}", out.string(), ec.message());
}

}  // namespace

bool document_in_val(uint64_t seed, int64_t index, double val_fraction) {
  return split_draw(seed, index) < val_fraction;
}

std::vector<size_t> encoding_piece_ends(std::string_view text, size_t target_bytes) {
  std::vector<size_t> ends;
  target_bytes = std::max<size_t>(target_bytes, 1);
  size_t start = 0;
  while (text.size() - start > target_bytes + target_bytes / 2) {
    size_t cut = 0;
    for (size_t j = start + target_bytes;; ++j) {
      j = text.find('\n', j);
      if (j == std::string_view::npos || j + 1 >= text.size()) break;
      if (printable_ascii(text[j + 1])) {
        cut = j;
        break;
      }
    }
    if (cut == 0) break;
    ends.push_back(cut);
    start = cut;
  }
  ends.push_back(text.size());
  return ends;
}

size_t single_document_cut(std::string_view text, double val_fraction) {
  if (val_fraction <= 0.0 || text.empty()) return text.size();
  const auto target = static_cast<size_t>(std::llround((1.0 - val_fraction) * static_cast<double>(text.size())));
  // The start of a line: just after a '\n' (and not the end of the text). Forward first, then backward.
  const size_t forward = target == 0 ? std::string_view::npos : text.find('\n', target - 1);
  const size_t backward = target == 0 ? std::string_view::npos : text.rfind('\n', target - 1);
  size_t best = text.size();
  auto consider = [&](size_t newline) {
    if (newline == std::string_view::npos || newline + 1 >= text.size()) return;
    const size_t cut = newline + 1;
    const auto distance = [&](size_t c) { return c > target ? c - target : target - c; };
    if (best == text.size() || distance(cut) < distance(best)) best = cut;
  };
  consider(forward);
  consider(backward);
  return best;
}

PrepareResult prepare_dataset(const PrepareOptions& options, const Tokenizer& tokenizer) {
  const auto start = clock_type::now();
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0))
    fail("--val-fraction: must be in [0, 1), got {}", options.val_fraction);
  if (options.shard_tokens < 2 || options.shard_tokens > INT32_MAX)
    fail("--shard-tokens: must be in [2, {}], got {}", INT32_MAX, options.shard_tokens);
  if (options.field.empty()) fail("--field: must not be empty");
  if (options.inputs.empty()) fail("no inputs: give text files, folders or .jsonl files");
  const int threads = limits::checked_threads(options.threads, "--threads") > 0 ? options.threads : omp_get_max_threads();

  const std::vector<TextInput> inputs = expand_text_inputs(options.inputs);
  const fs::path out(options.out);
  check_output_folder(out);

  // One pass over the inputs first: checksums for the manifest, the number of documents for the split.
  const InputScan scan = scan_inputs(inputs, threads);
  uint64_t input_bytes = 0;
  for (const TextInput& input : inputs) input_bytes += input.bytes;
  const int64_t n = scan.documents;
  const double f = options.val_fraction;
  const bool split_lines = n == 1 && f > 0.0;
  std::optional<int64_t> flipped;  // the document whose split the corrections change
  if (n >= 2 && f > 0.0) {
    int64_t in_val = 0, lowest = 0, highest = 0;
    double low = 2.0, high = -1.0;
    for (int64_t i = 0; i < n; ++i) {
      const double u = split_draw(options.seed, i);
      in_val += u < f ? 1 : 0;
      if (u < low) low = u, lowest = i;
      if (u > high) high = u, highest = i;
    }
    if (in_val == 0) flipped = lowest;
    if (in_val == n) flipped = highest;
  }
  auto goes_to_val = [&](int64_t index) {
    const bool val = f > 0.0 && document_in_val(options.seed, index, f);
    return flipped && *flipped == index ? !val : val;
  };

  const int64_t vocab = tokenizer.vocab_size();
  const bool wide = vocab > 65536;
  const std::optional<uint32_t> eot = tokenizer.eot_id();
  spdlog::info("prepare: {} input file{} ({:.1f} MB, {} documents) with tokenizer {} (vocabulary {}{}) -> {}",
               inputs.size(), inputs.size() == 1 ? "" : "s", static_cast<double>(input_bytes) / 1e6, n,
               tokenizer.description(), vocab, eot ? fmt::format(", end-of-text {}", *eot) : "", out.string());
  SplitOutput train("train", out, options.shard_tokens, wide), val("val", out, options.shard_tokens, wide);

  // Batches of pieces are encoded in parallel and appended in order.
  constexpr size_t kPieceBytes = 256 * 1024;
  constexpr size_t kBatchBytes = 8 * 1024 * 1024;
  std::vector<Piece> batch;
  size_t batch_bytes = 0;
  std::vector<std::vector<uint32_t>> encoded;
  uint64_t text_bytes = 0;
  int64_t separators = 0;
  Progress progress(input_bytes, options.progress);
  DocumentReader reader(inputs, options.field, options.invalid_utf8);

  auto flush = [&]() {
    encoded.assign(batch.size(), {});
    std::string error;
    const int64_t count = static_cast<int64_t>(batch.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t k = 0; k < count; ++k) {
      try {
        const Piece& piece = batch[k];
        encoded[k] = tokenizer.encode(std::string_view(*piece.text).substr(piece.begin, piece.end - piece.begin));
      } catch (const std::exception& e) {
#pragma omp critical(prepare_error)
        if (error.empty()) error = e.what();
      }
    }
    if (!error.empty()) fail("encoding failed: {}", error);
    for (size_t k = 0; k < batch.size(); ++k) {
      SplitOutput& split = batch[k].val ? val : train;
      if (batch[k].starts_document) {
        ++split.documents;
        if (eot) {
          split.append_one(*eot);
          ++separators;
        }
      }
      split.append(encoded[k]);
    }
    batch.clear();
    batch_bytes = 0;
    progress.update(reader.bytes_read(), train.tokens() + val.tokens());
  };
  auto add_document = [&](std::shared_ptr<const std::string> text, size_t begin, size_t end, bool to_val) {
    text_bytes += end - begin;
    const std::vector<size_t> ends = encoding_piece_ends(std::string_view(*text).substr(begin, end - begin), kPieceBytes);
    size_t piece_begin = begin;
    for (size_t e : ends) {
      batch.push_back({text, piece_begin, begin + e, piece_begin == begin, to_val});
      piece_begin = begin + e;
    }
    batch_bytes += end - begin;
    if (batch_bytes >= kBatchBytes) flush();
  };

  Document doc;
  int64_t empty_documents = 0;
  while (reader.next(doc)) {
    if (doc.text.empty()) {
      ++empty_documents;
      continue;
    }
    auto text = std::make_shared<const std::string>(std::move(doc.text));
    if (split_lines) {
      const size_t cut = single_document_cut(*text, f);
      if (cut == 0 || cut >= text->size()) {
        spdlog::warn("prepare: the only document is a single line; it all goes to training, none to validation");
        add_document(text, 0, text->size(), false);
      } else {
        const int64_t line = std::count(text->begin(), text->begin() + static_cast<int64_t>(cut), '\n') + 1;
        spdlog::info("prepare: a single document: split at line {} (byte {} of {}): the last {:.1f}% of its text "
                     "is the validation set",
                     line, cut, text->size(), 100.0 * static_cast<double>(text->size() - cut) / static_cast<double>(text->size()));
        add_document(text, 0, cut, false);
        add_document(text, cut, text->size(), true);
      }
    } else {
      add_document(text, 0, text->size(), goes_to_val(doc.index));
    }
    doc = Document();
  }
  flush();
  progress.update(reader.bytes_read(), train.tokens() + val.tokens(), /*final=*/true);
  if (train.tokens() == 0) fail("the inputs hold no text (every document is empty)");
  if (f > 0.0 && val.tokens() == 0)
    spdlog::warn("prepare: no document went to validation; give more documents or a larger --val-fraction");
  if (empty_documents > 0) spdlog::warn("prepare: skipped {} empty documents", empty_documents);

  train.finish();
  val.finish();
  const int64_t total_tokens = train.tokens() + val.tokens();
  const int64_t text_tokens = total_tokens - separators;
  const double bytes_per_token = text_tokens > 0 ? static_cast<double>(text_bytes) / static_cast<double>(text_tokens) : 0.0;

  nlohmann::ordered_json manifest;
  manifest["tokenizer"] = {{"spec", tokenizer.description()},
                           {"sha256", tokenizer.checksum()},
                           {"vocab_size", vocab},
                           {"eot_id", eot ? nlohmann::ordered_json(*eot) : nlohmann::ordered_json()}};
  nlohmann::ordered_json input_list = nlohmann::ordered_json::array();
  for (size_t k = 0; k < inputs.size(); ++k)
    input_list.push_back({{"path", inputs[k].path}, {"bytes", inputs[k].bytes}, {"sha256", scan.sha256[k]}});
  manifest["inputs"] = input_list;
  manifest["documents"] = {{"train", train.documents}, {"val", val.documents}};
  manifest["tokens"] = {{"train", train.tokens()}, {"val", val.tokens()}};
  manifest["bytes"] = text_bytes;
  manifest["bytes_per_token"] = bytes_per_token;
  manifest["shards"] = {{"train", train.names()}, {"val", val.names()}};
  manifest["seed"] = options.seed;
  manifest["val_fraction"] = f;
  manifest["split"] = split_lines ? "lines" : "documents";
  manifest["field"] = options.field;
  manifest["invalid_utf8"] = std::string(choice_name(options.invalid_utf8));
  manifest["shard_tokens"] = options.shard_tokens;
  manifest["token_bytes"] = wide ? 4 : 2;
  manifest["separators"] = separators;

  // Everything succeeded: shards into place, then the manifest that marks the folder complete.
  train.publish();
  val.publish();
  write_file_atomic((out / "manifest.json").string(), manifest.dump(2) + "\n");
  fsync_directory(out.string());

  PrepareResult result;
  result.manifest = manifest;
  result.seconds = seconds_since(start);
  result.megabytes_per_second = static_cast<double>(input_bytes) / 1e6 / std::max(result.seconds, 1e-9);
  spdlog::info("prepare: {} documents ({} train, {} val), {} tokens ({} train in {} shard{}, {} val in {} shard{}), "
               "{} bytes of text, {:.3f} bytes per token, {:.1f}s, {:.1f} MB/s",
               train.documents + val.documents, train.documents, val.documents, total_tokens, train.tokens(),
               train.names().size(), train.names().size() == 1 ? "" : "s", val.tokens(), val.names().size(),
               val.names().size() == 1 ? "" : "s", text_bytes, bytes_per_token, result.seconds,
               result.megabytes_per_second);
  return result;
}

std::optional<nlohmann::json> read_manifest_beside(const std::string& shard_path) {
  const fs::path manifest = fs::path(shard_path).parent_path() / "manifest.json";
  std::error_code ec;
  if (!fs::is_regular_file(manifest, ec)) return std::nullopt;
  return read_json_file(manifest.string());
}

std::unique_ptr<Tokenizer> load_data_tokenizer(const std::string& spec, int64_t model_vocab_size) {
  std::unique_ptr<Tokenizer> tokenizer;
  try {
    tokenizer = load_tokenizer(spec);
  } catch (const UserError& e) {
    fail("data.tokenizer: {}", e.what());
  }
  // The byte-level default is not checked: models with smaller vocabularies train on synthetic shards
  // (generate refuses a tokenizer that does not fit).
  if (spec != "bytes" && tokenizer->vocab_size() > model_vocab_size)
    fail("model.vocab_size ({}) is smaller than the vocabulary of data.tokenizer {} ({} ids); set "
         "--set model.vocab_size={}",
         model_vocab_size, spec, tokenizer->vocab_size(), tokenizer->vocab_size());
  return tokenizer;
}

void check_shards_tokenizer(const Tokenizer& tokenizer, const std::vector<std::string>& shard_paths,
                            const std::string& what) {
  std::vector<std::string> checked;
  for (const std::string& path : shard_paths) {
    const std::string folder = fs::path(path).parent_path().string();
    if (std::find(checked.begin(), checked.end(), folder) != checked.end()) continue;
    checked.push_back(folder);
    const std::optional<nlohmann::json> manifest = read_manifest_beside(path);
    if (!manifest) continue;
    const nlohmann::json& made_by = manifest->value("tokenizer", nlohmann::json::object());
    const std::string sha = made_by.value("sha256", "");
    if (sha.empty() || sha == tokenizer.checksum()) continue;
    fail("{}: the shards in {} were made with tokenizer {} (sha256 {}, says {}/manifest.json), but data.tokenizer is "
         "{} (sha256 {}); set --set data.tokenizer={}",
         what, folder.empty() ? "." : folder, made_by.value("spec", "?"), sha, folder.empty() ? "." : folder,
         tokenizer.description(), tokenizer.checksum(), made_by.value("spec", "?"));
  }
}

}  // namespace l3c
