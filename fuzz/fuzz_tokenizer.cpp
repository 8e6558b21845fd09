// Fuzz target: tokenizer folders. The input is encoder.json, a line "--merges--", then vocab.bpe; a tokenizer that
// loads must encode and decode a sample text back to itself.
#include "data/tokenizer.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace l3c;
  const std::string_view input = fuzz::as_text(data, size);
  const size_t split = input.find("\n--merges--\n");
  fuzz::write_scratch("encoder.json", input.substr(0, split));
  fuzz::write_scratch("vocab.bpe", split == std::string_view::npos ? std::string_view() : input.substr(split + 12));
  fuzz::expect_accept_or_user_error([&] {
    const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(fuzz::scratch_dir().string());
    const std::string sample = "Hello world, 123 tokens!\n\xC3\xA9t\xC3\xA9";
    if (tokenizer->decode(tokenizer->encode(sample)) != sample)
      throw InternalError("decode(encode(x)) != x for a tokenizer that loaded");
  });
  return 0;
}
