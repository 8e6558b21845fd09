// Byte-level BPE training with incremental pair counts (see bpe_trainer.h for the algorithm and the
// tie-breaking rule), and writing encoder.json + vocab.bpe.
#include "data/bpe_trainer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <queue>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/file_io.h"
#include "data/bpe_tokenizer.h"

namespace l3c {

namespace {

constexpr std::string_view kEndOfText = "<|endoftext|>";
constexpr size_t kChunkBytes = size_t{1} << 20;     // counting work unit
constexpr size_t kFlushBytes = size_t{32} << 20;    // pending text counted once this much is buffered

using WordCounts = std::unordered_map<std::string, int64_t>;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) fail("{}: cannot open for writing", temporary);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.flush();
    if (!out) fail("{}: write error", temporary);
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) fail("{}: cannot rename to {}: {}", temporary, path, ec.message());
}

// A candidate merge in the heap. Highest count first; ties: smaller left id, then smaller right id.
struct Candidate {
  int64_t count;
  uint32_t left;
  uint32_t right;
  bool operator<(const Candidate& o) const {  // "lower priority than"
    if (count != o.count) return count < o.count;
    if (left != o.left) return left > o.left;
    return right > o.right;
  }
};

uint64_t pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

}  // namespace

std::string normalise_newlines(std::string_view text) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  std::string out;
  out.reserve(text.size());
  size_t start = 0;
  while (true) {
    const size_t cr = text.find("\r\n", start);
    if (cr == std::string_view::npos) {
      out.append(text.substr(start));
      return out;
    }
    out.append(text.substr(start, cr - start));
    out.push_back('\n');
    start = cr + 2;
  }
}

struct BpeTrainer::Counts {
  std::vector<WordCounts> per_thread;  // one map per counting thread, summed in train()
  std::vector<std::string> pending;    // normalised documents not counted yet
  size_t pending_bytes = 0;
};

BpeTrainer::BpeTrainer(int threads) : threads_(std::max(1, threads)), counts_(new Counts) {
  counts_->per_thread.resize(static_cast<size_t>(threads_));
}

BpeTrainer::~BpeTrainer() { delete counts_; }

namespace {

// Counts the pre-tokens of the pending documents on `threads` threads, 1 MB pieces (cut at safe positions).
void count_pending(std::vector<std::string>& pending, std::vector<WordCounts>& per_thread, int64_t* pretokens) {
  std::vector<std::string_view> pieces;
  for (const std::string& doc : pending) {
    std::string_view text(doc);
    while (!text.empty()) {
      const size_t cut = text.size() <= kChunkBytes ? text.size() : next_safe_cut(text, kChunkBytes);
      pieces.push_back(text.substr(0, cut));
      text.remove_prefix(cut);
    }
  }
  std::atomic<size_t> next{0};
  std::atomic<int64_t> total{0};
  auto work = [&](WordCounts& counts) {
    int64_t seen = 0;
    std::string key;
    for (size_t i = next++; i < pieces.size(); i = next++) {
      for_each_pretoken(pieces[i], [&](std::string_view piece) {
        key.assign(piece);
        ++counts[key];
        ++seen;
      });
    }
    total += seen;
  };
  std::vector<std::thread> workers;
  for (size_t t = 1; t < per_thread.size(); ++t) workers.emplace_back(work, std::ref(per_thread[t]));
  work(per_thread[0]);
  for (std::thread& w : workers) w.join();
  *pretokens += total.load();
  pending.clear();
}

}  // namespace

void BpeTrainer::add_text(std::string_view text) {
  const auto start = std::chrono::steady_clock::now();
  std::string normalised = normalise_newlines(text);
  stats_.documents += 1;
  stats_.bytes += static_cast<int64_t>(normalised.size());
  counts_->pending_bytes += normalised.size();
  counts_->pending.push_back(std::move(normalised));
  if (counts_->pending_bytes >= kFlushBytes) {
    count_pending(counts_->pending, counts_->per_thread, &stats_.pretokens);
    counts_->pending_bytes = 0;
  }
  stats_.count_seconds += seconds_since(start);
}

void BpeTrainer::add_file(const std::string& path) {
  const auto start = std::chrono::steady_clock::now();
  const std::string text = read_file_bytes(path);
  stats_.count_seconds += seconds_since(start);
  add_text(text);
}

BpeVocabulary BpeTrainer::train(int64_t vocab_size) {
  if (vocab_size < 257) fail("vocab_size: must be >= 257 (256 bytes + <|endoftext|>), got {}", vocab_size);
  if (vocab_size > (int64_t{1} << 24)) fail("vocab_size: must be <= 2^24, got {}", vocab_size);
  auto start = std::chrono::steady_clock::now();
  count_pending(counts_->pending, counts_->per_thread, &stats_.pretokens);
  counts_->pending_bytes = 0;
  // Sum the per-thread counts; sorting the words makes everything after this independent of hashing order.
  WordCounts& all = counts_->per_thread[0];
  for (size_t t = 1; t < counts_->per_thread.size(); ++t) {
    for (auto& [word, count] : counts_->per_thread[t]) all[word] += count;
    WordCounts().swap(counts_->per_thread[t]);
  }
  std::vector<std::pair<std::string, int64_t>> sorted(all.begin(), all.end());
  WordCounts().swap(all);
  std::sort(sorted.begin(), sorted.end());
  stats_.unique_words = static_cast<int64_t>(sorted.size());
  stats_.count_seconds += seconds_since(start);
  start = std::chrono::steady_clock::now();

  BpeVocabulary vocabulary;
  const std::array<uint8_t, 256>& order = gpt2_byte_order();
  std::array<uint32_t, 256> byte_id{};
  for (uint32_t id = 0; id < 256; ++id) {
    byte_id[order[id]] = id;
    vocabulary.tokens.emplace_back(1, static_cast<char>(order[id]));
  }
  std::unordered_set<std::string> existing(vocabulary.tokens.begin(), vocabulary.tokens.end());
  existing.insert(std::string(kEndOfText));

  struct Word {
    std::vector<uint32_t> symbols;
    int64_t count;
  };
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (auto& [text, count] : sorted) {
    Word w;
    w.count = count;
    w.symbols.reserve(text.size());
    for (unsigned char c : text) w.symbols.push_back(byte_id[c]);
    words.push_back(std::move(w));
  }
  std::vector<std::pair<std::string, int64_t>>().swap(sorted);

  struct PairStat {
    int64_t count = 0;
    int64_t stamp = -1;                 // the last merge whose update raised this count
    std::vector<uint32_t> words;        // words the pair was added to (may repeat; may be stale)
  };
  std::unordered_map<uint64_t, uint32_t> pair_index;
  std::vector<PairStat> pair_stats;
  pair_index.reserve(1 << 20);
  auto stat_of = [&](uint32_t a, uint32_t b) -> PairStat& {
    auto [it, inserted] = pair_index.try_emplace(pair_key(a, b), static_cast<uint32_t>(pair_stats.size()));
    if (inserted) pair_stats.emplace_back();
    return pair_stats[it->second];
  };
  for (uint32_t w = 0; w < words.size(); ++w) {
    const std::vector<uint32_t>& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      PairStat& p = stat_of(s[i], s[i + 1]);
      p.count += words[w].count;
      if (p.words.empty() || p.words.back() != w) p.words.push_back(w);
    }
  }
  std::priority_queue<Candidate> heap;
  for (const auto& [key, index] : pair_index)
    if (pair_stats[index].count > 0)
      heap.push({pair_stats[index].count, static_cast<uint32_t>(key >> 32), static_cast<uint32_t>(key)});

  const int64_t target_merges = vocab_size - 257;
  std::vector<std::pair<uint32_t, uint32_t>> raised;  // pairs whose count went up in this merge
  while (static_cast<int64_t>(vocabulary.merges.size()) < target_merges && !heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    auto found = pair_index.find(pair_key(top.left, top.right));
    PairStat& best = pair_stats[found->second];
    if (best.count <= 0) continue;                   // merged already, or its count fell to zero
    if (best.count != top.count) {                   // stale: try again with the current count
      heap.push({best.count, top.left, top.right});
      continue;
    }
    std::string merged_bytes = vocabulary.tokens[top.left] + vocabulary.tokens[top.right];
    if (existing.count(merged_bytes)) {              // these bytes are a token already: never merge this pair
      best.count = 0;
      std::vector<uint32_t>().swap(best.words);
      ++stats_.skipped_pairs;
      continue;
    }
    const uint32_t a = top.left, b = top.right;
    const auto made = static_cast<uint32_t>(vocabulary.tokens.size());
    const auto merge_number = static_cast<int64_t>(vocabulary.merges.size());
    existing.insert(merged_bytes);
    vocabulary.tokens.push_back(std::move(merged_bytes));
    vocabulary.merges.emplace_back(a, b);

    std::vector<uint32_t> affected = std::move(best.words);
    best.words.clear();
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    raised.clear();
    auto change = [&](uint32_t x, uint32_t y, int64_t delta, uint32_t w) {
      PairStat& p = stat_of(x, y);
      p.count += delta;
      if (delta > 0) {
        if (p.words.empty() || p.words.back() != w) p.words.push_back(w);
        if (p.stamp != merge_number) p.stamp = merge_number, raised.emplace_back(x, y);
      }
    };
    for (uint32_t w : affected) {
      std::vector<uint32_t>& s = words[w].symbols;
      const int64_t count = words[w].count;
      // Left to right, as the encoder applies a merge; only the pairs around each merged position change.
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        if (s[i] != a || s[i + 1] != b) continue;
        if (i > 0) {
          change(s[i - 1], a, -count, w);
          change(s[i - 1], made, count, w);
        }
        if (i + 2 < s.size()) {
          change(b, s[i + 2], -count, w);
          change(made, s[i + 2], count, w);
        }
        s[i] = made;
        s.erase(s.begin() + static_cast<ptrdiff_t>(i) + 1);
      }
    }
    // stat_of may have grown pair_stats: look the merged pair up again before zeroing it.
    pair_stats[pair_index.at(pair_key(a, b))].count = 0;
    for (const auto& [x, y] : raised) {
      const PairStat& p = pair_stats[pair_index.at(pair_key(x, y))];
      if (p.count > 0) heap.push({p.count, x, y});
    }
  }
  vocabulary.tokens.emplace_back(kEndOfText);
  stats_.merges = static_cast<int64_t>(vocabulary.merges.size());
  stats_.merge_seconds = seconds_since(start);
  return vocabulary;
}

std::vector<std::string> BpeTrainer::input_files(const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    if (fs::is_directory(input, ec)) {
      std::vector<std::string> inside;
      for (const auto& entry : fs::recursive_directory_iterator(input))
        if (entry.is_regular_file() && !entry.path().filename().string().starts_with("."))
          inside.push_back(entry.path().string());
      std::sort(inside.begin(), inside.end());
      if (inside.empty()) fail("{}: folder holds no files", input);
      files.insert(files.end(), inside.begin(), inside.end());
    } else if (fs::is_regular_file(input, ec)) {
      files.push_back(input);
    } else {
      fail("{}: no such file or folder", input);
    }
  }
  return files;
}

BpeVocabulary train_bpe(const std::vector<std::string>& inputs, int64_t vocab_size, int threads,
                        BpeTrainStats* stats) {
  if (vocab_size < 257) fail("vocab_size: must be >= 257 (256 bytes + <|endoftext|>), got {}", vocab_size);
  BpeTrainer trainer(threads);
  for (const std::string& file : BpeTrainer::input_files(inputs)) trainer.add_file(file);
  BpeVocabulary vocabulary = trainer.train(vocab_size);
  if (stats) *stats = trainer.stats();
  return vocabulary;
}

void write_bpe_files(const std::string& dir, const BpeVocabulary& vocabulary) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create the folder: {}", dir, ec.message());
  // encoder.json in id order, one entry per line.
  std::string encoder = "{";
  for (size_t id = 0; id < vocabulary.tokens.size(); ++id) {
    const std::string spelled = id == vocabulary.eot_id() ? std::string(kEndOfText) : gpt2_spell(vocabulary.tokens[id]);
    encoder += id == 0 ? "\n" : ",\n";
    encoder += nlohmann::json(spelled).dump();
    encoder += ": " + std::to_string(id);
  }
  encoder += "\n}\n";
  std::string merges = "#version: 0.2\n";
  for (const auto& [left, right] : vocabulary.merges)
    merges += gpt2_spell(vocabulary.tokens[left]) + " " + gpt2_spell(vocabulary.tokens[right]) + "\n";
  write_file_atomically((fs::path(dir) / "encoder.json").string(), encoder);
  write_file_atomically((fs::path(dir) / "vocab.bpe").string(), merges);
}

}  // namespace l3c
