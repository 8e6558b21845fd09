// Windows of seq_len + 1 tokens over a set of token shards, and the order training reads them in.
//
// Window w yields inputs x[0..T) and targets x[1..T+1). A shard of n tokens holds (n - 1) / T windows
// starting at 0, T, 2T, ... (consecutive windows share one token: the last target of one is the first
// input of the next), so windows never cross a shard boundary. Every token id is checked against the
// model's vocabulary when the shards are opened, and again as each window is read (a shard
// changed under the trainer is a ShardChangedError naming it).
//
// The training order (WindowOrder) maps a global sequence position p = 0, 1, 2, ... to a window: epoch
// e = p / W and i = p % W (W windows) give window perm_e(i), where perm_e is a bijection of [0, W)
// keyed by (seed, e): a Feistel network over the smallest power of four >= W, cycle-walked back into
// [0, W). It is computed per lookup (no table, no state), so every window appears exactly once per
// epoch, each epoch has its own order, and any position can be read directly: resuming at position p
// yields exactly what would have come next. Without shuffling, perm_e is the identity (file order).
//
// Data parallelism slices the global order (first_sequence): the g-th micro-batch of B sequences on
// each of R ranks reads positions [g*B*R + r*B, g*B*R + r*B + B) on rank r. The R micro-batches of
// global micro-batch g are together positions [g*B*R, (g+1)*B*R): the same sequence in the same order
// for any R. An optimizer step of A accumulation micro-batches reads positions [s*A*B*R, (s+1)*A*B*R),
// so resuming with a different number of ranks at the same global batch (A*B*R) reads the same
// sequences in every step. Validation reads windows in file order from the start (WindowLoader::fill).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/shard.h"

namespace l3c {

// A bijection of [0, n) keyed by (seed, stream), evaluated per index in O(1) memory: a 6-round
// balanced Feistel network on the smallest even number of bits covering n, with Philox as the round
// function, cycle-walked into [0, n) (fewer than 4 rounds of walking on average).
class IndexPermutation {
 public:
  IndexPermutation(uint64_t n, uint64_t seed, uint64_t stream);
  uint64_t operator()(uint64_t index) const;
  uint64_t size() const { return n_; }

 private:
  uint64_t feistel(uint64_t x) const;
  uint64_t n_;
  uint64_t seed_, stream_;
  int half_bits_ = 1;
  uint64_t half_mask_ = 1;
};

// Global sequence position -> window: a pure function of (seed, epoch, position in the epoch).
class WindowOrder {
 public:
  WindowOrder(int64_t num_windows, uint64_t seed, bool shuffle);
  int64_t window_at(int64_t position) const;
  int64_t epoch_of(int64_t position) const { return position / num_windows_; }
  int64_t num_windows() const { return num_windows_; }
  bool shuffled() const { return shuffle_; }

 private:
  int64_t num_windows_;
  uint64_t seed_;
  bool shuffle_;
};

// The global sequence position where rank `rank` of `ranks` starts its part of global micro-batch
// `global_micro_batch` (micro_batch sequences per rank): (global_micro_batch * ranks + rank) * micro_batch.
inline int64_t first_sequence(int64_t global_micro_batch, int64_t micro_batch, int64_t rank = 0, int64_t ranks = 1) {
  return (global_micro_batch * ranks + rank) * micro_batch;
}

class WindowLoader {
 public:
  // spec: a file, folder or glob of shards; what: the config field it came from, for messages.
  WindowLoader(const std::string& spec, const std::string& what, int64_t seq_len, int64_t vocab_size);

  int64_t num_windows() const { return total_windows_; }
  int64_t num_tokens() const { return total_tokens_; }
  size_t num_shards() const { return shards_.size(); }
  int64_t seq_len() const { return seq_len_; }
  const std::vector<std::string>& paths() const { return paths_; }

  // Fills tokens and targets (B, T) i32 with windows first, first+1, ... (modulo num_windows()), in file
  // order: for validation.
  void fill(int64_t first_window, Tensor tokens, Tensor targets) const;
  // Fills tokens and targets (B, T) with the windows at positions first_position, ..., first_position + B - 1
  // of `order`: for training.
  void fill(const WindowOrder& order, int64_t first_position, Tensor tokens, Tensor targets) const;
  // Copies window w: T inputs to x and T targets to y.
  void copy_window(int64_t window, int32_t* x, int32_t* y) const;

 private:
  std::vector<TokenShard> shards_;
  std::vector<std::string> paths_;
  std::vector<int64_t> first_window_of_shard_;  // prefix sums, one entry per shard plus the total
  int64_t seq_len_ = 0;
  int64_t vocab_size_ = 0;
  int64_t total_windows_ = 0;
  int64_t total_tokens_ = 0;
};

}  // namespace l3c
