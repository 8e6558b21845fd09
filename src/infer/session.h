// An inference session: sequences in a fixed number of slots, each with its keys and values cached per layer, so
// that a new token costs one position of work instead of recomputing its whole context.
//
//   prefill(slot, tokens)   appends a prompt (or more of one) to the slot's sequence, in chunks of at most 128
//                           positions, and returns the logits after its last token
//   decode(slots, tokens)   one new token for each listed slot, all slots in one batch (sequences of different
//                           lengths: each row attends over its own cache), and the logits after each
//
// A step runs the decoder of MODEL.md on the new positions only: RoPE at the positions past the slot's length,
// keys and values written into the cache, attention of the new queries against the cache (ops.h "inference"),
// the FFN or MoE, and the L3 layers on step tables that hold just the rows of the step's tokens (l3_tables.h).
// The KV cache is (slots, max_context, Hkv, hd) per layer for keys and for values; it and the step's arena are
// sized at construction, after checking they fit, and no step allocates.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "infer/model.h"
#include "kernels/arena.h"
#include "model/params.h"

namespace l3c {

struct SessionLimits {
  int64_t max_batch = 1;    // slots: sequences held at once
  int64_t max_context = 0;  // positions per sequence (0: the model's data.seq_len)
};

// What a session holds in memory, for checks and reports.
struct SessionMemory {
  size_t trunk = 0;         // the trunk's parameters
  size_t tables = 0;        // L3 tables held in memory (device or host memory; a mapped file's pages are not counted)
  size_t kv_cache = 0;      // keys and values of every slot
  size_t activations = 0;   // the step arena (with the step's L3 rows)
  size_t session() const { return kv_cache + activations; }
};

class InferenceSession {
 public:
  // UserError, naming the bytes, when the KV cache and arena do not fit the memory available (checked first).
  InferenceSession(InferenceModel& model, const SessionLimits& limits);

  // What a session of these limits would allocate (KV cache and arena), without allocating.
  static SessionMemory memory(const InferenceModel& model, const SessionLimits& limits);

  int64_t max_batch() const { return max_batch_; }
  int64_t max_context() const { return max_context_; }
  int64_t vocab_size() const { return vocab_; }
  int64_t length(int64_t slot) const { return lengths_.at(static_cast<size_t>(slot)); }
  const SessionMemory& memory() const { return memory_; }

  // Appends tokens (at least one) to the slot's sequence; logits (V) receives the scores after the last one.
  // UserError when the sequence would exceed max_context.
  void prefill(int64_t slot, std::span<const int32_t> tokens, std::span<float> logits);
  // Appends tokens[b] to the sequence of slots[b] for every b (distinct slots, each already prefilled);
  // logits (B, V) receives row b's scores.
  void decode(std::span<const int32_t> slots, std::span<const int32_t> tokens, std::span<float> logits);
  // Empties a slot (its cache rows are overwritten by the next prefill).
  void reset(int64_t slot) { lengths_.at(static_cast<size_t>(slot)) = 0; }

  // Bytes of L3 table rows the steps so far have read, and the positions they computed.
  uint64_t l3_bytes_read() const { return l3_bytes_read_; }
  uint64_t positions_computed() const { return positions_; }

 private:
  // Runs B sequences x T new positions: tokens (B * T), slots and start (B). Logits (B, V) after each row's last.
  void forward(std::span<const int32_t> slots, std::span<const int32_t> start, std::span<const int32_t> tokens,
               int64_t T, std::span<float> logits);

  InferenceModel& model_;
  int64_t max_batch_, max_context_, vocab_, chunk_, max_l3_rows_;
  std::vector<int64_t> lengths_;
  std::vector<FlatBuffer> k_cache_, v_cache_;  // per layer: (slots, max_context, Hkv, hd)
  Arena arena_;
  SessionMemory memory_;
  std::vector<L3Rows> l3_allocations_;         // per L3 layer: rows per token and their table offsets
  uint64_t l3_bytes_read_ = 0, positions_ = 0;
};

}  // namespace l3c
