// Window loading over token shards, and the shuffled training order.
#include "data/dataloader.h"

#include <algorithm>

#include "core/errors.h"
#include "core/rng.h"

namespace l3c {

IndexPermutation::IndexPermutation(uint64_t n, uint64_t seed, uint64_t stream) : n_(n), seed_(seed), stream_(stream) {
  L3C_CHECK(n > 0, "a permutation of an empty range");
  int bits = 2;
  while (bits < 64 && (uint64_t{1} << bits) < n) bits += 2;
  half_bits_ = bits / 2;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
}

uint64_t IndexPermutation::feistel(uint64_t x) const {
  constexpr int kRounds = 6;
  const Philox rounds(seed_, RngPurpose::Data, stream_);
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t mixed = left ^ (uint64_t{rounds.block((uint64_t(round) << 32) | right)[0]} & half_mask_);
    left = right;
    right = mixed;
  }
  return (left << half_bits_) | right;
}

uint64_t IndexPermutation::operator()(uint64_t index) const {
  L3C_CHECK(index < n_, "index {} outside a permutation of {}", index, n_);
  // Cycle walking: the Feistel network permutes [0, 4^half_bits); following it from an index below n
  // until it lands below n again permutes [0, n).
  uint64_t x = index;
  do {
    x = feistel(x);
  } while (x >= n_);
  return x;
}

WindowOrder::WindowOrder(int64_t num_windows, uint64_t seed, bool shuffle)
    : num_windows_(num_windows), seed_(seed), shuffle_(shuffle) {
  L3C_CHECK(num_windows > 0, "a window order over {} windows", num_windows);
}

int64_t WindowOrder::window_at(int64_t position) const {
  L3C_CHECK(position >= 0, "negative position {}", position);
  const int64_t epoch = position / num_windows_, index = position % num_windows_;
  if (!shuffle_) return index;
  const IndexPermutation permutation(static_cast<uint64_t>(num_windows_), seed_, static_cast<uint64_t>(epoch));
  return static_cast<int64_t>(permutation(static_cast<uint64_t>(index)));
}

WindowLoader::WindowLoader(const std::string& spec, const std::string& what, int64_t seq_len, int64_t vocab_size)
    : seq_len_(seq_len), vocab_size_(vocab_size) {
  first_window_of_shard_.push_back(0);
  for (const std::string& path : expand_shard_paths(spec, what)) {
    TokenShard shard(path);
    paths_.push_back(path);
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

void WindowLoader::copy_window(int64_t window, int32_t* x, int32_t* y) const {
  L3C_CHECK(window >= 0 && window < total_windows_, "window {} of {}", window, total_windows_);
  const auto it = std::upper_bound(first_window_of_shard_.begin(), first_window_of_shard_.end(), window);
  const size_t shard_index = static_cast<size_t>(it - first_window_of_shard_.begin()) - 1;
  const TokenShard& shard = shards_[shard_index];
  const int64_t T = seq_len_;
  const int64_t start = (window - first_window_of_shard_[shard_index]) * T;
  // The window's T + 1 tokens land in x and y's first slot: x holds T, y[0] the last one.
  thread_local std::vector<uint32_t> window_tokens;
  window_tokens.resize(static_cast<size_t>(T + 1));
  shard.read(start, T + 1, window_tokens.data());
  for (int64_t t = 0; t <= T; ++t)
    if (window_tokens[t] >= static_cast<uint64_t>(vocab_size_))  // checked when opened: the file was rewritten
      throw ShardChangedError(fmt::format("{}: token id {} at position {} is out of range for model.vocab_size {} (the "
                                          "shard changed after it was opened)", shard.path(), window_tokens[t],
                                          start + t, vocab_size_));
  for (int64_t t = 0; t < T; ++t) {
    x[t] = static_cast<int32_t>(window_tokens[t]);
    y[t] = static_cast<int32_t>(window_tokens[t + 1]);
  }
}

void WindowLoader::fill(int64_t first_window, Tensor tokens, Tensor targets) const {
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  L3C_CHECK(T == seq_len_ && targets.dim(0) == B && targets.dim(1) == T, "batch {} for seq_len {}",
            tokens.shape_string(), seq_len_);
  for (int64_t b = 0; b < B; ++b)
    copy_window((first_window + b) % total_windows_, tokens.ptr<int32_t>() + b * T, targets.ptr<int32_t>() + b * T);
}

void WindowLoader::fill(const WindowOrder& order, int64_t first_position, Tensor tokens, Tensor targets) const {
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  L3C_CHECK(T == seq_len_ && targets.dim(0) == B && targets.dim(1) == T, "batch {} for seq_len {}",
            tokens.shape_string(), seq_len_);
  L3C_CHECK(order.num_windows() == total_windows_, "an order over {} windows for a loader of {}", order.num_windows(),
            total_windows_);
  for (int64_t b = 0; b < B; ++b)
    copy_window(order.window_at(first_position + b), tokens.ptr<int32_t>() + b * T, targets.ptr<int32_t>() + b * T);
}

}  // namespace l3c
