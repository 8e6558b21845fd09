// Windows of seq_len + 1 tokens over a set of shards: window w yields inputs x[0..T) and targets
// x[1..T+1). Windows never cross a shard boundary. Every token id is checked against the model's
// vocabulary once, when the shards are opened.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/shard.h"

namespace l3c {

class WindowLoader {
 public:
  // spec: a file, folder or glob of shards; what: the config field it came from, for messages.
  WindowLoader(const std::string& spec, const std::string& what, int64_t seq_len, int64_t vocab_size);

  int64_t num_windows() const { return total_windows_; }
  int64_t num_tokens() const { return total_tokens_; }
  size_t num_shards() const { return shards_.size(); }
  int64_t seq_len() const { return seq_len_; }

  // Fills tokens and targets (B, T) i32 with windows first, first+1, ... (modulo num_windows()).
  void fill(int64_t first_window, Tensor tokens, Tensor targets) const;

 private:
  std::vector<TokenShard> shards_;
  std::vector<int64_t> first_window_of_shard_;  // prefix sums, one entry per shard plus the total
  int64_t seq_len_ = 0;
  int64_t total_windows_ = 0;
  int64_t total_tokens_ = 0;
};

}  // namespace l3c
