// Gradient reduction across ranks: dense buckets, row-sparse tables, ZeRO-1's reduce-scatter.
#include "train/grad_sync.h"

#include <algorithm>
#include <chrono>

#include "core/errors.h"
#include "kernels/ops.h"

namespace l3c {

int64_t zero_padded_size(int64_t numel, int ranks) {
  const int64_t shard = (numel + ranks - 1) / ranks;
  return shard * ranks;
}

BufferRange zero_shard(int64_t numel, int rank, int ranks) {
  const int64_t shard = (numel + ranks - 1) / ranks;
  return {std::min(numel, rank * shard), std::min(numel, (rank + 1) * shard)};
}

GradientSync::GradientSync(Communicator& comm, const Llama& model, const Config& config)
    : comm_(comm), model_(model), config_(config) {
  const int64_t total = model.registry().total();
  sharded_ = config.train.zero == 1 && comm.size() > 1;
  row_sparse_ = config.dist.row_sparse && comm.size() > 1 && !sharded_;
  buffer_size_ = sharded_ ? zero_padded_size(total, comm.size()) : total;
  shard_ = sharded_ ? zero_shard(total, comm.rank(), comm.size()) : BufferRange{0, total};
  bucket_elements_ = config.dist.bucket_mb * (int64_t{1} << 20) / 4;
  refresh_tables();
}

void GradientSync::refresh_tables() {
  tables_.clear();
  if (!row_sparse_) return;
  const ParamRegistry& registry = model_.registry();
  const int64_t V = model_.config().vocab_size;
  l3_row_offsets_.assign(model_.l3_layers().size(), {});
  for (size_t j = 0; j < model_.l3_layers().size(); ++j) {
    const std::vector<int32_t>& counts = model_.l3_allocation(static_cast<int64_t>(j));
    std::vector<int32_t>& offsets = l3_row_offsets_[j];
    offsets.assign(static_cast<size_t>(V + 1), 0);
    for (int64_t u = 0; u < V; ++u) offsets[u + 1] = offsets[u] + counts[u];
    const L3Layer& layer = model_.l3_layers()[j];
    for (const char* table : {"w_k", "w_v"}) {
      if (!registry.contains(layer.name(table))) continue;  // w_v is tied to w_k
      const ParamInfo& p = registry.find(layer.name(table));
      tables_.push_back({p.offset, p.shape[1], &offsets, p.shape[0]});
    }
  }
  if (!model_.config().tie_embeddings) {  // tied, the embedding also takes the (dense) classifier's gradient
    const ParamInfo& p = registry.find("model.embed_tokens.weight");
    embedding_row_offsets_.resize(static_cast<size_t>(V + 1));
    for (int64_t u = 0; u <= V; ++u) embedding_row_offsets_[u] = static_cast<int32_t>(u);  // token u owns row u
    tables_.push_back({p.offset, p.shape[1], &embedding_row_offsets_, V});
  }
  std::sort(tables_.begin(), tables_.end(), [](const RowTable& a, const RowTable& b) { return a.offset < b.offset; });
  presence_.assign(static_cast<size_t>(V), 0.0f);
}

void GradientSync::begin_step() { std::fill(presence_.begin(), presence_.end(), 0.0f); }

void GradientSync::note_tokens(const Tensor& tokens) {
  if (presence_.empty()) return;
  const int32_t* ids = tokens.ptr<int32_t>();
  for (int64_t i = 0; i < tokens.numel(); ++i) presence_[static_cast<size_t>(ids[i])] = 1.0f;
}

void GradientSync::reduce_dense(const Tensor& grads, int64_t begin, int64_t end, ReduceReport& report) {
  for (int64_t b = begin; b < end; b += bucket_elements_) {
    const Tensor bucket = grads.rows(b, std::min(end, b + bucket_elements_));
    comm_.all_reduce(bucket, ReduceOp::Sum);
    report.dense_bytes += bucket.bytes();
  }
}

void GradientSync::reduce_tables(const Tensor& grads, ReduceReport& report) {
  // Which tokens any rank saw: the union of the ranks' batches.
  Tensor presence(presence_.data(), DType::F32, {static_cast<int64_t>(presence_.size())});
  all_reduce_host(comm_, presence, ReduceOp::Max);
  report.table_bytes += presence.bytes();
  const int64_t V = static_cast<int64_t>(presence_.size());
  // Runs of consecutive present tokens: their rows are contiguous in every table.
  std::vector<std::pair<int64_t, int64_t>> token_runs;
  for (int64_t u = 0; u < V; ++u) {
    if (presence_[u] == 0.0f) continue;
    if (!token_runs.empty() && token_runs.back().second == u) token_runs.back().second = u + 1;
    else token_runs.emplace_back(u, u + 1);
  }
  // Per table: the row ranges to reduce (all rows when the touched ones are more than half).
  struct Segment {
    int64_t begin, end;  // elements, in the flat buffer
  };
  std::vector<Segment> segments;
  for (const RowTable& t : tables_) {
    int64_t touched = 0;
    for (const auto& [first, last] : token_runs) touched += (*t.row_offsets)[last] - (*t.row_offsets)[first];
    report.rows_total += t.rows;
    report.table_full_bytes += static_cast<uint64_t>(t.rows * t.width) * dtype_size(grads.dtype);
    if (2 * touched > t.rows) {  // in place, as dense parameters are: packing would copy most of the table twice
      const uint64_t dense_before = report.dense_bytes;
      reduce_dense(grads, t.offset, t.offset + t.rows * t.width, report);
      report.table_bytes += report.dense_bytes - dense_before;
      report.dense_bytes = dense_before;
      report.rows_reduced += t.rows;
      continue;
    }
    report.rows_reduced += touched;
    for (const auto& [first, last] : token_runs) {
      const int64_t row_begin = (*t.row_offsets)[first], row_end = (*t.row_offsets)[last];
      if (row_end > row_begin) segments.push_back({t.offset + row_begin * t.width, t.offset + row_end * t.width});
    }
  }
  int64_t packed = 0;
  for (const Segment& s : segments) packed += s.end - s.begin;
  if (packed == 0) return;
  if (packed_.numel() < packed || packed_.dtype() != grads.dtype || packed_.device() != grads.device)
    packed_ = FlatBuffer(std::max(packed, packed_.numel()), grads.dtype, grads.device);
  const Tensor buffer = packed_.all().rows(0, packed);
  int64_t at = 0;
  for (const Segment& s : segments) {
    ops::copy(buffer.rows(at, at + s.end - s.begin), grads.rows(s.begin, s.end));
    at += s.end - s.begin;
  }
  comm_.all_reduce(buffer, ReduceOp::Sum);
  report.table_bytes += buffer.bytes();
  at = 0;
  for (const Segment& s : segments) {
    ops::copy(grads.rows(s.begin, s.end), buffer.rows(at, at + s.end - s.begin));
    at += s.end - s.begin;
  }
}

ReduceReport GradientSync::reduce(FlatBuffer& grads, Tensor shard_grads) {
  ReduceReport report;
  if (comm_.size() == 1) return report;
  const auto start = std::chrono::steady_clock::now();
  const Tensor all = grads.all();
  if (sharded_) {
    L3C_CHECK(grads.numel() == buffer_size_, "GradientSync: a gradient buffer of {} for {}", grads.numel(), buffer_size_);
    const int64_t shard = buffer_size_ / comm_.size();
    L3C_CHECK(shard_grads.numel() == shard_.size(), "GradientSync: {} shard gradients for a shard of {}",
              shard_grads.numel(), shard_.size());
    // The last shard may be shorter than the others: it receives a full chunk into scratch, then keeps its part.
    if (shard_.size() == shard) {
      comm_.reduce_scatter(all, shard_grads, ReduceOp::Sum);
    } else {
      if (packed_.numel() < shard || packed_.dtype() != grads.dtype() || packed_.device() != grads.device())
        packed_ = FlatBuffer(shard, grads.dtype(), grads.device());
      const Tensor chunk = packed_.all().rows(0, shard);
      comm_.reduce_scatter(all, chunk, ReduceOp::Sum);
      if (shard_.size() > 0) ops::copy(shard_grads, chunk.rows(0, shard_.size()));
    }
    report.dense_bytes = all.bytes();
  } else {
    int64_t at = 0;
    if (!tables_.empty()) {
      for (const RowTable& t : tables_) {
        reduce_dense(all, at, t.offset, report);
        at = t.offset + t.rows * t.width;
      }
      reduce_tables(all, report);
    }
    reduce_dense(all, at, model_.registry().total(), report);
  }
  report.bytes = report.dense_bytes + report.table_bytes;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace l3c
