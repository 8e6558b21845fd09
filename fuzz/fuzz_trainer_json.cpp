// Fuzz target: trainer.json of a checkpoint. The input is written as trainer.json into a folder that also holds a
// small model.safetensors and optimizer.safetensors and verified; then, whatever the checksums say (a crafted file
// can make them match), its progress and config are read as --resume reads them.
#include "core/json_input.h"
#include "runtime/checkpoint.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace l3c;
  static const bool files_written = [] {
    fuzz::write_scratch("model.safetensors", std::string(64, 'm'));
    fuzz::write_scratch("optimizer.safetensors", std::string(64, 'o'));
    return true;
  }();
  (void)files_written;
  fuzz::write_scratch("trainer.json", fuzz::as_text(data, size));
  verify_checkpoint(fuzz::scratch_dir().string());  // reports problems as its result, never by throwing
  fuzz::expect_accept_or_user_error([&] {
    const nlohmann::json trainer = parse_json(fuzz::as_text(data, size), "trainer.json");
    checkpoint_progress(trainer);
    checkpoint_config(trainer, "fuzz");
  });
  return 0;
}
