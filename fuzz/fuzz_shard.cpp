// Fuzz target: the token shard reader and the window loader over it (seq_len 8, a vocabulary of 300 ids, so that
// both shard formats and out-of-range ids are reachable).
#include "data/dataloader.h"
#include "data/shard.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace l3c;
  const std::string path = fuzz::write_scratch("shard.bin", fuzz::as_text(data, size));
  fuzz::expect_accept_or_user_error([&] {
    const TokenShard shard(path);
    shard.max_token();
    WindowLoader loader(path, "data.train", 8, 300);
    std::vector<int32_t> x(8), y(8);
    for (int64_t w = 0; w < loader.num_windows(); ++w) loader.copy_window(w, x.data(), y.data());
  });
  return 0;
}
