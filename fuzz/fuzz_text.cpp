// Fuzz target: `l3c prepare`'s readers. The input is read as a text file and as a JSONL file (field "text"),
// document by document, with invalid UTF-8 an error and then replaced.
#include "data/text_source.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace l3c;
  const std::string text = fuzz::write_scratch("doc.txt", fuzz::as_text(data, size));
  const std::string jsonl = fuzz::write_scratch("docs.jsonl", fuzz::as_text(data, size));
  for (const InvalidUtf8 mode : {InvalidUtf8::Error, InvalidUtf8::Replace}) {
    fuzz::expect_accept_or_user_error([&] {
      DocumentReader reader(expand_text_inputs({text, jsonl}), "text", mode);
      Document doc;
      while (reader.next(doc)) {
      }
    });
  }
  return 0;
}
