// Fuzz target: allocation files (`l3c allocate`'s safetensors). The first three bytes choose the model sizes the
// file is checked against (vocabulary 1-256, k 1-16, v in [V, V k]); the rest is the file.
#include "data/allocation.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace l3c;
  if (size < 3) return 0;
  const int64_t vocab = 1 + data[0], k = 1 + data[1] % 16;
  const int64_t v = vocab + (vocab * (k - 1)) * data[2] / 255;
  const std::string path = fuzz::write_scratch("alloc.safetensors", fuzz::as_text(data + 3, size - 3));
  fuzz::expect_accept_or_user_error([&] { read_allocation_file(path, vocab, v, k); });
  return 0;
}
