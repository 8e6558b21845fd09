// Window loading over memory-mapped shards.
#include "data/dataloader.h"

#include <algorithm>

#include "core/errors.h"

namespace l3c {

WindowLoader::WindowLoader(const std::string& spec, const std::string& what, int64_t seq_len, int64_t vocab_size)
    : seq_len_(seq_len) {
  first_window_of_shard_.push_back(0);
  for (const std::string& path : expand_shard_paths(spec, what)) {
    TokenShard shard(path);
    const auto [max_id, position] = shard.max_token();
    if (shard.size() > 0 && static_cast<int64_t>(max_id) >= vocab_size)
      fail("{}: token id {} at position {} is out of range for model.vocab_size {}", path, max_id, position,
           vocab_size);
    const int64_t windows = shard.size() > 0 ? (shard.size() - 1) / seq_len : 0;
    total_windows_ += windows;
    total_tokens_ += shard.size();
    first_window_of_shard_.push_back(total_windows_);
    shards_.push_back(std::move(shard));
  }
  if (total_windows_ == 0)
    fail("{}: the shards hold {} tokens, fewer than one window of data.seq_len + 1 = {}", what, total_tokens_,
         seq_len + 1);
}

void WindowLoader::fill(int64_t first_window, Tensor tokens, Tensor targets) const {
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  L3C_CHECK(T == seq_len_ && targets.dim(0) == B && targets.dim(1) == T, "batch {} for seq_len {}",
            tokens.shape_string(), seq_len_);
  int32_t* x = tokens.ptr<int32_t>();
  int32_t* y = targets.ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t window = (first_window + b) % total_windows_;
    const auto it = std::upper_bound(first_window_of_shard_.begin(), first_window_of_shard_.end(), window);
    const size_t shard_index = static_cast<size_t>(it - first_window_of_shard_.begin()) - 1;
    const TokenShard& shard = shards_[shard_index];
    const int64_t start = (window - first_window_of_shard_[shard_index]) * T;
    for (int64_t t = 0; t < T; ++t) {
      x[b * T + t] = static_cast<int32_t>(shard[start + t]);
      y[b * T + t] = static_cast<int32_t>(shard[start + t + 1]);
    }
  }
}

}  // namespace l3c
