// The byte-level tokenizer: each byte of UTF-8 text is one token (ids 0..255). It needs no training
// and no files, and turns any text into a small-vocabulary corpus for CPU-scale models.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace l3c {

struct ByteTokenizer {
  static constexpr int64_t kVocabSize = 256;
  static std::vector<uint32_t> encode(std::string_view text) {
    return std::vector<uint32_t>(reinterpret_cast<const unsigned char*>(text.data()),
                                 reinterpret_cast<const unsigned char*>(text.data()) + text.size());
  }
  static std::string decode(const std::vector<uint32_t>& ids) {
    std::string text;
    text.reserve(ids.size());
    for (uint32_t id : ids) text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    return text;
  }
};

}  // namespace l3c
