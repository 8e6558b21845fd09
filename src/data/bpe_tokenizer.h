// GPT-2-style byte-level BPE: the tokenizer (encode/decode from encoder.json + vocab.bpe) and the pieces the
// trainer (src/data/bpe_trainer.h) shares with it: GPT-2's byte <-> unicode alphabet and the pre-tokeniser.
//
// Encoding = pre-tokenisation (GPT-2's pattern, implemented by hand, see next_pretoken) + byte-pair merges
// inside each pre-token, lowest merge rank first (leftmost among equal ranks), exactly as GPT-2's encoder.py
// and Hugging Face tokenizers do. Text is bytes: invalid UTF-8 bytes are single "other" characters, so any
// byte string encodes and decodes back to itself. docs/tokenizer.md has the details and measured speed.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace l3c {

// ---- GPT-2's byte alphabet ---------------------------------------------------------------------------------
// encoder.json and vocab.bpe spell a token's bytes as printable characters: byte b is the code point
// bytes_to_unicode(b) (the printable Latin-1 bytes stand for themselves, the others for 256 + n).
// The UTF-8 spelling of a token's bytes in GPT-2's alphabet ("Ġthe" for " the").
std::string gpt2_spell(std::string_view bytes);
// GPT-2's order of the 256 byte tokens: the byte whose id is i (ids 0..255 in GPT-2's encoder.json).
const std::array<uint8_t, 256>& gpt2_byte_order();

// ---- pre-tokenisation --------------------------------------------------------------------------------------
// GPT-2's pattern  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (leftmost alternative first, as a backtracking regex engine matches it), with the Unicode 16 classes of
// src/data/unicode_tables.h. Returns the length in bytes of the pre-token starting at text[0]
// (text non-empty; the result is >= 1).
size_t next_pretoken(std::string_view text);

// Calls fn(std::string_view piece) for each pre-token of text, in order.
template <typename Fn>
void for_each_pretoken(std::string_view text, Fn&& fn) {
  while (!text.empty()) {
    const size_t n = next_pretoken(text);
    fn(text.substr(0, n));
    text.remove_prefix(n);
  }
}

// Positions where text can be cut so that pre-tokenising the parts gives the same pre-tokens as the whole:
// just before a line break ("\n" or "\r\n") that follows an ASCII character which is not white space. (The
// token before the cut is a run of letters, numbers or others that ends there either way, and the white space
// starts a match in both; a cut *after* a line break is not safe: "\s+(?!\S)" matches differently at the end
// of a part than before a non-space.) Returns the first such cut at or after `from` (text.size() if none).
size_t next_safe_cut(std::string_view text, size_t from);

// ---- the tokenizer ------------------------------------------------------------------------------------------
class BpeTokenizer final : public Tokenizer {
 public:
  // Loads DIR/encoder.json and DIR/vocab.bpe. UserError naming the file (and line, or line:column) on bad input.
  static std::unique_ptr<BpeTokenizer> load(const std::string& dir);
  ~BpeTokenizer() override;

  std::vector<uint32_t> encode(std::string_view text) const override;
  // The same ids as encode(text), computed by `threads` threads on parts cut at safe positions.
  std::vector<uint32_t> encode_parallel(std::string_view text, int threads) const;
  std::string decode(std::span<const uint32_t> ids) const override;
  int64_t vocab_size() const override;
  std::optional<uint32_t> eot_id() const override;
  std::string description() const override;
  // sha256 (hex) of encoder.json's bytes followed by vocab.bpe's bytes.
  std::string checksum() const override;

  int64_t merge_count() const;
  // The bytes of one id (UserError when the id is not in the vocabulary).
  std::string_view token_bytes(uint32_t id) const;

  struct Impl;

 private:
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace l3c
