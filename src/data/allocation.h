// L3 allocations (MODEL.md "LZW allocation (Algorithm 1)"): how many rows of an L3 table each token id
// owns. n_u >= 1, n_u <= k, sum_u n_u = v; token u owns rows [o_u, o_u + n_u), o_u = sum_{u' < u} n_u'.
//
// Methods: "lzw" (Algorithm 1: an LZ78 parse of the token stream into a dictionary of codewords, then a
// walk over the codewords by count that gives one more row to each codeword's last token), "unigram"
// (the same walk over the single-token counts) and "uniform" (floor(v / V) rows each, one more for the
// first v mod V ids). All are deterministic: the same stream and parameters give the same counts.
//
// The stream is the shards' tokens in order (file names sorted), read as one stream: documents are
// split at the end-of-text id only (l3c prepare lets documents continue across shard boundaries), and
// the end-of-text token itself is never parsed.
//
// Allocation file (written by `l3c allocate`, read by training with model.l3.allocation.path): a
// safetensors file holding one I32 tensor "alloc" of shape (V) (the counts by token id), with
// __metadata__ {"format": "l3c-allocation", "version": "1", "vocab_size", "v", "k", "method",
// "counts_fnv1a64" (checksum of the counts, to detect a corrupted body), "summary" (the JSON summary)}.
// A truncated file is caught by the safetensors reader (the tensor's bytes run past the end), a changed
// count by the checksum, and a file that does not fit the model by validate_allocation.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config.h"

namespace l3c {

// What the corpus pass saw; reported in the summary.
struct CorpusStats {
  std::vector<std::string> shards;
  int64_t tokens = 0;           // all tokens of the shards
  int64_t tokens_parsed = 0;    // tokens the parse walked (end-of-text tokens excluded)
  int64_t documents = 0;        // non-empty documents
  uint64_t checksum = 0;        // FNV-1a 64 of the token ids in stream order, one step per id
  int64_t codewords = 0;        // LZW dictionary entries (V single tokens + every insertion); V otherwise
};

struct Allocation {
  std::vector<int32_t> counts;  // (V): rows per token id
  AllocationMethod method = AllocationMethod::Lzw;
  int64_t v = 0, k = 0;
  int64_t walk_passes = 0;      // passes over the ordered dictionary (lzw, unigram)
  std::optional<CorpusStats> corpus;  // absent for "uniform" (no data read)
};

// ---- the algorithms on in-memory input (also what the tests use) ----------------------------------

// LZ78 dictionary of Algorithm 1 as a trie: node u < V is the single token u; every later node is a
// (parent node, token) child, numbered in insertion order. Children are found through an
// open-addressing hash map keyed by (node, token), so a parse step is one probe, whatever the depth.
class LzwDictionary {
 public:
  explicit LzwDictionary(int64_t vocab_size);

  // Feeds one token of the stream (step 2 of Algorithm 1, streamed): extends the current codeword, or
  // counts it and inserts codeword + token with count 1. Tokens must be in [0, V).
  void push(uint32_t token);
  // Ends the current document: a codeword in progress is counted (the "j = n" case).
  void end_document();
  // Makes room for about `codewords` entries up front (no rehashing while parsing).
  void reserve(int64_t codewords);

  int64_t vocab_size() const { return vocab_size_; }
  int64_t size() const { return static_cast<int64_t>(count_.size()); }
  int64_t count(int64_t node) const { return count_[node]; }
  uint32_t last_token(int64_t node) const { return last_token_[node]; }
  // The codeword of a node as tokens (for tests and the summary).
  std::vector<uint32_t> codeword(int64_t node) const;

 private:
  int32_t find_child(int32_t node, uint32_t token) const;
  void insert_child(int32_t node, uint32_t token, int32_t child);
  void grow();

  int64_t vocab_size_;
  std::vector<int64_t> count_;        // per node
  std::vector<uint32_t> last_token_;  // per node
  std::vector<int32_t> parent_;       // per node (-1 for single tokens)
  struct Slot {
    uint64_t key;   // (node << 32) | token; all ones when free
    int32_t child;
  };
  std::vector<Slot> slots_;           // open addressing, linear probing, load factor <= 1/2
  int64_t used_slots_ = 0;
  int32_t current_ = -1;              // the codeword being extended; -1 between codewords
};

// Steps 3-4: order the entries by count (descending, ties in insertion order), then walk them giving
// one more row to each entry's last token below k, again from the start until the total is v.
// counts, last_token: per entry, in insertion order (entries 0..V-1 are the single tokens).
// Returns the rows per token; passes receives the number of walks begun.
std::vector<int32_t> walk_allocation(const std::vector<int64_t>& counts, const std::vector<uint32_t>& last_token,
                                     int64_t vocab_size, int64_t v, int64_t k, int64_t* passes = nullptr);

std::vector<int32_t> lzw_allocation(const LzwDictionary& dictionary, int64_t v, int64_t k, int64_t* passes = nullptr);
// token_counts (V): occurrences of each token in the stream.
std::vector<int32_t> unigram_allocation(const std::vector<int64_t>& token_counts, int64_t v, int64_t k,
                                        int64_t* passes = nullptr);
std::vector<int32_t> uniform_allocation(int64_t vocab_size, int64_t v, int64_t k);

// UserError unless vocab_size <= v <= vocab_size * k and k >= 1 (`what` prefixes the message).
void check_allocation_sizes(int64_t vocab_size, int64_t v, int64_t k, const std::string& what);

// UserError naming `what` unless counts has vocab_size entries, each in [1, k], summing to v.
void validate_allocation(const std::vector<int32_t>& counts, int64_t vocab_size, int64_t v, int64_t k,
                         const std::string& what);

// ---- from token shards ------------------------------------------------------------------------------

// Reported while the shards are read: tokens done of total.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct AllocationRequest {
  std::vector<std::string> data;  // shard specs (file, folder or glob each); ignored by "uniform"
  std::string what = "--data";    // names the source in messages
  AllocationMethod method = AllocationMethod::Lzw;
  int64_t vocab_size = 0, v = 0, k = 0;
  int64_t eot = -1;               // end-of-text id splitting documents; -1: none
};

// Reads the shards (lzw, unigram) and computes the allocation. UserError for bad sizes, a missing or
// malformed shard, or a token id >= vocab_size (naming the shard and position).
Allocation compute_allocation(const AllocationRequest& request, const ProgressFn& progress = {});

// The tokenizer facts of a manifest.json beside the first shard of `spec` (written by l3c prepare:
// {"tokenizer": {"vocab_size": N, "eot_id": ID or null}}); nullopt when there is no manifest.
struct ManifestTokenizer {
  int64_t vocab_size = 0;
  std::optional<int64_t> eot_id;
  std::string path;
};
std::optional<ManifestTokenizer> read_manifest_tokenizer(const std::string& shard_spec, const std::string& what);

// The allocation model.l3.allocation describes, for `model` (UserError naming the config field):
// path: the file, checked against the model; data: computed from the shards, with the end-of-text id
// from allocation.eot, else from manifest.json beside the shards; uniform: computed without data.
Allocation allocation_for_model(const ModelConfig& model, const ProgressFn& progress = {});

// ---- files --------------------------------------------------------------------------------------------

// The JSON summary: v, k, method, vocab_size, corpus (checksum, tokens, tokens parsed, documents,
// codewords, shards), the tokens with the most rows and a histogram of the counts.
nlohmann::ordered_json allocation_summary(const Allocation& allocation, int64_t top = 20);

void write_allocation_file(const std::string& path, const Allocation& allocation);
// Reads and checks a file against the model (vocab_size, v, k); UserError naming the file otherwise.
Allocation read_allocation_file(const std::string& path, int64_t vocab_size, int64_t v, int64_t k);

// FNV-1a 64 of the counts (the checksum stored with an allocation).
uint64_t counts_checksum(const std::vector<int32_t>& counts);

}  // namespace l3c
