// The training order (src/data/dataloader.h): a bijective shuffle per epoch from (seed, epoch, position),
// exact resumption from a saved position, data-parallel slicing that keeps the global sequence for any
// number of ranks, windows that never cross a shard; and bad shards met by the loader.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/config.h"
#include "data/dataloader.h"
#include "data/shard.h"
#include "test_util.h"

using namespace l3c;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
using test::fresh_dir;

// Three shards of different lengths whose tokens say where they come from: shard k, offset i -> k*1000 + i.
// With T = 4: 249, 100 and 12 windows (361 in all).
fs::path three_shards(const std::string& name) {
  const fs::path dir = fresh_dir(name);
  const int lengths[3] = {997, 401, 50};
  for (int k = 0; k < 3; ++k) {
    std::vector<uint32_t> tokens(static_cast<size_t>(lengths[k]));
    for (int i = 0; i < lengths[k]; ++i) tokens[i] = static_cast<uint32_t>(k * 1000 + i);
    write_shard((dir / ("train_00000" + std::to_string(k) + ".bin")).string(), tokens);
  }
  return dir;
}

constexpr int64_t kT = 4;
constexpr int64_t kVocab = 3000;

// The window a filled row holds, recovered from its first token (shard k*1000 + offset, windows at
// multiples of T).
int64_t window_of(int32_t first_token) {
  const int64_t shard = first_token / 1000, offset = first_token % 1000;
  const int64_t before[3] = {0, 249, 349};
  return before[shard] + offset / kT;
}

// The windows of B rows filled from `order` at `first`.
std::vector<int64_t> windows_at(const WindowLoader& loader, const WindowOrder& order, int64_t first, int64_t B) {
  test::TestTensor x(DType::I32, {B, kT}), y(DType::I32, {B, kT});
  loader.fill(order, first, x, y);
  std::vector<int64_t> windows;
  for (int64_t b = 0; b < B; ++b) windows.push_back(window_of(x.ptr<int32_t>()[b * kT]));
  return windows;
}

// Every window read by an optimizer step of `accum` micro-batches of B sequences on each of `ranks`
// ranks, in global order: micro-batch by micro-batch, rank by rank.
std::vector<int64_t> step_windows(const WindowLoader& loader, const WindowOrder& order, int64_t step, int64_t accum,
                                  int64_t B, int64_t ranks) {
  std::vector<int64_t> windows;
  for (int64_t micro = 0; micro < accum; ++micro)
    for (int64_t rank = 0; rank < ranks; ++rank) {
      const auto part = windows_at(loader, order, first_sequence(step * accum + micro, B, rank, ranks), B);
      windows.insert(windows.end(), part.begin(), part.end());
    }
  return windows;
}

}  // namespace

TEST_CASE("IndexPermutation is a bijection of 0..n-1 for any n, and depends on its key", "[dataloader]") {
  for (uint64_t n : {1, 2, 3, 4, 5, 7, 16, 17, 100, 255, 256, 257, 1000, 4097}) {
    for (uint64_t seed : {0, 1, 12345}) {
      const IndexPermutation p(n, seed, 0);
      std::vector<char> seen(n, 0);
      for (uint64_t i = 0; i < n; ++i) {
        const uint64_t j = p(i);
        REQUIRE(j < n);
        REQUIRE(seen[j] == 0);
        seen[j] = 1;
      }
    }
  }
  const IndexPermutation a(1000, 1, 0), b(1000, 2, 0), c(1000, 1, 1);
  int same_ab = 0, same_ac = 0, fixed = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same_ab += a(i) == b(i);
    same_ac += a(i) == c(i);
    fixed += a(i) == i;
  }
  CHECK(same_ab < 20);  // ~1 expected for independent permutations
  CHECK(same_ac < 20);
  CHECK(fixed < 20);
  // A huge range needs no table: any index is looked up directly.
  const IndexPermutation huge(uint64_t{1} << 40, 9, 0);
  CHECK(huge(uint64_t{1} << 39) < (uint64_t{1} << 40));
}

TEST_CASE("every window appears exactly once per epoch, in a new order each epoch", "[dataloader]") {
  const fs::path dir = three_shards("epochs");
  const WindowLoader loader(dir.string(), "data.train", kT, kVocab);
  REQUIRE(loader.num_windows() == 361);
  const WindowOrder order(loader.num_windows(), 1337, true);
  std::vector<std::vector<int64_t>> epochs;
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> windows;
    // Read in micro-batches of 8 that straddle epoch boundaries, then cut out this epoch's positions.
    for (int64_t p = epoch * 361; p < (epoch + 1) * 361; ++p) windows.push_back(order.window_at(p));
    std::vector<int64_t> sorted = windows;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t w = 0; w < 361; ++w) REQUIRE(sorted[w] == w);
    epochs.push_back(windows);
    CHECK(order.epoch_of(epoch * 361 + 5) == epoch);
  }
  CHECK(epochs[0] != epochs[1]);
  CHECK(epochs[1] != epochs[2]);
  // The loader's rows are those windows: micro-batches of 8 across the first epoch boundary.
  std::vector<int64_t> read;
  for (int64_t first = 0; first < 2 * 361; first += 8) {
    const auto part = windows_at(loader, order, first, 8);
    read.insert(read.end(), part.begin(), part.end());
  }
  read.resize(2 * 361);
  std::vector<int64_t> expected = epochs[0];
  expected.insert(expected.end(), epochs[1].begin(), epochs[1].end());
  CHECK(read == expected);
}

TEST_CASE("the same seed gives the same order, another seed another, and no shuffle is file order", "[dataloader]") {
  const fs::path dir = three_shards("seeds");
  const WindowLoader loader(dir.string(), "data.train", kT, kVocab);
  const WindowOrder a(loader.num_windows(), 42, true), again(loader.num_windows(), 42, true),
      other(loader.num_windows(), 43, true), plain(loader.num_windows(), 42, false);
  CHECK(windows_at(loader, a, 0, 64) == windows_at(loader, again, 0, 64));
  CHECK(windows_at(loader, a, 0, 64) != windows_at(loader, other, 0, 64));
  std::vector<int64_t> file_order(64);
  for (int64_t i = 0; i < 64; ++i) file_order[i] = (355 + i) % 361;
  CHECK(windows_at(loader, plain, 355, 64) == file_order);
}

TEST_CASE("windows never cross a shard boundary and targets are the next tokens", "[dataloader]") {
  const fs::path dir = three_shards("boundaries");
  const WindowLoader loader(dir.string(), "data.train", kT, kVocab);
  const WindowOrder order(loader.num_windows(), 7, true);
  test::TestTensor x(DType::I32, {361, kT}), y(DType::I32, {361, kT});
  loader.fill(order, 0, x, y);
  for (int64_t b = 0; b < 361; ++b) {
    const int32_t* row = x.ptr<int32_t>() + b * kT;
    const int32_t* next = y.ptr<int32_t>() + b * kT;
    for (int64_t t = 0; t < kT; ++t) {
      REQUIRE(next[t] == row[t] + 1);             // consecutive tokens of one shard
      REQUIRE(next[t] / 1000 == row[0] / 1000);   // the same shard
    }
  }
}

TEST_CASE("resuming from a saved position yields exactly the batches that come next", "[dataloader]") {
  const fs::path dir = three_shards("resume");
  const int64_t B = 5, accum = 3;
  std::vector<std::vector<int64_t>> straight;
  {
    const WindowLoader loader(dir.string(), "data.train", kT, kVocab);
    const WindowOrder order(loader.num_windows(), 99, true);
    for (int64_t step = 0; step < 60; ++step) straight.push_back(step_windows(loader, order, step, accum, B, 1));
  }
  // Stop after step 37 (past the first epoch: 60 * 15 = 900 windows is 2.5 epochs), save the position,
  // reopen everything and continue.
  const int64_t saved_step = 37;
  const int64_t saved_position = first_sequence(saved_step * accum, B);
  const WindowLoader reopened(dir.string(), "data.train", kT, kVocab);
  const WindowOrder order(reopened.num_windows(), 99, true);
  for (int64_t step = saved_step; step < 60; ++step) {
    const auto windows = step_windows(reopened, order, step, accum, B, 1);
    REQUIRE(windows == straight[step]);
    REQUIRE(windows_at(reopened, order, saved_position + (step - saved_step) * accum * B, accum * B) == windows);
  }
}

TEST_CASE("with 1, 2 and 3 ranks the ranks' batches together are the single-rank global batches", "[dataloader]") {
  const fs::path dir = three_shards("ranks");
  const WindowLoader loader(dir.string(), "data.train", kT, kVocab);
  const WindowOrder order(loader.num_windows(), 5, true);
  const int64_t B = 4;
  for (int64_t ranks : {1, 2, 3}) {
    INFO("ranks " << ranks);
    std::set<std::pair<int64_t, int64_t>> taken;  // (global micro-batch, sequence) pairs already read
    for (int64_t g = 0; g < 40; ++g) {
      std::vector<int64_t> together;
      for (int64_t rank = 0; rank < ranks; ++rank) {
        const int64_t first = first_sequence(g, B, rank, ranks);
        const auto part = windows_at(loader, order, first, B);
        together.insert(together.end(), part.begin(), part.end());
        for (int64_t b = 0; b < B; ++b) REQUIRE(taken.insert({g, first + b}).second);  // no overlap between ranks
      }
      // The single-rank global micro-batch g of B * ranks sequences.
      REQUIRE(together == windows_at(loader, order, first_sequence(g, B * ranks), B * ranks));
    }
  }
  // At a fixed global batch of 12 sequences per step, every layout reads the same windows in every step,
  // so a run can stop on 2 ranks and resume on 3 (or 1).
  struct Layout {
    int64_t ranks, accum, micro_batch;
  };
  const Layout layouts[] = {{1, 3, 4}, {1, 1, 12}, {2, 3, 2}, {2, 1, 6}, {3, 2, 2}, {3, 1, 4}};
  for (int64_t step = 0; step < 45; ++step) {  // 45 * 12 = 540 windows: into the second epoch
    const auto reference = windows_at(loader, order, step * 12, 12);
    for (const Layout& l : layouts) {
      INFO("step " << step << ", ranks " << l.ranks << ", accumulation " << l.accum);
      REQUIRE(step_windows(loader, order, step, l.accum, l.micro_batch, l.ranks) == reference);
    }
  }
}

TEST_CASE("the loader names the bad shard and the position of a bad token", "[dataloader]") {
  const fs::path dir = three_shards("bad");
  const std::string bad = (dir / "train_000001.bin").string();
  auto patch = [&](int index, int32_t value) {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(index * 4);
    f.write(reinterpret_cast<const char*>(&value), 4);
  };
  SECTION("bad magic") {
    patch(0, 1234);
    CHECK_THROWS_WITH(WindowLoader(dir.string(), "data.train", kT, kVocab),
                      Contains(bad) && Contains("bad magic 1234"));
  }
  SECTION("wrong version") {
    patch(1, 2);
    CHECK_THROWS_WITH(WindowLoader(dir.string(), "data.train", kT, kVocab),
                      Contains(bad) && Contains("unsupported shard version 2"));
  }
  SECTION("truncated body") {
    fs::resize_file(bad, 1024 + 2 * 400);
    CHECK_THROWS_WITH(WindowLoader(dir.string(), "data.train", kT, kVocab),
                      Contains(bad) && Contains("truncated shard") && Contains("401 tokens"));
  }
  SECTION("token id >= the vocabulary") {
    CHECK_THROWS_WITH(WindowLoader(dir.string(), "data.train", kT, 1300),
                      Contains(bad) && Contains("token id 1400 at position 400") && Contains("model.vocab_size 1300"));
  }
}

TEST_CASE("data.shuffle and data.tokenizer are config keys with defaults true and bytes", "[dataloader][config]") {
  nlohmann::json j = {{"model", {{"vocab_size", 8}, {"d_model", 8}, {"n_layers", 1}, {"n_heads", 2}, {"ffn_hidden", 8}}},
                      {"data", {{"train", "x.bin"}, {"seq_len", 4}}},
                      {"train", {{"steps", 1}}}};
  const Config defaults = config_from_json(j);
  CHECK(defaults.data.shuffle);
  CHECK(defaults.data.tokenizer == "bytes");
  j["data"]["shuffle"] = false;
  j["data"]["tokenizer"] = "tok/dir";
  const Config set = config_from_json(j);
  CHECK_FALSE(set.data.shuffle);
  CHECK(set.data.tokenizer == "tok/dir");
  j["data"]["shuffle"] = "yes";
  CHECK_THROWS_WITH(config_from_json(j), Contains("data.shuffle: expected true or false"));
}
