// GPT-2-style byte-level BPE: GPT-2's byte alphabet, the hand-written pre-tokeniser, loading encoder.json +
// vocab.bpe, encode (serial and parallel) and decode.
//
// Speed comes from three things: the pre-tokeniser is a direct scanner over UTF-8 (an ASCII class table, a
// 64K-entry table for the rest of the BMP, a binary search above it); every vocabulary token whose own BPE is
// itself sits in an immutable table built at load, so most pre-tokens of real text cost one hash lookup; and
// the other pre-tokens are cached per thread (thread_local, cleared when it grows past kCacheMaxEntries).
#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <queue>

#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/errors.h"
#include "core/limits.h"
#include "core/file_io.h"
#include "core/sha256.h"
#include "data/unicode_tables.h"

namespace l3c {

namespace {

using unicode::CharClass;
using unicode::kLetter;
using unicode::kNumber;
using unicode::kOther;
using unicode::kSpace;

// ---- GPT-2's byte alphabet ----------------------------------------------------------------------------------
struct ByteAlphabet {
  std::array<uint32_t, 256> codepoint{};     // byte -> code point
  std::array<uint8_t, 256> order{};          // id -> byte (GPT-2's order of the byte tokens)
  std::array<int16_t, 324> byte_of{};        // code point (< 324) -> byte, -1 when none
  ByteAlphabet() {
    // GPT-2's bytes_to_unicode(): printable Latin-1 bytes keep their code point, in this order; the other
    // bytes follow in increasing order as 256, 257, ...
    int n = 0;
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    for (int b = 0; b < 256; ++b)
      if (printable(b)) codepoint[b] = static_cast<uint32_t>(b), order[n++] = static_cast<uint8_t>(b);
    int extra = 0;
    for (int b = 0; b < 256; ++b)
      if (!printable(b)) codepoint[b] = static_cast<uint32_t>(256 + extra++), order[n++] = static_cast<uint8_t>(b);
    byte_of.fill(-1);
    for (int b = 0; b < 256; ++b) byte_of[codepoint[b]] = static_cast<int16_t>(b);
  }
};
const ByteAlphabet kAlphabet;

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// ---- character classes ---------------------------------------------------------------------------------------
struct ClassTable {
  std::array<uint8_t, 65536> bmp{};
  ClassTable() {
    for (const unicode::ClassRange& r : unicode::kClassRanges)
      for (uint32_t cp = r.first; cp <= r.last && cp < 65536; ++cp) bmp[cp] = r.char_class;
  }
};
const ClassTable kClasses;

CharClass class_above_bmp(uint32_t cp) {
  const auto* first = std::begin(unicode::kClassRanges);
  const auto* last = std::end(unicode::kClassRanges);
  const auto* it = std::upper_bound(first, last, cp, [](uint32_t v, const unicode::ClassRange& r) { return v < r.first; });
  if (it == first) return kOther;
  --it;
  return cp <= it->last ? it->char_class : kOther;
}

inline bool continuation(uint8_t c) { return (c & 0xC0) == 0x80; }

// The class of the character at p (p < end) and its length in bytes. A byte that does not start a valid UTF-8
// sequence (overlong, surrogate, > U+10FFFF, truncated) is one character of class "other".
inline CharClass char_at(const uint8_t* p, const uint8_t* end, size_t* length) {
  const uint8_t c = p[0];
  if (c < 0x80) {
    *length = 1;
    return static_cast<CharClass>(kClasses.bmp[c]);
  }
  const ptrdiff_t left = end - p;
  if (c >= 0xC2 && c <= 0xDF) {
    if (left >= 2 && continuation(p[1])) {
      *length = 2;
      return static_cast<CharClass>(kClasses.bmp[((c & 0x1Fu) << 6) | (p[1] & 0x3Fu)]);
    }
  } else if (c >= 0xE0 && c <= 0xEF) {
    if (left >= 3 && continuation(p[1]) && continuation(p[2])) {
      const uint32_t cp = ((c & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
      if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) {
        *length = 3;
        return static_cast<CharClass>(kClasses.bmp[cp]);
      }
    }
  } else if (c >= 0xF0 && c <= 0xF4) {
    if (left >= 4 && continuation(p[1]) && continuation(p[2]) && continuation(p[3])) {
      const uint32_t cp = ((c & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
      if (cp >= 0x10000 && cp <= 0x10FFFF) {
        *length = 4;
        return class_above_bmp(cp);
      }
    }
  }
  *length = 1;
  return kOther;
}

// The end of the longest run of characters of class `cls` starting at p.
inline const uint8_t* run_end(const uint8_t* p, const uint8_t* end, CharClass cls) {
  while (p < end) {
    if (*p < 0x80) {
      if (kClasses.bmp[*p] != cls) break;
      ++p;
      continue;
    }
    size_t length;
    if (char_at(p, end, &length) != cls) break;
    p += length;
  }
  return p;
}

inline size_t pretoken_length(const uint8_t* s, const uint8_t* end) {
  const uint8_t c = s[0];
  // 's|'t|'re|'ve|'m|'ll|'d
  if (c == '\'' && end - s >= 2) {
    const uint8_t c1 = s[1];
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (end - s >= 3) {
      const uint8_t c2 = s[2];
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    }
  }
  const uint8_t* p = s;  // where the run of letters / numbers / others starts (after an optional ' ')
  size_t length;
  CharClass cls;
  if (c == ' ') {
    if (end - s >= 2) {
      cls = char_at(s + 1, end, &length);
      if (cls != kSpace) p = s + 1;
    } else {
      cls = kSpace;
    }
  } else {
    cls = char_at(s, end, &length);
  }
  if (cls != kSpace) {
    // ' ?\p{L}+', ' ?\p{N}+' or ' ?[^\s\p{L}\p{N}]+': the longest run of the class.
    return static_cast<size_t>(run_end(p + length, end, cls) - s);
  }
  // '\s+(?!\S)|\s+': the run of white space, less its last character when a non-space follows and the run
  // has more than one character (that last character then starts the next pre-token).
  const uint8_t* q = s;
  const uint8_t* last_start = s;
  while (q < end) {
    if (*q < 0x80) {
      if (kClasses.bmp[*q] != kSpace) break;
      last_start = q++;
      continue;
    }
    if (char_at(q, end, &length) != kSpace) break;
    last_start = q;
    q += length;
  }
  if (q == end || last_start == s) return static_cast<size_t>(q - s);
  return static_cast<size_t>(last_start - s);
}

// ---- hashing -------------------------------------------------------------------------------------------------
inline uint64_t mix(uint64_t a, uint64_t b) {
  const __uint128_t m = static_cast<__uint128_t>(a) * b;
  return static_cast<uint64_t>(m) ^ static_cast<uint64_t>(m >> 64);
}

inline uint64_t hash_bytes(const uint8_t* p, size_t n) {
  uint64_t h = 0x243F6A8885A308D3ull ^ n;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = mix(h ^ v, 0x9E3779B97F4A7C15ull);
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t v = 0;
    if (n >= 4) {
      uint32_t lo, hi;
      std::memcpy(&lo, p, 4);
      std::memcpy(&hi, p + n - 4, 4);
      v = lo | (static_cast<uint64_t>(hi) << 32);
    } else {
      v = p[0] | (static_cast<uint64_t>(p[n / 2]) << 8) | (static_cast<uint64_t>(p[n - 1]) << 16);
    }
    h = mix(h ^ v, 0xD6E8FEB86659FD93ull);
  }
  return mix(h, 0x9E3779B97F4A7C15ull);
}

// n bytes at a and b equal? Fixed-size loads only (overlapping at the tail), no library call.
inline bool equal_bytes(const uint8_t* a, const uint8_t* b, size_t n) {
  if (n >= 8) {
    uint64_t x, y;
    for (size_t i = 0; i + 8 <= n; i += 8) {
      std::memcpy(&x, a + i, 8);
      std::memcpy(&y, b + i, 8);
      if (x != y) return false;
    }
    std::memcpy(&x, a + n - 8, 8);
    std::memcpy(&y, b + n - 8, 8);
    return x == y;
  }
  if (n >= 4) {
    uint32_t x0, y0, x1, y1;
    std::memcpy(&x0, a, 4);
    std::memcpy(&y0, b, 4);
    std::memcpy(&x1, a + n - 4, 4);
    std::memcpy(&y1, b + n - 4, 4);
    return x0 == y0 && x1 == y1;
  }
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

// A map from byte strings to id sequences, open addressing with linear probing. A key of up to kInlineKey
// bytes is stored in its slot (one cache line touched per lookup); longer keys and multi-id values live in
// two arenas; a single id is stored in the slot itself.
class WordTable {
 public:
  static constexpr size_t kInlineKey = 16;
  struct Slot {
    uint64_t hash = 0;
    uint8_t key[kInlineKey] = {};  // the key itself, or (when longer) its offset in keys_ in the first 4 bytes
    uint16_t key_length = 0;       // 0: empty slot (keys are never empty)
    uint16_t value_count = 0;
    uint32_t value = 0;            // the id when value_count == 1, else the offset into values_
  };
  static_assert(sizeof(Slot) == 32);

  explicit WordTable(size_t capacity = 1024) { reset(capacity); }

  void reset(size_t capacity) {
    size_t n = 16;
    while (n < capacity * 2) n <<= 1;
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    keys_.clear();
    values_.clear();
    count_ = 0;
  }
  size_t size() const { return count_; }

  // Appends the ids of key to out and returns true when present.
  bool find(const uint8_t* key, size_t n, uint64_t hash, std::vector<uint32_t>& out) const {
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key_length == 0) return false;
      if (s.hash == hash && s.key_length == n && equal_bytes(stored_key(s), key, n)) {
        if (s.value_count == 1) out.push_back(s.value);
        else out.insert(out.end(), values_.begin() + s.value, values_.begin() + s.value + s.value_count);
        return true;
      }
    }
  }

  // Keys hold at most 65535 bytes and values at most 65535 ids (callers keep to that).
  void insert(const uint8_t* key, size_t n, uint64_t hash, const uint32_t* ids, size_t id_count) {
    if ((count_ + 1) * 2 > slots_.size()) grow();
    Slot s;
    s.hash = hash;
    s.key_length = static_cast<uint16_t>(n);
    if (n <= kInlineKey) {
      std::memcpy(s.key, key, n);
    } else {
      const auto offset = static_cast<uint32_t>(keys_.size());
      std::memcpy(s.key, &offset, sizeof offset);
      keys_.append(reinterpret_cast<const char*>(key), n);
    }
    s.value_count = static_cast<uint16_t>(id_count);
    if (id_count == 1) {
      s.value = ids[0];
    } else {
      s.value = static_cast<uint32_t>(values_.size());
      values_.insert(values_.end(), ids, ids + id_count);
    }
    place(s);
    ++count_;
  }

 private:
  const uint8_t* stored_key(const Slot& s) const {
    if (s.key_length <= kInlineKey) return s.key;
    uint32_t offset;
    std::memcpy(&offset, s.key, sizeof offset);
    return reinterpret_cast<const uint8_t*>(keys_.data()) + offset;
  }
  void place(const Slot& s) {
    size_t i = s.hash & mask_;
    while (slots_[i].key_length != 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.size() * 2, Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old)
      if (s.key_length != 0) place(s);
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  std::string keys_;
  std::vector<uint32_t> values_;
  size_t count_ = 0;
};

// (left id, right id) -> (merge rank, merged id).
class PairTable {
 public:
  struct Merge {
    uint32_t rank;
    uint32_t merged;
  };
  static constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();

  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, Merge{kNone, kNone});
    mask_ = cap - 1;
  }
  // Later merges of the same pair replace earlier ones (as in GPT-2's dict and Hugging Face's map).
  void insert(uint32_t a, uint32_t b, Merge m) {
    const uint64_t key = (static_cast<uint64_t>(a) << 32) | b;
    size_t i = slot(key);
    while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
    keys_[i] = key;
    values_[i] = m;
  }
  Merge find(uint32_t a, uint32_t b) const {
    const uint64_t key = (static_cast<uint64_t>(a) << 32) | b;
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return values_[i];
      if (keys_[i] == kEmpty) return Merge{kNone, kNone};
    }
  }

 private:
  static constexpr uint64_t kEmpty = std::numeric_limits<uint64_t>::max();
  size_t slot(uint64_t key) const { return mix(key, 0x9E3779B97F4A7C15ull) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  size_t mask_ = 0;
};

constexpr size_t kCacheMaxKeyBytes = 256;        // longer pre-tokens are not cached
constexpr size_t kCacheMaxEntries = size_t{1} << 18;  // then the cache starts again (<= 16 MB of slots)
constexpr size_t kSmallWord = 48;                // up to this many bytes: quadratic merge on the stack

std::atomic<uint64_t> g_next_serial{1};

// Decodes a token's spelling in GPT-2's alphabet to its bytes; false when a character is outside it.
bool unspell(std::string_view spelled, std::string& bytes) {
  bytes.clear();
  const auto* p = reinterpret_cast<const uint8_t*>(spelled.data());
  const auto* end = p + spelled.size();
  while (p < end) {
    uint32_t cp;
    if (p[0] < 0x80) {
      cp = p[0];
      p += 1;
    } else if ((p[0] & 0xE0) == 0xC0 && end - p >= 2) {
      cp = ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
      p += 2;
    } else {
      return false;  // every code point of the alphabet is below U+0800
    }
    if (cp >= kAlphabet.byte_of.size() || kAlphabet.byte_of[cp] < 0) return false;
    bytes.push_back(static_cast<char>(kAlphabet.byte_of[cp]));
  }
  return true;
}

}  // namespace

// ---- public helpers ----------------------------------------------------------------------------------------------
std::string gpt2_spell(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) append_utf8(out, kAlphabet.codepoint[c]);
  return out;
}

const std::array<uint8_t, 256>& gpt2_byte_order() { return kAlphabet.order; }

size_t next_pretoken(std::string_view text) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  return pretoken_length(s, s + text.size());
}

size_t next_safe_cut(std::string_view text, size_t from) {
  const auto* base = reinterpret_cast<const uint8_t*>(text.data());
  size_t i = from;
  while (i < text.size()) {
    const void* hit = std::memchr(base + i, '\n', text.size() - i);
    if (hit == nullptr) return text.size();
    const size_t nl = static_cast<size_t>(static_cast<const uint8_t*>(hit) - base);
    size_t cut = nl;  // before the line break: "\n", or "\r\n"
    if (cut > 0 && base[cut - 1] == '\r') --cut;
    // The byte before must be a whole character that is not white space: ASCII, not a space class.
    if (cut >= from && cut > 0 && base[cut - 1] < 0x80 && kClasses.bmp[base[cut - 1]] != kSpace) return cut;
    i = nl + 1;
  }
  return text.size();
}

// ---- the tokenizer ------------------------------------------------------------------------------------------------
struct BpeTokenizer::Impl {
  std::string dir;
  std::string checksum;
  uint64_t serial = 0;
  std::array<uint32_t, 256> byte_id{};           // byte -> its token id
  std::string token_bytes;                       // every token's bytes, concatenated
  std::vector<uint32_t> token_offset;            // id -> offset in token_bytes; (V + 1) entries
  std::vector<uint8_t> present;                  // id -> 1 when the id is in encoder.json
  std::optional<uint32_t> eot;
  int64_t merges = 0;
  PairTable pairs;
  WordTable whole_tokens{1};                     // tokens whose own BPE is themselves: bytes -> id

  std::string_view bytes_of(uint32_t id) const {
    return std::string_view(token_bytes).substr(token_offset[id], token_offset[id + 1] - token_offset[id]);
  }

  // Appends the BPE of one pre-token (n >= 1 bytes) to out.
  void bpe(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const {
    if (n == 1) {
      out.push_back(byte_id[p[0]]);
      return;
    }
    if (n <= kSmallWord) return bpe_small(p, n, out);
    bpe_large(p, n, out);
  }

  // Quadratic in n: find the lowest-rank adjacent pair, merge it, repeat.
  void bpe_small(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const {
    uint32_t symbol[kSmallWord];
    PairTable::Merge pair[kSmallWord];  // pair[i]: the merge of symbol[i], symbol[i + 1]
    size_t m = n;
    for (size_t i = 0; i < n; ++i) symbol[i] = byte_id[p[i]];
    for (size_t i = 0; i + 1 < m; ++i) pair[i] = pairs.find(symbol[i], symbol[i + 1]);
    while (m > 1) {
      size_t best = 0;
      uint32_t best_rank = PairTable::kNone;
      for (size_t i = 0; i + 1 < m; ++i)
        if (pair[i].rank < best_rank) best_rank = pair[i].rank, best = i;
      if (best_rank == PairTable::kNone) break;
      symbol[best] = pair[best].merged;
      for (size_t i = best + 1; i + 1 < m; ++i) symbol[i] = symbol[i + 1];
      for (size_t i = best + 1; i + 2 < m; ++i) pair[i] = pair[i + 1];
      --m;
      if (best > 0) pair[best - 1] = pairs.find(symbol[best - 1], symbol[best]);
      if (best + 1 < m) pair[best] = pairs.find(symbol[best], symbol[best + 1]);
    }
    out.insert(out.end(), symbol, symbol + m);
  }

  // O(n log n): symbols in a linked list, candidate pairs in a heap ordered by (rank, position), stale
  // candidates skipped when popped.
  void bpe_large(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const {
    std::vector<uint32_t> symbol(n);
    std::vector<int64_t> next(n), prev(n);
    for (size_t i = 0; i < n; ++i) {
      symbol[i] = byte_id[p[i]];
      next[i] = i + 1 < n ? static_cast<int64_t>(i + 1) : -1;
      prev[i] = static_cast<int64_t>(i) - 1;
    }
    struct Candidate {
      uint32_t rank;
      uint32_t left_id;
      uint32_t right_id;
      int64_t left;
      int64_t right;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    auto push = [&](int64_t left) {
      if (left < 0 || next[left] < 0) return;
      const int64_t right = next[left];
      const PairTable::Merge m = pairs.find(symbol[left], symbol[right]);
      if (m.rank != PairTable::kNone) heap.push({m.rank, symbol[left], symbol[right], left, right});
    };
    for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int64_t>(i));
    std::vector<uint8_t> alive(n, 1);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || symbol[c.left] != c.left_id ||
          symbol[c.right] != c.right_id)
        continue;
      symbol[c.left] = pairs.find(c.left_id, c.right_id).merged;
      alive[c.right] = 0;
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      push(prev[c.left]);
      push(c.left);
    }
    for (int64_t i = 0; i >= 0; i = next[i]) out.push_back(symbol[i]);
  }
};

namespace {

struct ThreadCache {
  uint64_t owner = 0;
  WordTable table{4096};
};
thread_local ThreadCache t_cache;

}  // namespace

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::~BpeTokenizer() = default;

std::unique_ptr<BpeTokenizer> BpeTokenizer::load(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string encoder_path = (fs::path(dir) / "encoder.json").string();
  const std::string merges_path = (fs::path(dir) / "vocab.bpe").string();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("tokenizer '{}': no such folder", dir);
  for (const std::string& path : {encoder_path, merges_path})
    if (!fs::exists(path, ec))
      fail("tokenizer folder '{}' has no {} (a BPE tokenizer is encoder.json + vocab.bpe)", dir,
           fs::path(path).filename().string());

  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->serial = g_next_serial.fetch_add(1);

  // encoder.json: {"token spelled in GPT-2's alphabet": id, ...}
  const nlohmann::json encoder = read_json_file(encoder_path);
  if (!encoder.is_object() || encoder.empty())
    fail("{}: expected a JSON object mapping tokens to ids", encoder_path);
  int64_t max_id = -1;
  // Ids size the tables below: bounded by the vocabulary limit, and by the number of tokens given, so that a small
  // file cannot make the loader allocate for ids it does not use.
  const auto most_ids = std::min<uint64_t>(limits::kMaxVocabSize, 2 * encoder.size() + 256);
  for (auto it = encoder.begin(); it != encoder.end(); ++it) {
    if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() >= most_ids)
      fail("{}: token '{}': expected an id in [0, {}) ({} tokens are given; ids lie below min(2^24, 2 x tokens + "
           "256)), got {}", encoder_path, it.key(), most_ids, encoder.size(), it.value().dump());
    max_id = std::max<int64_t>(max_id, it.value().get<int64_t>());
  }
  const size_t vocab = static_cast<size_t>(max_id + 1);
  std::vector<std::string> bytes_of_id(vocab);
  impl->present.assign(vocab, 0);
  std::string bytes;
  WordTable by_bytes(encoder.size());  // token bytes -> id, for the merges
  for (auto it = encoder.begin(); it != encoder.end(); ++it) {
    const auto id = it.value().get<uint32_t>();
    if (!unspell(it.key(), bytes))
      fail("{}: token '{}' (id {}) has a character outside GPT-2's byte alphabet", encoder_path, it.key(), id);
    if (bytes.size() > 65535) fail("{}: token id {} is longer than 65535 bytes", encoder_path, id);
    if (impl->present[id])
      fail("{}: id {} is given to two tokens ('{}' and '{}')", encoder_path, id, gpt2_spell(bytes_of_id[id]), it.key());
    impl->present[id] = 1;
    bytes_of_id[id] = bytes;
    const auto* key = reinterpret_cast<const uint8_t*>(bytes.data());
    by_bytes.insert(key, bytes.size(), hash_bytes(key, bytes.size()), &id, 1);
    if (it.key() == "<|endoftext|>") impl->eot = id;
  }
  impl->token_offset.resize(vocab + 1);
  for (size_t id = 0; id < vocab; ++id) {
    impl->token_offset[id] = static_cast<uint32_t>(impl->token_bytes.size());
    impl->token_bytes += bytes_of_id[id];
  }
  impl->token_offset[vocab] = static_cast<uint32_t>(impl->token_bytes.size());
  std::vector<uint32_t> found;
  auto lookup = [&](std::string_view b) -> std::optional<uint32_t> {
    found.clear();
    const auto* key = reinterpret_cast<const uint8_t*>(b.data());
    if (!by_bytes.find(key, b.size(), hash_bytes(key, b.size()), found)) return std::nullopt;
    return found[0];
  };
  for (int b = 0; b < 256; ++b) {
    const char byte = static_cast<char>(b);
    const auto id = lookup(std::string_view(&byte, 1));
    if (!id) fail("{}: has no token for the byte 0x{:02x} ('{}')", encoder_path, b, gpt2_spell(std::string_view(&byte, 1)));
    impl->byte_id[b] = *id;
  }

  // vocab.bpe: an optional "#version" line, then one merge per line, "LEFT RIGHT", in rank order.
  const std::string merges_text = read_file_bytes(merges_path);
  const std::string encoder_text = read_file_bytes(encoder_path);
  impl->checksum = sha256_hex(encoder_text + merges_text);
  impl->pairs.reserve(std::count(merges_text.begin(), merges_text.end(), '\n') + 1);
  size_t line_number = 0, rank = 0, start = 0;
  std::string left_bytes, right_bytes;
  while (start < merges_text.size()) {
    size_t stop = merges_text.find('\n', start);
    if (stop == std::string::npos) stop = merges_text.size();
    std::string_view line(merges_text.data() + start, stop - start);
    start = stop + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_number == 1 && line.starts_with("#version")) continue;
    const size_t space = line.find(' ');
    if (line.empty() || space == 0 || space == std::string_view::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos)
      fail("{}:{}: expected a merge 'LEFT RIGHT' (two tokens separated by one space), got '{}'", merges_path,
           line_number, line);
    const std::string_view left = line.substr(0, space), right = line.substr(space + 1);
    std::optional<uint32_t> left_id, right_id, merged_id;
    if (unspell(left, left_bytes)) left_id = lookup(left_bytes);
    if (!left_id) fail("{}:{}: merge '{}': '{}' is not a token of encoder.json", merges_path, line_number, line, left);
    if (unspell(right, right_bytes)) right_id = lookup(right_bytes);
    if (!right_id) fail("{}:{}: merge '{}': '{}' is not a token of encoder.json", merges_path, line_number, line, right);
    merged_id = lookup(left_bytes + right_bytes);
    if (!merged_id)
      fail("{}:{}: merge '{}': the merged token '{}{}' is not in encoder.json", merges_path, line_number, line, left, right);
    impl->pairs.insert(*left_id, *right_id, {static_cast<uint32_t>(rank), *merged_id});
    ++rank;
  }
  impl->merges = static_cast<int64_t>(rank);

  // Tokens whose own BPE is themselves: a pre-token equal to one of them is that one id.
  impl->whole_tokens.reset(vocab);
  std::vector<uint32_t> ids;
  for (size_t id = 0; id < vocab; ++id) {
    const std::string& b = bytes_of_id[id];
    if (!impl->present[id] || b.size() < 2 || (impl->eot && id == *impl->eot)) continue;
    ids.clear();
    const auto* key = reinterpret_cast<const uint8_t*>(b.data());
    impl->bpe(key, b.size(), ids);
    if (ids.size() == 1 && ids[0] == id) {
      const auto token = static_cast<uint32_t>(id);
      impl->whole_tokens.insert(key, b.size(), hash_bytes(key, b.size()), &token, 1);
    }
  }
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(impl)));
}

std::vector<uint32_t> BpeTokenizer::encode(std::string_view text) const {
  const Impl& impl = *impl_;
  std::vector<uint32_t> out;
  out.reserve(text.size() / 3 + 16);  // English text: about 4 bytes per token
  ThreadCache& cache = t_cache;
  if (cache.owner != impl.serial || cache.table.size() >= kCacheMaxEntries) {
    cache.owner = impl.serial;
    cache.table.reset(4096);
  }
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    const size_t n = pretoken_length(p, end);
    if (n == 1) {
      out.push_back(impl.byte_id[*p]);
    } else {
      const uint64_t hash = hash_bytes(p, n);
      if (!impl.whole_tokens.find(p, n, hash, out) && !cache.table.find(p, n, hash, out)) {
        const size_t before = out.size();
        impl.bpe(p, n, out);
        if (n <= kCacheMaxKeyBytes) cache.table.insert(p, n, hash, out.data() + before, out.size() - before);
      }
    }
    p += n;
  }
  return out;
}

std::vector<uint32_t> BpeTokenizer::encode_parallel(std::string_view text, int threads) const {
  constexpr size_t kMinPart = size_t{1} << 18;  // smaller parts are not worth a thread
  if (threads <= 1 || text.size() < 2 * kMinPart) return encode(text);
  // Cut into `threads` parts of about equal size, each cut at a safe position.
  std::vector<size_t> cuts{0};
  for (int t = 1; t < threads; ++t) {
    const size_t target = text.size() * static_cast<size_t>(t) / static_cast<size_t>(threads);
    const size_t cut = next_safe_cut(text, std::max(target, cuts.back() + 1));
    if (cut >= text.size()) break;
    cuts.push_back(cut);
  }
  cuts.push_back(text.size());
  const auto parts = static_cast<int64_t>(cuts.size() - 1);
  std::vector<std::vector<uint32_t>> ids(static_cast<size_t>(parts));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(parts));
  // OpenMP keeps its threads between calls, so their thread_local caches stay warm from one call to the next.
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int64_t i = 0; i < parts; ++i) {
    try {
      ids[i] = encode(text.substr(cuts[i], cuts[i + 1] - cuts[i]));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  size_t total = 0;
  for (const auto& v : ids) total += v.size();
  std::vector<uint32_t> out;
  out.reserve(total);
  for (const auto& v : ids) out.insert(out.end(), v.begin(), v.end());
  return out;
}

std::string BpeTokenizer::decode(std::span<const uint32_t> ids) const {
  std::string text;
  text.reserve(ids.size() * 4);
  for (uint32_t id : ids) text += token_bytes(id);
  return text;
}

std::string_view BpeTokenizer::token_bytes(uint32_t id) const {
  if (id >= impl_->present.size() || !impl_->present[id])
    fail("token id {} is not in the vocabulary of {} ({} ids)", id, impl_->dir, impl_->present.size());
  return impl_->bytes_of(id);
}

int64_t BpeTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->present.size()); }
std::optional<uint32_t> BpeTokenizer::eot_id() const { return impl_->eot; }
std::string BpeTokenizer::description() const { return impl_->dir; }
std::string BpeTokenizer::checksum() const { return impl_->checksum; }
int64_t BpeTokenizer::merge_count() const { return impl_->merges; }

}  // namespace l3c
