// Token shards (llm.c format), data paths, windows, and the safetensors files of the run folder.
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>
#include <unistd.h>

#include "core/safetensors.h"
#include "data/dataloader.h"
#include "data/shard.h"
#include "test_util.h"

using namespace l3c;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
using test::fresh_dir;
// A safetensors file written by hand: the 8-byte length, the header text as given, then `data_bytes` bytes.
void write_raw_safetensors(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t length = header.size();
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << header << std::string(data_bytes, '\0');
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
  CHECK(a.read(299, 2) == std::vector<uint32_t>{299, 0});
  CHECK(fs::file_size(dir / "a.bin") == 1024 + 2000);
  TokenShard b((dir / "b.bin").string());
  CHECK(b.read(0, 3) == std::vector<uint32_t>{1, 70000, 5});
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
  SECTION("a token count smaller than the body") {
    patch_int(path, 2, 60);
    CHECK_THROWS_WITH(TokenShard(path), Contains(path) && Contains("header says 60 tokens") &&
                                            Contains("does not match the body"));
  }
  SECTION("a negative token count") {
    patch_int(path, 2, -1);
    CHECK_THROWS_WITH(TokenShard(path), Contains("negative token count"));
  }
  SECTION("a folder or a FIFO instead of a file") {
    CHECK_THROWS_WITH(TokenShard(dir.string()), Contains("not a regular file"));
  }
  SECTION("shorter than the header") {
    fs::resize_file(path, 10);
    CHECK_THROWS_WITH(TokenShard(path), Contains("truncated shard"));
  }
  SECTION("missing") {
    CHECK_THROWS_WITH(TokenShard((dir / "nope.bin").string()), Contains("cannot open shard"));
  }
}

TEST_CASE("a shard truncated or rewritten while it is read is an error naming it, not a crash", "[data]") {
  const fs::path dir = fresh_dir("changed");
  const std::string path = (dir / "s.bin").string();
  write_shard(path, counting(5000, 50));
  const TokenShard shard(path);
  CHECK(shard.read(4990, 10).back() == 4999 % 50);
  SECTION("truncated") {
    fs::resize_file(path, 1024 + 2 * 100);  // a memory map would die of SIGBUS here
    CHECK_THROWS_AS(shard.read(4000, 10), ShardChangedError);
    CHECK_THROWS_WITH(shard.read(4000, 10), Contains(path) && Contains("changed while it was being read"));
    CHECK_THROWS_WITH(shard.read(0, 10), Contains(path) && Contains("changed while it was being read"));
  }
  SECTION("overwritten in place with the same size") {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a later modification time
    patch_int(path, 300, 7);
    CHECK_THROWS_WITH(shard.read(0, 10), Contains(path) && Contains("rewritten in place"));
  }
  SECTION("a loader over it stops with the same error") {
    WindowLoader loader(path, "data.train", 16, 50);
    std::vector<int32_t> x(16), y(16);
    loader.copy_window(3, x.data(), y.data());
    CHECK(x[0] == 48);
    fs::resize_file(path, 1024 + 2 * 100);
    CHECK_THROWS_AS(loader.copy_window(200, x.data(), y.data()), ShardChangedError);
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

TEST_CASE("hostile safetensors headers are refused before any tensor points outside the file", "[data][safetensors]") {
  const fs::path dir = fresh_dir("safetensors_hostile");
  const std::string path = (dir / "h.safetensors").string();
  auto refused = [&](const std::string& header, size_t data_bytes = 64) {
    write_raw_safetensors(path, header, data_bytes);
    try {
      SafetensorsFile file(path);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  // Offsets whose sum with the data start wraps around 2^64 passed the size check before.
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [18446744073709551600, 18446744073709551608]}})"),
             Contains("tensor w") && Contains("overflows"));
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [2.5, 2], "data_offsets": [0, 16]}})"),
             Contains("tensor w") && Contains("dimension 0 must be a non-negative integer, got 2.5"));
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})"),
             Contains("must be a non-negative integer, got -1"));
  // A shape whose byte count wraps to the size of its offsets.
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})"),
             Contains("tensor w: shape") && Contains("overflows"));
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]}})"), Contains("not a multiple of its 4-byte"));
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})"), Contains("end before they begin"));
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}})"),
             Contains("two non-negative integers"));
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 8]}})"), Contains("malformed JSON"));
  CHECK_THAT(refused(R"({"w": [1, 2]})"), Contains("corrupt header entry"));
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": )" +
                     std::string(100000, '[') + std::string(100000, ']') + "}"),
             Contains("nested deeper than"));
  CHECK_THAT(refused(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4), Contains("truncated"));
  {  // a header length far beyond the file
    std::ofstream out(path, std::ios::binary);
    const uint64_t length = ~uint64_t{0} - 4;
    out.write(reinterpret_cast<const char*>(&length), 8);
  }
  CHECK_THROWS_WITH(SafetensorsFile(path), Contains("a header of"));
  CHECK(refused(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})") == "accepted");
}
