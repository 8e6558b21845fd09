// Fuzz target: the safetensors reader. Every tensor it accepts is read element by element, so that a tensor
// pointing outside the file shows as an AddressSanitizer report.
#include "fuzz_util.h"
#include "core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace l3c;
  const std::string path = fuzz::write_scratch("file.safetensors", fuzz::as_text(data, size));
  fuzz::expect_accept_or_user_error([&] {
    const SafetensorsFile file(path);
    volatile unsigned char sink = 0;
    for (const auto& [name, tensor] : file.tensors()) {
      const auto* bytes = static_cast<const unsigned char*>(tensor.data);
      for (size_t i = 0; i < tensor.bytes(); ++i) sink = sink ^ bytes[i];
    }
  });
  return 0;
}
