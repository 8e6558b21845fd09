// The byte-level tokenizer and tokenizer loading.
#include "data/tokenizer.h"

#include <filesystem>

#include "core/errors.h"
#include "data/bpe_tokenizer.h"

namespace l3c {

std::vector<uint32_t> ByteTokenizer::encode(std::string_view text) const {
  return std::vector<uint32_t>(reinterpret_cast<const unsigned char*>(text.data()),
                               reinterpret_cast<const unsigned char*>(text.data()) + text.size());
}

std::string ByteTokenizer::decode(std::span<const uint32_t> ids) const {
  std::string text;
  text.reserve(ids.size());
  for (uint32_t id : ids) text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  return text;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  std::error_code ec;
  if (std::filesystem::is_directory(spec, ec)) return BpeTokenizer::load(spec);
  fail("tokenizer '{}': neither 'bytes' nor a folder holding encoder.json and vocab.bpe", spec);
}

}  // namespace l3c
