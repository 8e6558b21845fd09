// Token shards in llm.c's format, memory-mapped.
// Header: 256 x int32 = {magic, version, token count, 0...}; then the tokens.
//   magic 20240520, version 1: uint16 tokens (vocabularies up to 65536)
//   magic 20240801, version 7: uint32 tokens (llm.c's Llama-3 format, larger vocabularies)
#pragma once
#include <cstdint>
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

// The shard files a data path names: a file, a folder (its *.bin files) or a glob; sorted by name.
// `what` names the config field in the error when nothing matches.
std::vector<std::string> expand_shard_paths(const std::string& spec, const std::string& what);

}  // namespace l3c
