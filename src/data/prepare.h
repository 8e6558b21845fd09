// `l3c prepare`: text inputs -> token shards and a manifest.
//
// Documents come from src/data/text_source.h (files, folders, JSONL). Each document is encoded with the
// tokenizer and preceded by its end-of-text id when it has one (llm.c's convention: the stream reads
// <eot> doc <eot> doc ...). A document goes to validation when u(seed, index) < val_fraction, where
// u is a counter-based uniform draw (Philox keyed by the seed) of the document's index in the stream:
// the split of a document depends on nothing else, so adding inputs at the end never moves earlier
// documents. Two corrections keep both splits usable: when no document falls into validation, the one
// with the smallest u goes there; when every document does, the one with the largest u goes to
// training. A single document (Tiny Shakespeare) is split at the line boundary nearest to
// (1 - val_fraction) of its bytes instead.
//
// Output, in --out: train_000000.bin, ... and val_000000.bin, ..., each at most shard_tokens tokens
// (documents continue across shard boundaries), uint16 when the vocabulary has at most 65536 ids, else
// uint32; then manifest.json. Shards are written under temporary names and renamed into place only
// when everything succeeded, and the manifest is written last: a folder with a manifest.json is
// complete, and a failure leaves no shard behind.
//
// Encoding runs on `threads` threads: documents (and pieces of long documents, cut where the
// tokenizer's pre-tokenisation splits anyway, see encoding_piece_ends) are encoded in parallel and
// written in input order, so the shards do not depend on the thread count.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/text_source.h"
#include "data/tokenizer.h"

namespace l3c {

struct PrepareOptions {
  std::vector<std::string> inputs;   // files and folders
  std::string out;                   // output folder (created; must not hold a prepared dataset)
  double val_fraction = 0.1;         // in [0, 1)
  std::string field = "text";        // the text field of JSONL objects
  int64_t shard_tokens = 100'000'000;
  uint64_t seed = 1337;              // of the document split
  InvalidUtf8 invalid_utf8 = InvalidUtf8::Error;
  int threads = 0;                   // 0: all cores (OpenMP's default)
  bool progress = true;              // progress bar on stderr when it is a terminal
};

struct PrepareResult {
  nlohmann::ordered_json manifest;   // as written to OUT/manifest.json
  double seconds = 0.0;
  double megabytes_per_second = 0.0; // raw input bytes per second of the whole command
};

// Runs the whole preparation. UserError for bad options or input (naming the file and position);
// nothing is left in `out` but what was there before unless it succeeds.
PrepareResult prepare_dataset(const PrepareOptions& options, const Tokenizer& tokenizer);

// The split rule before the two corrections: whether document `index` goes to validation.
bool document_in_val(uint64_t seed, int64_t index, double val_fraction);

// Where long text is cut into pieces that are encoded independently: the end offset of each piece, the
// last being text.size(). Pieces are about target_bytes long and end just before a '\n' that is followed
// by a printable non-space ASCII character. GPT-2's pre-tokenisation splits on both sides of such a
// newline whatever precedes it: a run of whitespace W before a non-space character becomes W minus its
// last character (`\s+(?!\S)`), then that last character alone, here '\n' (only a space joins the word
// after it); a piece ending in W minus the newline, or starting with the newline, pre-tokenises the same
// way on its own. So encoding the pieces one by one gives exactly the ids of the whole text (a test
// checks it on real text). Text without such a place stays whole.
std::vector<size_t> encoding_piece_ends(std::string_view text, size_t target_bytes);

// Where a single document is split into training and validation text: the start of the line nearest to
// (1 - val_fraction) of its bytes; 0 or text.size() when it cannot be split (one line).
size_t single_document_cut(std::string_view text, double val_fraction);

// The manifest.json in the folder of a shard, when there is one.
std::optional<nlohmann::json> read_manifest_beside(const std::string& shard_path);

// The tokenizer a run records (data.tokenizer), checked against the model: a BPE folder's vocabulary
// must fit model.vocab_size. Errors name data.tokenizer.
std::unique_ptr<Tokenizer> load_data_tokenizer(const std::string& spec, int64_t model_vocab_size);

// Checks that shards whose folder holds a manifest.json were made by `tokenizer` (same checksum): a run
// records the tokenizer that generate decodes with, so a mismatch is an error naming `what`.
void check_shards_tokenizer(const Tokenizer& tokenizer, const std::vector<std::string>& shard_paths,
                            const std::string& what);

}  // namespace l3c
