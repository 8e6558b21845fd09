// Token shards in llm.c's format, read with pread (no memory map: a file truncated or rewritten under a running
// trainer is an error naming it, never a SIGBUS).
// Header: 256 x int32 = {magic, version, token count, 0...}; then exactly that many tokens.
//   magic 20240520, version 1: uint16 tokens (vocabularies up to 65536)
//   magic 20240801, version 7: uint32 tokens (llm.c's Llama-3 format, larger vocabularies)
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/errors.h"

namespace l3c {

constexpr int32_t kShardMagicU16 = 20240520;
constexpr int32_t kShardVersionU16 = 1;
constexpr int32_t kShardMagicU32 = 20240801;
constexpr int32_t kShardVersionU32 = 7;
constexpr int64_t kShardHeaderInts = 256;

// A shard changed under a reader (shorter, longer, or rewritten since it was opened). The trainer catches it to
// write a checkpoint before it stops.
struct ShardChangedError : UserError {
  using UserError::UserError;
};

class TokenShard {
 public:
  // Opens the file and checks the header against its size; UserError naming the file. The file stays open.
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  TokenShard(TokenShard&& other) noexcept;

  const std::string& path() const { return path_; }
  int64_t size() const { return num_tokens_; }
  // Tokens [first, first + count) into out (count entries). ShardChangedError naming the file when it no longer has
  // the size or modification time it had when opened. Safe to call from several threads.
  void read(int64_t first, int64_t count, uint32_t* out) const;
  std::vector<uint32_t> read(int64_t first, int64_t count) const;
  // The largest token id and its first position (scanned once, for vocabulary checks).
  std::pair<uint32_t, int64_t> max_token() const;
  // Calls visit(first, tokens) over the whole shard in order, a chunk of at most `chunk` tokens at a time.
  void for_each_chunk(int64_t chunk, const std::function<void(int64_t, std::span<const uint32_t>)>& visit) const;

 private:
  void check_header();
  void check_unchanged() const;
  std::string path_;
  int fd_ = -1;
  int64_t file_bytes_ = 0;
  int64_t modified_ns_ = 0;  // st_mtim when opened
  int64_t num_tokens_ = 0;
  bool wide_ = false;
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
