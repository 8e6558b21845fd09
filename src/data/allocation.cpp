// L3 allocations: the LZ78 dictionary (a hashed trie), the ordered walk, the baselines, the corpus pass
// over token shards, and the allocation file.
#include "data/allocation.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "core/config.h"
#include "core/errors.h"
#include "core/limits.h"
#include "core/safetensors.h"
#include "data/shard.h"

namespace l3c {

namespace {
constexpr uint64_t kEmptySlot = ~uint64_t{0};
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;

uint64_t slot_key(int32_t node, uint32_t token) { return (static_cast<uint64_t>(node) << 32) | token; }
// Multiplicative hashing with the high bits folded down, so that every bit of (node, token) matters.
size_t slot_of(uint64_t key, size_t mask) {
  uint64_t h = key * 0x9E3779B97F4A7C15ull;
  h ^= h >> 32;
  return static_cast<size_t>(h) & mask;
}
}  // namespace

// ---- the LZ78 dictionary -----------------------------------------------------------------------------

LzwDictionary::LzwDictionary(int64_t vocab_size) : vocab_size_(vocab_size) {
  L3C_CHECK(vocab_size >= 1 && vocab_size < std::numeric_limits<int32_t>::max(), "vocabulary size {}", vocab_size);
  count_.assign(static_cast<size_t>(vocab_size), 0);
  last_token_.resize(static_cast<size_t>(vocab_size));
  for (int64_t u = 0; u < vocab_size; ++u) last_token_[u] = static_cast<uint32_t>(u);
  parent_.assign(static_cast<size_t>(vocab_size), -1);
  slots_.assign(size_t{1} << 16, Slot{kEmptySlot, -1});
}

void LzwDictionary::reserve(int64_t codewords) {
  count_.reserve(static_cast<size_t>(codewords));
  last_token_.reserve(static_cast<size_t>(codewords));
  parent_.reserve(static_cast<size_t>(codewords));
  while (static_cast<int64_t>(slots_.size()) < 2 * codewords) grow();
}

int32_t LzwDictionary::find_child(int32_t node, uint32_t token) const {
  const uint64_t key = slot_key(node, token);
  const size_t mask = slots_.size() - 1;
  for (size_t slot = slot_of(key, mask);; slot = (slot + 1) & mask) {
    if (slots_[slot].key == key) return slots_[slot].child;
    if (slots_[slot].key == kEmptySlot) return -1;
  }
}

void LzwDictionary::insert_child(int32_t node, uint32_t token, int32_t child) {
  if (2 * (used_slots_ + 1) > static_cast<int64_t>(slots_.size())) grow();  // load factor <= 1/2
  const uint64_t key = slot_key(node, token);
  const size_t mask = slots_.size() - 1;
  size_t slot = slot_of(key, mask);
  while (slots_[slot].key != kEmptySlot) slot = (slot + 1) & mask;
  slots_[slot] = {key, child};
  ++used_slots_;
}

void LzwDictionary::grow() {
  std::vector<Slot> old(slots_.size() * 2, Slot{kEmptySlot, -1});
  old.swap(slots_);
  const size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.key == kEmptySlot) continue;
    size_t slot = slot_of(s.key, mask);
    while (slots_[slot].key != kEmptySlot) slot = (slot + 1) & mask;
    slots_[slot] = s;
  }
}

void LzwDictionary::push(uint32_t token) {
  L3C_CHECK(token < vocab_size_, "LZW: token {} outside the vocabulary of {}", token, vocab_size_);
  if (current_ < 0) {  // a codeword starts with a single token, always in the dictionary
    current_ = static_cast<int32_t>(token);
    return;
  }
  const int32_t child = find_child(current_, token);
  if (child >= 0) {  // x[i..j+1) is in D: extend
    current_ = child;
    return;
  }
  // x[i..j) is the longest match: count it, insert x[i..j+1) with count 1 and continue after x[j].
  if (size() >= std::numeric_limits<int32_t>::max())
    fail("LZW: the dictionary outgrew {} codewords; allocate from fewer tokens", std::numeric_limits<int32_t>::max());
  ++count_[current_];
  const auto node = static_cast<int32_t>(size());
  count_.push_back(1);
  last_token_.push_back(token);
  parent_.push_back(current_);
  insert_child(current_, token, node);
  current_ = -1;
}

void LzwDictionary::end_document() {
  if (current_ >= 0) ++count_[current_];  // j == n: count x[i..n)
  current_ = -1;
}

std::vector<uint32_t> LzwDictionary::codeword(int64_t node) const {
  std::vector<uint32_t> tokens;
  for (int64_t n = node; n >= 0; n = parent_[n]) tokens.push_back(last_token_[n]);
  std::reverse(tokens.begin(), tokens.end());
  return tokens;
}

// ---- the walk ---------------------------------------------------------------------------------------

namespace {
// Entries by count descending, ties in insertion order: a counting sort over small counts (most
// codewords are seen a few times), a stable sort for the few large ones, which come first.
std::vector<int32_t> entries_by_count(const std::vector<int64_t>& counts) {
  constexpr int64_t kBuckets = 1 << 16;
  std::vector<int64_t> starts(kBuckets + 1, 0);
  std::vector<int32_t> large;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] >= kBuckets) large.push_back(static_cast<int32_t>(e));
    else ++starts[kBuckets - 1 - counts[e] + 1];  // bucket b holds count kBuckets - 1 - b
  }
  std::stable_sort(large.begin(), large.end(), [&](int32_t a, int32_t b) { return counts[a] > counts[b]; });
  std::vector<int32_t> order(counts.size());
  std::copy(large.begin(), large.end(), order.begin());
  starts[0] = static_cast<int64_t>(large.size());
  for (int64_t b = 0; b < kBuckets; ++b) starts[b + 1] += starts[b];
  for (size_t e = 0; e < counts.size(); ++e)
    if (counts[e] < kBuckets) order[starts[kBuckets - 1 - counts[e]]++] = static_cast<int32_t>(e);
  return order;
}
}  // namespace

std::vector<int32_t> walk_allocation(const std::vector<int64_t>& counts, const std::vector<uint32_t>& last_token,
                                     int64_t vocab_size, int64_t v, int64_t k, int64_t* passes) {
  L3C_CHECK(counts.size() == last_token.size() && static_cast<int64_t>(counts.size()) >= vocab_size,
            "walk: {} counts, {} last tokens, vocabulary {}", counts.size(), last_token.size(), vocab_size);
  check_allocation_sizes(vocab_size, v, k, "allocation");
  std::vector<int32_t> rows(static_cast<size_t>(vocab_size), 1);
  int64_t total = vocab_size, walks = 0;
  // A whole pass gives token u min(entries ending in u, k - n_u) rows, whatever the order; only the
  // last, partial pass needs the order. Every token has at least its single-token entry, so a pass
  // gains at least one row while total < v <= V * k.
  std::vector<int64_t> entries_of(static_cast<size_t>(vocab_size), 0);
  for (uint32_t u : last_token) ++entries_of[u];
  while (total < v) {
    ++walks;
    int64_t gain = 0;
    for (int64_t u = 0; u < vocab_size; ++u) gain += std::min<int64_t>(entries_of[u], k - rows[u]);
    if (total + gain <= v) {
      for (int64_t u = 0; u < vocab_size; ++u) rows[u] += static_cast<int32_t>(std::min<int64_t>(entries_of[u], k - rows[u]));
      total += gain;
      continue;
    }
    for (int32_t e : entries_by_count(counts)) {
      const uint32_t u = last_token[e];
      if (rows[u] < k) {
        ++rows[u];
        if (++total == v) break;
      }
    }
  }
  if (passes) *passes = walks;
  return rows;
}

std::vector<int32_t> lzw_allocation(const LzwDictionary& dictionary, int64_t v, int64_t k, int64_t* passes) {
  std::vector<int64_t> counts(static_cast<size_t>(dictionary.size()));
  std::vector<uint32_t> last(counts.size());
  for (int64_t e = 0; e < dictionary.size(); ++e) {
    counts[e] = dictionary.count(e);
    last[e] = dictionary.last_token(e);
  }
  return walk_allocation(counts, last, dictionary.vocab_size(), v, k, passes);
}

std::vector<int32_t> unigram_allocation(const std::vector<int64_t>& token_counts, int64_t v, int64_t k,
                                        int64_t* passes) {
  std::vector<uint32_t> identity(token_counts.size());
  for (size_t u = 0; u < identity.size(); ++u) identity[u] = static_cast<uint32_t>(u);
  return walk_allocation(token_counts, identity, static_cast<int64_t>(token_counts.size()), v, k, passes);
}

std::vector<int32_t> uniform_allocation(int64_t vocab_size, int64_t v, int64_t k) {
  check_allocation_sizes(vocab_size, v, k, "allocation");
  std::vector<int32_t> rows(static_cast<size_t>(vocab_size));
  for (int64_t u = 0; u < vocab_size; ++u)
    rows[u] = static_cast<int32_t>(std::min<int64_t>(k, v / vocab_size + (u < v % vocab_size ? 1 : 0)));
  return rows;
}

void check_allocation_sizes(int64_t vocab_size, int64_t v, int64_t k, const std::string& what) {
  if (vocab_size < 1) fail("{}: the vocabulary size must be >= 1, got {}", what, vocab_size);
  if (vocab_size > limits::kMaxVocabSize)
    fail("{}: the vocabulary size must be <= {} (l3c's limit), got {}", what, limits::kMaxVocabSize, vocab_size);
  if (k < 1) fail("{}: k must be >= 1, got {}", what, k);
  if (k > limits::kMaxWidth) fail("{}: k must be <= {} (l3c's limit), got {}", what, limits::kMaxWidth, k);
  if (v < vocab_size)
    fail("{}: v = {} is smaller than the vocabulary size {}: every token owns at least one row (need V <= v <= V*k)",
         what, v, vocab_size);
  if (v / k > vocab_size || (v / k == vocab_size && v % k != 0))
    fail("{}: v = {} is larger than vocabulary size * k = {} * {} = {}: no token owns more than k rows", what, v,
         vocab_size, k, vocab_size * k);
  if (v > std::numeric_limits<int32_t>::max())
    fail("{}: v = {} rows do not fit 32-bit row offsets", what, v);
}

void validate_allocation(const std::vector<int32_t>& counts, int64_t vocab_size, int64_t v, int64_t k,
                         const std::string& what) {
  if (static_cast<int64_t>(counts.size()) != vocab_size)
    fail("{}: the allocation covers {} token ids but the vocabulary has {} (model.vocab_size)", what, counts.size(),
         vocab_size);
  int64_t sum = 0;
  for (int64_t u = 0; u < vocab_size; ++u) {
    if (counts[u] < 1) fail("{}: token {} owns {} rows; every token owns at least 1", what, u, counts[u]);
    if (counts[u] > k) fail("{}: token {} owns {} rows, more than model.l3.k = {}", what, u, counts[u], k);
    sum += counts[u];
  }
  if (sum != v) fail("{}: the counts sum to {} rows but model.l3.v is {}", what, sum, v);
}

uint64_t counts_checksum(const std::vector<int32_t>& counts) {
  uint64_t h = kFnvOffset;
  for (int32_t c : counts) {
    h ^= static_cast<uint32_t>(c);
    h *= kFnvPrime;
  }
  return h;
}

// ---- from token shards ---------------------------------------------------------------------------------

Allocation compute_allocation(const AllocationRequest& request, const ProgressFn& progress) {
  const int64_t V = request.vocab_size;
  check_allocation_sizes(V, request.v, request.k, request.what);
  Allocation result;
  result.method = request.method;
  result.v = request.v;
  result.k = request.k;
  if (request.method == AllocationMethod::Uniform) {
    result.counts = uniform_allocation(V, request.v, request.k);
    return result;
  }
  if (request.data.empty())
    fail("{}: method {} needs token shards to read", request.what, choice_name(request.method));
  if (request.eot >= V) fail("{}: end-of-text id {} is outside the vocabulary of {}", request.what, request.eot, V);

  CorpusStats stats;
  std::vector<TokenShard> shards;
  for (const std::string& spec : request.data)
    for (const std::string& path : expand_shard_paths(spec, request.what)) {
      shards.emplace_back(path);
      stats.shards.push_back(path);
      stats.tokens += shards.back().size();
    }

  const bool lzw = request.method == AllocationMethod::Lzw;
  std::optional<LzwDictionary> dictionary;
  if (lzw) {
    dictionary.emplace(V);
    // Every insertion consumes at least two tokens; a third of the tokens is a generous estimate.
    dictionary->reserve(std::min<int64_t>(stats.tokens / 3, std::numeric_limits<int32_t>::max() / 2));
  }
  std::vector<int64_t> token_counts(lzw ? 0 : static_cast<size_t>(V), 0);
  const int64_t eot = request.eot;
  uint64_t checksum = kFnvOffset;
  int64_t done = 0;
  bool in_document = false;
  constexpr int64_t kProgressEvery = 1 << 20;
  for (const TokenShard& shard : shards) {
    shard.for_each_chunk(kProgressEvery, [&](int64_t begin, std::span<const uint32_t> tokens) {
      for (size_t j = 0; j < tokens.size(); ++j) {
        const uint32_t t = tokens[j];
        const int64_t i = begin + static_cast<int64_t>(j);
        checksum = (checksum ^ t) * kFnvPrime;
        if (static_cast<int64_t>(t) == eot) {  // a document boundary, not parsed itself
          if (lzw) dictionary->end_document();
          in_document = false;
          continue;
        }
        if (t >= V)
          fail("{}: token id {} at position {} is out of range for the vocabulary size {}", shard.path(), t, i, V);
        if (!in_document) ++stats.documents;
        in_document = true;
        if (lzw) dictionary->push(t);
        else ++token_counts[t];
        ++stats.tokens_parsed;
      }
      done += static_cast<int64_t>(tokens.size());
      if (progress) progress(done, stats.tokens);
    });
  }
  if (lzw) dictionary->end_document();
  if (stats.tokens_parsed == 0) fail("{}: the shards hold no tokens to parse", request.what);
  stats.checksum = checksum;
  if (lzw) {
    stats.codewords = dictionary->size();
    result.counts = lzw_allocation(*dictionary, request.v, request.k, &result.walk_passes);
  } else {
    stats.codewords = V;
    result.counts = unigram_allocation(token_counts, request.v, request.k, &result.walk_passes);
  }
  result.corpus = std::move(stats);
  validate_allocation(result.counts, V, request.v, request.k, request.what);  // the algorithms' invariant
  return result;
}

std::optional<ManifestTokenizer> read_manifest_tokenizer(const std::string& shard_spec, const std::string& what) {
  namespace fs = std::filesystem;
  const std::vector<std::string> paths = expand_shard_paths(shard_spec, what);
  const fs::path manifest = fs::path(paths.front()).parent_path() / "manifest.json";
  std::error_code ec;
  if (!fs::exists(manifest, ec)) return std::nullopt;
  const nlohmann::json j = read_json_file(manifest.string());
  ManifestTokenizer out;
  out.path = manifest.string();
  const auto tokenizer = j.find("tokenizer");
  if (tokenizer == j.end() || !tokenizer->is_object())
    fail("{}: no \"tokenizer\" object (expected {{\"tokenizer\": {{\"vocab_size\": N, \"eot_id\": ID or null}}}})",
         out.path);
  const auto vocab = tokenizer->find("vocab_size");
  if (vocab == tokenizer->end() || !vocab->is_number_integer() || vocab->get<int64_t>() < 1)
    fail("{}: tokenizer.vocab_size: expected a positive integer", out.path);
  out.vocab_size = vocab->get<int64_t>();
  const auto eot = tokenizer->find("eot_id");
  if (eot != tokenizer->end() && !eot->is_null()) {
    if (!eot->is_number_integer() || eot->get<int64_t>() < 0 || eot->get<int64_t>() >= out.vocab_size)
      fail("{}: tokenizer.eot_id: expected null or an id below vocab_size {}", out.path, out.vocab_size);
    out.eot_id = eot->get<int64_t>();
  }
  return out;
}

Allocation allocation_for_model(const ModelConfig& model, const ProgressFn& progress) {
  const L3Config& l3 = model.l3;
  const L3AllocationConfig& a = l3.allocation;
  if (!a.path.empty()) return read_allocation_file(a.path, model.vocab_size, l3.v, l3.k);
  AllocationRequest request;
  request.what = a.method == AllocationMethod::Uniform ? "model.l3.allocation" : "model.l3.allocation.data";
  request.method = a.method;
  request.vocab_size = model.vocab_size;
  request.v = l3.v;
  request.k = l3.k;
  request.eot = a.eot;
  if (a.method != AllocationMethod::Uniform) {
    request.data = {a.data};
    if (const auto manifest = read_manifest_tokenizer(a.data, request.what)) {
      if (manifest->vocab_size != model.vocab_size)
        fail("model.l3.allocation.data: {} says the shards were made with a vocabulary of {}, but model.vocab_size is {}",
             manifest->path, manifest->vocab_size, model.vocab_size);
      if (a.eot < 0 && manifest->eot_id) request.eot = *manifest->eot_id;
    }
  }
  return compute_allocation(request, progress);
}

// ---- summary and files ------------------------------------------------------------------------------

nlohmann::ordered_json allocation_summary(const Allocation& a, int64_t top) {
  nlohmann::ordered_json s;
  const auto V = static_cast<int64_t>(a.counts.size());
  s["method"] = std::string(choice_name(a.method));
  s["vocab_size"] = V;
  s["v"] = a.v;
  s["k"] = a.k;
  int64_t allocated = 0;
  for (int32_t c : a.counts) allocated += c;
  s["rows_allocated"] = allocated;
  s["counts_fnv1a64"] = fmt::format("{:016x}", counts_checksum(a.counts));
  if (a.corpus) {
    const CorpusStats& c = *a.corpus;
    s["corpus"] = {{"checksum_fnv1a64", fmt::format("{:016x}", c.checksum)},
                   {"tokens", c.tokens},
                   {"tokens_parsed", c.tokens_parsed},
                   {"documents", c.documents},
                   {"codewords", c.codewords},
                   {"shards", c.shards}};
    s["walk_passes"] = a.walk_passes;
  }
  // The tokens with the most rows (ties by id).
  std::vector<int32_t> ids(static_cast<size_t>(V));
  for (int64_t u = 0; u < V; ++u) ids[u] = static_cast<int32_t>(u);
  const int64_t shown = std::min<int64_t>(top, V);
  std::partial_sort(ids.begin(), ids.begin() + shown, ids.end(), [&](int32_t x, int32_t y) {
    return a.counts[x] != a.counts[y] ? a.counts[x] > a.counts[y] : x < y;
  });
  nlohmann::ordered_json most = nlohmann::ordered_json::array();
  for (int64_t i = 0; i < shown; ++i) most.push_back({{"token", ids[i]}, {"rows", a.counts[ids[i]]}});
  s["most_rows"] = most;
  // Histogram over power-of-two bins of the row count: 1, 2-3, 4-7, ..., and the cap k on its own.
  std::map<int64_t, int64_t> bins;  // lower bound -> tokens
  int64_t at_cap = 0;
  for (int32_t c : a.counts) {
    int64_t low = 1;
    while (low * 2 <= c) low *= 2;
    ++bins[low];
    if (c == a.k) ++at_cap;
  }
  nlohmann::ordered_json histogram = nlohmann::ordered_json::array();
  for (const auto& [low, tokens] : bins) {
    const int64_t high = std::min<int64_t>(2 * low - 1, a.k);
    histogram.push_back({{"rows", low == high ? fmt::format("{}", low) : fmt::format("{}-{}", low, high)},
                         {"tokens", tokens}});
  }
  s["histogram"] = histogram;
  s["tokens_at_k"] = at_cap;
  return s;
}

void write_allocation_file(const std::string& path, const Allocation& a) {
  std::vector<int32_t> counts = a.counts;
  const Tensor tensor(counts.data(), DType::I32, {static_cast<int64_t>(counts.size())});
  write_safetensors(path, {{"alloc", tensor}},
                    {{"format", "l3c-allocation"},
                     {"version", "1"},
                     {"vocab_size", std::to_string(counts.size())},
                     {"v", std::to_string(a.v)},
                     {"k", std::to_string(a.k)},
                     {"method", std::string(choice_name(a.method))},
                     {"counts_fnv1a64", fmt::format("{:016x}", counts_checksum(counts))},
                     {"summary", allocation_summary(a).dump()}});
}

Allocation read_allocation_file(const std::string& path, int64_t vocab_size, int64_t v, int64_t k) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail("{}: no such allocation file (write one with `l3c allocate`)", path);
  const SafetensorsFile file(path);
  const auto& meta = file.metadata();
  const auto format = meta.find("format");
  if (format == meta.end() || format->second != "l3c-allocation" || !file.contains("alloc"))
    fail("{}: not an l3c allocation file (expected the tensor \"alloc\" and format l3c-allocation, as "
         "`l3c allocate` writes)", path);
  const Tensor& t = file.get("alloc");
  if (t.dtype != DType::I32 || t.ndim != 1)
    fail("{}: \"alloc\" must be a 1-D I32 tensor, got {} {}", path, dtype_name(t.dtype), t.shape_string());
  Allocation a;
  a.counts.assign(t.ptr<int32_t>(), t.ptr<int32_t>() + t.numel());
  const auto checksum = meta.find("counts_fnv1a64");
  if (checksum == meta.end() || checksum->second != fmt::format("{:016x}", counts_checksum(a.counts)))
    fail("{}: corrupted allocation file: the counts do not match their checksum", path);
  const auto method = meta.find("method");
  a.method = parse_choice<AllocationMethod>(method == meta.end() ? "" : method->second, path + ": metadata method");
  a.v = v;
  a.k = k;
  validate_allocation(a.counts, vocab_size, v, k, path);
  return a;
}

}  // namespace l3c
