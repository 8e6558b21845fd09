// Held-out text: loss, perplexity and bits per byte of raw text under a trained model and its tokenizer.
//
// Each input document (a text file, or a line of a .jsonl file, folders expanded: src/data/text_source.h) is
// normalised as `l3c prepare` does (BOM dropped, CRLF -> LF, UTF-8 checked), optionally cut to its first max_bytes
// bytes (at a character boundary), encoded with the run's tokenizer and preceded by the end-of-text id when the
// tokenizer has one (as every training document is). Its tokens are scored over sliding windows of seq_len + 1
// tokens that advance by `stride`: the first window scores all its tokens, each later one only the `stride` tokens
// past the previous window, with up to seq_len - stride tokens of context before them (stride = seq_len: disjoint
// windows, lm-evaluation-harness's rolling log-likelihood). Every token but a document's first is scored once.
//
// Bits per byte = (summed negative log-likelihood in nats) / ln 2 / (UTF-8 bytes of the scored tokens): the text's
// bytes, less the first token's when there is no end-of-text id to start from (the byte-level tokenizer). It does
// not depend on the tokenizer, so byte-level and BPE models compare on the same text.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "eval/scorer.h"

namespace l3c {

struct TextOptions {
  int64_t seq_len = 0;
  int64_t stride = 0;     // 1..seq_len; 0: seq_len
  int64_t max_bytes = 0;  // per document; 0: all of it
  bool progress = true;
};

struct TextFileResult {
  std::string path, sha256;
  int64_t documents = 0, tokens = 0, bytes = 0, windows = 0;  // tokens, bytes: scored
  double nll = 0.0;                                          // summed, nats
};

struct TextResult {
  std::vector<TextFileResult> files;
  int64_t tokens = 0, bytes = 0, windows = 0, stride = 0, seq_len = 0;
  double nll = 0.0;
  double seconds = 0.0;
  double loss() const;           // nats per token
  double perplexity() const;     // exp(loss)
  double bits_per_byte() const;  // nll / ln 2 / bytes
  nlohmann::ordered_json to_json() const;
};

// The scored windows of one document's tokens (see above).
std::vector<ScoreRequest> text_windows(const std::vector<int32_t>& ids, int64_t seq_len, int64_t stride);

// The documents of `inputs`, tokenized: what evaluate_text and the logit lens score.
struct TextDocument {
  size_t input = 0;            // index into the expanded files
  std::vector<int32_t> ids;    // [eot] + encode(text)
  int64_t scored_bytes = 0;
};
struct TextCorpus {
  std::vector<std::string> paths, sha256;  // the expanded files
  std::vector<TextDocument> documents;
};
// UserError for a missing input, invalid UTF-8 (naming the file and byte offset), or a token id the model does not
// have.
TextCorpus read_text_corpus(const std::vector<std::string>& inputs, const Tokenizer& tokenizer, int64_t vocab_size,
                            int64_t max_bytes);

TextResult evaluate_text(Scorer& scorer, const TextCorpus& corpus, const TextOptions& options);

}  // namespace l3c
