// Gradient reduction across the ranks of a data-parallel run (the communicator of src/dist), once per step,
// after the micro-batches' backward passes:
//  - dense parameters: all-reduce (sum) in buckets of dist.bucket_mb over the flat gradient buffer;
//  - row tables (each L3 layer's w_k and w_v, and an untied embedding), with dist.row_sparse: a table's gradient
//    is nonzero only in the rows of tokens present in the global batch, so the ranks first all-reduce which
//    token ids they saw (a (V) presence vector), then all-reduce only those tokens' rows, packed into one
//    buffer; a table whose touched rows are more than half of it is reduced whole;
//  - ZeRO-1 (train.zero 1): one reduce-scatter over the whole buffer (padded to a multiple of the world size),
//    after which this rank holds the summed gradients of its shard only.
// The sums are the same as one process accumulating all micro-batches, up to the order of float additions.
#pragma once
#include <cstdint>
#include <vector>

#include "core/config.h"
#include "dist/communicator.h"
#include "model/llama.h"
#include "optim/adamw.h"

namespace l3c {

// What one step's reduction moved (payload bytes each rank passed to collectives) and how.
struct ReduceReport {
  uint64_t bytes = 0;          // all of it
  uint64_t dense_bytes = 0;    // the whole-buffer part (dense parameters, or the reduce-scatter)
  uint64_t table_bytes = 0;    // row tables: presence vector and packed rows (or whole tables)
  uint64_t table_full_bytes = 0;  // what the row tables would have cost reduced whole
  int64_t rows_reduced = 0, rows_total = 0;  // table rows reduced / in all tables
  double seconds = 0.0;
};

// The ZeRO-1 shard of rank `rank` of `ranks` for a buffer of `numel` elements: contiguous ranges of
// ceil(numel / ranks) elements (the last one shorter or empty; the buffers are padded to ranks * shard).
BufferRange zero_shard(int64_t numel, int rank, int ranks);
int64_t zero_padded_size(int64_t numel, int ranks);

class GradientSync {
 public:
  // zero: train.zero (ignored at world size 1). The model's L3 allocations must be set (they give the rows
  // each token owns); call refresh_tables() when they change.
  GradientSync(Communicator& comm, const Llama& model, const Config& config);

  // The part of the buffer this rank updates: all of it, or its ZeRO-1 shard.
  const BufferRange& shard() const { return shard_; }
  bool sharded() const { return sharded_; }
  // The length the gradient and parameter buffers need (padded for ZeRO-1).

  // Rebuilds the row-table list from the model's current allocations.
  void refresh_tables();
  // Starts a step: no token seen yet.
  void begin_step();
  // Marks the token ids of a micro-batch (host i32) as present on this rank.
  void note_tokens(const Tensor& tokens);
  // Sums `grads` over the ranks: all of it, or (ZeRO-1) the shard only, written to shard_grads (shard().size()).
  ReduceReport reduce(FlatBuffer& grads, Tensor shard_grads);

 private:
  struct RowTable {
    int64_t offset = 0;     // of row 0 in the flat buffer
    int64_t width = 0;      // elements per row
    const std::vector<int32_t>* row_offsets = nullptr;  // (V + 1): token u owns rows [o_u, o_{u+1})
    int64_t rows = 0;
  };
  void reduce_dense(const Tensor& grads, int64_t begin, int64_t end, ReduceReport& report);
  void reduce_tables(const Tensor& grads, ReduceReport& report);

  Communicator& comm_;
  const Llama& model_;
  const Config& config_;
  bool sharded_ = false;
  bool row_sparse_ = false;
  BufferRange shard_;
  int64_t buffer_size_ = 0;
  int64_t bucket_elements_ = 0;
  std::vector<RowTable> tables_;       // in buffer order
  std::vector<float> presence_;        // (V) 1 where a token was seen this step
  std::vector<std::vector<int32_t>> l3_row_offsets_;  // per L3 layer (V + 1)
  std::vector<int32_t> embedding_row_offsets_;        // (V + 1) 0, 1, ..., V
  FlatBuffer packed_;                  // the touched rows, packed, on the gradients' device
};

}  // namespace l3c
