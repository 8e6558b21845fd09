// Token shards (llm.c format), data paths, windows, and the safetensors files of the run folder.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "data/dataloader.h"
#include "data/shard.h"
#include "train/safetensors.h"
#include "test_util.h"

using namespace l3c;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("l3c_test_data_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<uint32_t> counting(uint32_t n, uint32_t modulo) {
  std::vector<uint32_t> v(n);
  for (uint32_t i = 0; i < n; ++i) v[i] = i % modulo;
  return v;
}

void patch_int(const fs::path& path, int index, int32_t value) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(index * 4);
  f.write(reinterpret_cast<const char*>(&value), 4);
}
}  // namespace

TEST_CASE("a shard round-trips, uint16 for small ids and uint32 beyond", "[data]") {
  const fs::path dir = fresh_dir("roundtrip");
  write_shard((dir / "a.bin").string(), counting(1000, 300));
  write_shard((dir / "b.bin").string(), {1, 70000, 5});
  TokenShard a((dir / "a.bin").string());
  CHECK(a.size() == 1000);
  CHECK(a[299] == 299);
  CHECK(a[300] == 0);
  CHECK(fs::file_size(dir / "a.bin") == 1024 + 2000);
  TokenShard b((dir / "b.bin").string());
  CHECK(b[1] == 70000);
  CHECK(fs::file_size(dir / "b.bin") == 1024 + 12);
  CHECK(b.max_token() == std::pair<uint32_t, int64_t>{70000, 1});
  CHECK_FALSE(fs::exists(dir / "a.bin.tmp"));
}

TEST_CASE("bad shards are rejected with the file and the reason", "[data]") {
  const fs::path dir = fresh_dir("bad");
  const std::string path = (dir / "s.bin").string();
  write_shard(path, counting(100, 50));
  SECTION("wrong magic") {
    patch_int(path, 0, 12345);
    CHECK_THROWS_WITH(TokenShard(path), Contains(path) && Contains("bad magic 12345"));
  }
  SECTION("wrong version") {
    patch_int(path, 1, 3);
    CHECK_THROWS_WITH(TokenShard(path), Contains("unsupported shard version 3"));
  }
  SECTION("truncated body") {
    fs::resize_file(path, 1024 + 150);
    CHECK_THROWS_WITH(TokenShard(path), Contains("truncated shard") && Contains("100 tokens"));
  }
  SECTION("shorter than the header") {
    fs::resize_file(path, 10);
    CHECK_THROWS_WITH(TokenShard(path), Contains("truncated shard"));
  }
  SECTION("missing") {
    CHECK_THROWS_WITH(TokenShard((dir / "nope.bin").string()), Contains("cannot open shard"));
  }
}

TEST_CASE("data paths are a file, a folder of .bin files or a glob, and nothing matching is an error", "[data]") {
  const fs::path dir = fresh_dir("paths");
  write_shard((dir / "train_01.bin").string(), counting(10, 5));
  write_shard((dir / "train_00.bin").string(), counting(10, 5));
  write_shard((dir / "val_00.bin").string(), counting(10, 5));
  CHECK(expand_shard_paths((dir / "train_00.bin").string(), "data.train").size() == 1);
  CHECK(expand_shard_paths(dir.string(), "data.train").size() == 3);
  const auto globbed = expand_shard_paths((dir / "train_*.bin").string(), "data.train");
  REQUIRE(globbed.size() == 2);
  CHECK(globbed[0] < globbed[1]);
  CHECK_THROWS_WITH(expand_shard_paths((dir / "test_*.bin").string(), "data.val"),
                    Contains("data.val") && Contains("no shard"));
}

TEST_CASE("windows of T+1 tokens give inputs and next-token targets, never crossing shards", "[data]") {
  const fs::path dir = fresh_dir("windows");
  write_shard((dir / "a.bin").string(), counting(10, 1000));                 // 3 windows of T=3
  std::vector<uint32_t> second = counting(8, 1000);
  for (auto& t : second) t += 100;
  write_shard((dir / "b.bin").string(), second);                            // 2 windows
  WindowLoader loader(dir.string(), "data.train", 3, 1000);
  CHECK(loader.num_windows() == 5);
  test::TestTensor x(DType::I32, {3, 3}), y(DType::I32, {3, 3});
  loader.fill(2, x, y);
  CHECK(x.values() == std::vector<double>{6, 7, 8, 100, 101, 102, 103, 104, 105});
  CHECK(y.values() == std::vector<double>{7, 8, 9, 101, 102, 103, 104, 105, 106});
  loader.fill(5, x, y);  // wraps around
  CHECK(x[0] == 0);
}

TEST_CASE("a token id outside the vocabulary is reported with file and position", "[data]") {
  const fs::path dir = fresh_dir("vocab");
  std::vector<uint32_t> tokens = counting(50, 10);
  tokens[37] = 300;
  write_shard((dir / "a.bin").string(), tokens);
  CHECK_THROWS_WITH(WindowLoader(dir.string(), "data.train", 4, 256),
                    Contains("a.bin") && Contains("token id 300 at position 37") && Contains("vocab_size 256"));
  CHECK_THROWS_WITH(WindowLoader(dir.string(), "data.train", 64, 1000), Contains("fewer than one window"));
}

TEST_CASE("safetensors files round-trip and bad files are named precisely", "[data][safetensors]") {
  const fs::path dir = fresh_dir("safetensors");
  const std::string path = (dir / "m.safetensors").string();
  test::TestTensor a(DType::F32, {2, 3}), b(DType::I32, {4});
  test::random_fill(a, 1);
  test::random_tokens(b, 9, 2);
  write_safetensors(path, {{"a", a}, {"b", b}}, {{"note", "hello"}});
  {
    SafetensorsFile f(path);
    CHECK(f.metadata().at("note") == "hello");
    CHECK(f.get("a").shape_string() == "(2, 3)");
    CHECK(test::to_double_vector(f.get("a")) == a.values());
    CHECK(test::to_double_vector(f.get("b")) == b.values());
    CHECK_THROWS_WITH(f.get("c"), Contains("no tensor named c"));
  }
  SECTION("truncated") {
    fs::resize_file(path, fs::file_size(path) - 4);
    CHECK_THROWS_WITH(SafetensorsFile(path), Contains("truncated safetensors file"));
  }
  SECTION("corrupt header") {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(9);
    f.write("\x01\x02", 2);
    f.close();
    CHECK_THROWS_WITH(SafetensorsFile(path), Contains("corrupt safetensors header"));
  }
  SECTION("missing") {
    CHECK_THROWS_WITH(SafetensorsFile((dir / "none.safetensors").string()), Contains("cannot open"));
  }
}
