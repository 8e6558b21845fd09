// Token shards in llm.c's format, memory-mapped.
// Header: 256 x int32 = {magic, version, token count, 0...}; then the tokens.
//   magic 20240520, version 1: uint16 tokens (vocabularies up to 65536)
//   magic 20240801, version 7: uint32 tokens (llm.c's Llama-3 format, larger vocabularies)
#pragma once
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace l3c {

constexpr int32_t kShardMagicU16 = 20240520;
constexpr int32_t kShardVersionU16 = 1;
constexpr int32_t kShardMagicU32 = 20240801;
constexpr int32_t kShardVersionU32 = 7;
constexpr int64_t kShardHeaderInts = 256;

class TokenShard {
 public:
  explicit TokenShard(const std::string& path);  // maps and validates; UserError naming the file
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  TokenShard(TokenShard&& other) noexcept;

  const std::string& path() const { return path_; }
  int64_t size() const { return num_tokens_; }
  uint32_t operator[](int64_t i) const { return wide_ ? tokens32_[i] : tokens16_[i]; }
  // The largest token id and its first position (scanned once, for vocabulary checks).
  std::pair<uint32_t, int64_t> max_token() const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  int64_t num_tokens_ = 0;
  bool wide_ = false;
  const uint16_t* tokens16_ = nullptr;
  const uint32_t* tokens32_ = nullptr;
};

// Writes a shard atomically (a temporary file renamed into place): uint16 when every id fits, else
// the uint32 format.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens);

// Writes one shard incrementally (memory stays small whatever its size) to PATH.tmp; finish() completes
// the header and fsyncs, publish() renames the file to PATH. A writer destroyed before publish() removes
// its temporary file, so no half-written shard is ever left under a shard's name.
class ShardWriter {
 public:
  // wide: uint32 tokens (magic 20240801, version 7), else uint16 (magic 20240520, version 1).
  ShardWriter(std::string path, bool wide);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append(std::span<const uint32_t> tokens);
  int64_t size() const { return num_tokens_; }
  const std::string& path() const { return path_; }
  void finish();
  void publish();

 private:
  void write_or_fail(const void* data, size_t bytes);
  std::string path_, temp_;
  bool wide_;
  FILE* file_ = nullptr;
  int64_t num_tokens_ = 0;
  bool finished_ = false, published_ = false;
  std::vector<uint16_t> narrow_;
};

// The shard files a data path names: a file, a folder (its *.bin files) or a glob; sorted by name.
// `what` names the config field in the error when nothing matches.
std::vector<std::string> expand_shard_paths(const std::string& spec, const std::string& what);

}  // namespace l3c
