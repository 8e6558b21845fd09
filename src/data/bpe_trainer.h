// Training a GPT-2-style byte-level BPE vocabulary, written as encoder.json + vocab.bpe (the files
// BpeTokenizer, tiktoken and Hugging Face tokenizers load).
//
// Algorithm: the text is normalised (UTF-8 BOM dropped, CRLF -> LF) and cut into GPT-2 pre-tokens; the unique
// pre-tokens ("words") are kept with their frequencies, as sequences of token ids starting from the 256 byte
// tokens. Pair counts (pair -> summed frequency of the words holding it, with multiplicity) are computed once
// and then updated incrementally: a merge touches only the words that hold the pair (each pair keeps the list of
// words it was ever added to) and changes only the counts of the pairs around each merged position. The next
// merge is taken from a max-heap with lazy updates (a popped entry whose count is stale is pushed again with the
// current count).
//
// Deterministic tie-breaking: the pair with the highest count wins; among equal counts the pair with the
// smaller left id, then the smaller right id (ids: 0..255 are the bytes in GPT-2's order, then the merges in
// the order they were made). A pair whose concatenation is already a token (another pair made the same bytes
// earlier, or "<|endoftext|>") is never merged, so every merge makes a new token and merge r has id 256 + r,
// which is the layout tiktoken's loader requires. "<|endoftext|>" is the last id.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace l3c {

struct BpeVocabulary {
  std::vector<std::string> tokens;                      // id -> bytes; the last one is "<|endoftext|>"
  std::vector<std::pair<uint32_t, uint32_t>> merges;    // rank -> (left id, right id); merge r makes id 256 + r
  uint32_t eot_id() const { return static_cast<uint32_t>(tokens.size() - 1); }
};

struct BpeTrainStats {
  int64_t documents = 0;        // texts (files) read
  int64_t bytes = 0;            // after normalisation
  int64_t pretokens = 0;        // pre-tokens in the text
  int64_t unique_words = 0;     // distinct pre-tokens
  int64_t merges = 0;
  int64_t skipped_pairs = 0;    // pairs not merged because their bytes already were a token
  double count_seconds = 0;     // reading, normalising and counting pre-tokens
  double merge_seconds = 0;
};

// Drops a leading UTF-8 byte order mark and turns every "\r\n" into "\n".
std::string normalise_newlines(std::string_view text);

class BpeTrainer {
 public:
  explicit BpeTrainer(int threads = 1);
  ~BpeTrainer();
  BpeTrainer(const BpeTrainer&) = delete;
  BpeTrainer& operator=(const BpeTrainer&) = delete;

  // Counts the pre-tokens of one document (normalised first).
  void add_text(std::string_view text);
  // Reads and adds one file (UserError naming it when it cannot be read).
  void add_file(const std::string& path);
  // Learns up to vocab_size - 257 merges (fewer when the text runs out of pairs); vocab_size >= 257.
  BpeVocabulary train(int64_t vocab_size);
  const BpeTrainStats& stats() const { return stats_; }

  // The files that inputs name, in order: folders are expanded recursively (sorted by path, names starting
  // with '.' skipped); UserError for a path that does not exist or a folder without files.
  static std::vector<std::string> input_files(const std::vector<std::string>& inputs);

 private:
  struct Counts;
  int threads_;
  Counts* counts_;
  BpeTrainStats stats_;
};

// Files and folders (read recursively, in sorted order) -> the vocabulary. Stats go to *stats when given.
BpeVocabulary train_bpe(const std::vector<std::string>& inputs, int64_t vocab_size, int threads,
                        BpeTrainStats* stats = nullptr);

// Writes DIR/encoder.json (token spelled in GPT-2's alphabet -> id, in id order) and DIR/vocab.bpe
// ("#version: 0.2", then one merge per line), each to a temporary name first and then renamed.
void write_bpe_files(const std::string& dir, const BpeVocabulary& vocabulary);

}  // namespace l3c
