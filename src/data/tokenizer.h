// The tokenizer interface: text <-> token ids. Implementations: the byte-level tokenizer (ids are
// bytes, vocabulary 256, no files) and GPT-2-style byte-level BPE loaded from a folder holding
// encoder.json + vocab.bpe (src/data/bpe_tokenizer.h).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace l3c {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of ordinary text (special tokens in the text are encoded as text, never as their ids).
  virtual std::vector<uint32_t> encode(std::string_view text) const = 0;
  // Bytes of the ids, concatenated (may be invalid UTF-8 when ids split a character).
  virtual std::string decode(std::span<const uint32_t> ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  // The end-of-text id that separates documents, when the vocabulary has one.
  virtual std::optional<uint32_t> eot_id() const = 0;
  // What to write in manifests: "bytes" or the folder it was loaded from.
  virtual std::string description() const = 0;
  // A checksum identifying the vocabulary (sha256 of its files; "bytes" for the byte tokenizer).
  virtual std::string checksum() const = 0;
};

// The byte-level tokenizer: each byte is one token (ids 0..255), no end-of-text id.
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int64_t kVocabSize = 256;
  std::vector<uint32_t> encode(std::string_view text) const override;
  std::string decode(std::span<const uint32_t> ids) const override;
  int64_t vocab_size() const override { return kVocabSize; }
  std::optional<uint32_t> eot_id() const override { return std::nullopt; }
  std::string description() const override { return "bytes"; }
  std::string checksum() const override { return "bytes"; }
};

// "bytes" gives the byte-level tokenizer; a folder gives the BPE tokenizer stored in it.
// UserError naming the path when it is neither.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

}  // namespace l3c
