// Batched scoring and the logit lens (see scorer.h).
#include "eval/scorer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "core/errors.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "runtime/memory.h"

namespace l3c {

EvalModel::EvalModel(const std::string& dir_, DeviceChoice device_choice, int64_t requested_batch_tokens)
    : dir(dir_), loaded(load_model_dir(dir_)),
      batch_tokens(std::max(requested_batch_tokens, loaded.config.data.seq_len + 1)) {
  // Evaluation computes in the saved weights' precision (f32, or f64 on the CPU), on the device asked for, whatever
  // device the run trained on.
  device = resolve_run_device(device_choice, Precision::Fp32, loaded.config.train.dtype);
  if (device.device == Device::CUDA) {
    loaded.model->set_device(Device::CUDA);
    device_params = FlatBuffer(loaded.params.numel(), loaded.params.dtype(), Device::CUDA);
    ops::copy(device_params.all(), loaded.params.all());
    Config sized = loaded.config;
    const int64_t T = sized.data.seq_len;
    sized.train.micro_batch = std::max<int64_t>(1, (batch_tokens + T - 1) / T);
    cuda_reserve_workspace(cuda_workspace_bytes(workspace_shape(sized, loaded.params.dtype())));
  }
}

std::string LensPoint::name() const {
  return after_l3 ? fmt::format("L3 after layer {}", layer) : fmt::format("layer {}", layer);
}

namespace {

std::vector<LensPoint> lens_points(const Llama& model) {
  std::vector<LensPoint> points;
  for (int64_t i = 0; i < model.config().n_layers; ++i) {
    points.push_back({i, false});
    for (const L3Layer& l3 : model.l3_layers())
      if (l3.after_layer() == i) points.push_back({i, true});
  }
  return points;
}

// Rows of logits computed at once: about 4M logits, 16 to 1024 rows.
int64_t logit_block_rows(int64_t vocab) {
  return std::clamp<int64_t>((int64_t{1} << 22) / std::max<int64_t>(vocab, 1), 16, 1024);
}

// A row of logits' argmax (the lowest index among equal maxima), its max, and log(sum_v exp(logit_v - max)).
struct SoftmaxStats {
  int64_t argmax = 0;
  double max = 0.0, log_sum = 0.0;
};
SoftmaxStats softmax_stats(const double* logits, int64_t V) {
  int64_t best = 0;
  for (int64_t v = 1; v < V; ++v)
    if (logits[v] > logits[best]) best = v;
  const double max = logits[best];
  double sum = 0.0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(logits[v] - max);
  return {best, max, std::log(sum)};
}

// log-softmax of one row of logits at `target`, and the row's argmax.
struct RowStats {
  double log_prob = 0.0;
  int64_t argmax = 0;
};
RowStats row_stats(const double* logits, int64_t V, int64_t target) {
  const SoftmaxStats s = softmax_stats(logits, V);
  return {logits[target] - s.max - s.log_sum, s.argmax};
}

// log-softmax of a row in place; returns its argmax.
int64_t log_softmax_inplace(double* logits, int64_t V) {
  const SoftmaxStats s = softmax_stats(logits, V);
  const double lse = s.max + s.log_sum;
  for (int64_t v = 0; v < V; ++v) logits[v] -= lse;
  return s.argmax;
}

}  // namespace

// The device tensors of one batch: allocated from the arena in this order, before and after the forward pass.
struct Scorer::Batch {
  int64_t B = 0, T = 0;
  Tensor tokens, hidden;          // (B, T) i32, (B*T, d)
  std::vector<Tensor> taps;       // lens only: (B*T, d) per lens point
  // Scored positions, as flat rows of hidden, with their target token and the request they belong to.
  std::vector<int32_t> rows, targets;
  std::vector<int64_t> owner;
  // After the forward: one block of scored rows.
  Tensor index, block_hidden, normed, rstd, logits, logits_f32;

  void allocate_front(Arena& arena, int64_t b, int64_t t, int64_t d, DType dtype, int64_t points) {
    B = b, T = t;
    tokens = arena.alloc(DType::I32, {B, T});
    hidden = arena.alloc(dtype, {B * T, d});
    taps.clear();
    for (int64_t p = 0; p < points; ++p) taps.push_back(arena.alloc(dtype, {B * T, d}));
  }
  void allocate_back(Arena& arena, int64_t R, int64_t d, int64_t V, DType dtype) {
    const DType stats = dtype == DType::BF16 ? DType::F32 : dtype;
    index = arena.alloc(DType::I32, {R});
    block_hidden = arena.alloc(dtype, {R, d});
    normed = arena.alloc(dtype, {R, d});
    rstd = arena.alloc(stats, {R});
    logits = arena.alloc(dtype, {R, V});
    if (dtype == DType::BF16) logits_f32 = arena.alloc(DType::F32, {R, V});
  }
};

Scorer::Scorer(const Llama& model, const FlatBuffer& params, int64_t batch_tokens)
    : model_(model), params_(params), batch_tokens_(batch_tokens),
      block_rows_(logit_block_rows(model.config().vocab_size)) {
  const int64_t d = model.config().d_model, V = model.config().vocab_size;
  const DType dtype = params.dtype();
  // The arena holds the batch's tokens and hidden states (and the lens taps), the forward's activations, and one
  // block of scored rows: measured by the same allocations at the largest size.
  const int64_t points = static_cast<int64_t>(lens_points(model).size());
  Arena measuring;
  Batch batch;
  batch.allocate_front(measuring, 1, batch_tokens, d, dtype, points);
  const size_t front = measuring.peak();
  Arena back;
  batch.allocate_back(back, block_rows_, d, V, dtype);
  arena_ = Arena(front + model.inference_bytes(1, batch_tokens, dtype) + back.peak(), "evaluation", model.device());
  host_block_.resize(static_cast<size_t>(block_rows_ * V));
}

const double* Scorer::host_logits(Tensor logits) {
  const int64_t n = logits.numel();
  if (logits.device == Device::CPU && logits.dtype == DType::F64) return logits.ptr<double>();
  if (logits.device == Device::CPU) {
    const float* src = logits.ptr<float>();
    for (int64_t i = 0; i < n; ++i) host_block_[i] = src[i];
    return host_block_.data();
  }
  host_f32_.resize(static_cast<size_t>(n));
  ops::copy(Tensor(host_f32_.data(), DType::F32, {n}), logits.view({n}));
  for (int64_t i = 0; i < n; ++i) host_block_[i] = host_f32_[i];
  return host_block_.data();
}

template <typename Consume>
void Scorer::run_batches(const std::vector<ScoreRequest>& requests, const EvalProgressFn& progress, bool lens,
                         Consume&& consume) {
  const Llama& model = model_;
  const int64_t d = model.config().d_model, V = model.config().vocab_size;
  const int64_t max_len = batch_tokens_ + 1;
  const DType dtype = params_.dtype();
  const int64_t points = lens ? static_cast<int64_t>(lens_points(model).size()) : 0;
  // Longest first, so that a batch's rows have similar lengths (little padding); ties keep request order.
  std::vector<int64_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return requests[a].tokens.size() > requests[b].tokens.size();
  });
  std::vector<int32_t> host_tokens;
  int64_t done = 0;
  const int64_t total = static_cast<int64_t>(requests.size());
  size_t next = 0;
  while (next < order.size()) {
    const ScoreRequest& longest = requests[order[next]];
    const int64_t L = static_cast<int64_t>(longest.tokens.size());
    L3C_CHECK(L <= max_len, "a scored sequence of {} tokens exceeds the batch of {} tokens", L, batch_tokens_);
    if (L < 2) {  // nothing to predict in this and every shorter request
      done += static_cast<int64_t>(order.size() - next);
      break;
    }
    const int64_t T = L - 1;
    const int64_t B = std::min<int64_t>(std::max<int64_t>(1, batch_tokens_ / T), static_cast<int64_t>(order.size() - next));
    Batch batch;
    arena_.reset();
    batch.allocate_front(arena_, B, T, d, dtype, points);
    host_tokens.assign(static_cast<size_t>(B * T), 0);  // padding: id 0, never scored
    for (int64_t r = 0; r < B; ++r) {
      const int64_t id = order[next + r];
      const ScoreRequest& req = requests[id];
      const int64_t len = static_cast<int64_t>(req.tokens.size());
      L3C_CHECK(req.first_scored >= 1, "ScoreRequest: first_scored must be >= 1, got {}", req.first_scored);
      for (int64_t t = 0; t + 1 < len; ++t) host_tokens[r * T + t] = req.tokens[t];
      for (int64_t t = req.first_scored; t < len; ++t) {
        batch.rows.push_back(static_cast<int32_t>(r * T + t - 1));
        batch.targets.push_back(req.tokens[t]);
        batch.owner.push_back(id);
      }
    }
    ops::copy(batch.tokens, Tensor(host_tokens.data(), DType::I32, {B, T}));
    size_t tap = 0;
    Llama::ResidualObserver observe;
    if (lens)
      observe = [&](int64_t, bool, Tensor resid) { ops::copy(batch.taps.at(tap++), resid); };
    model.forward_hidden(params_, batch.tokens, batch.hidden, arena_, observe);
    batch.allocate_back(arena_, block_rows_, d, V, dtype);
    consume(batch);
    next += static_cast<size_t>(B);
    done += B;
    if (progress) progress(std::min(done, total), total);
  }
  if (progress && done < total) progress(total, total);
}

std::vector<SequenceScore> Scorer::score(const std::vector<ScoreRequest>& requests, const EvalProgressFn& progress) {
  const int64_t V = model_.config().vocab_size;
  std::vector<SequenceScore> scores(requests.size());
  std::vector<RowStats> stats(static_cast<size_t>(block_rows_));
  run_batches(requests, progress, /*lens=*/false, [&](Batch& batch) {
    const int64_t M = static_cast<int64_t>(batch.rows.size());
    for (int64_t begin = 0; begin < M; begin += block_rows_) {
      const int64_t m = std::min(block_rows_, M - begin);
      ops::copy(batch.index.rows(0, m), Tensor(batch.rows.data() + begin, DType::I32, {m}));
      ops::gather_rows(batch.block_hidden.rows(0, m), batch.hidden, batch.index.rows(0, m));
      Tensor logits = batch.logits.rows(0, m);
      model_.output_logits(params_, batch.block_hidden.rows(0, m), logits);
      if (!batch.logits_f32.empty()) {
        ops::convert(batch.logits_f32.rows(0, m), logits);
        logits = batch.logits_f32.rows(0, m);
      }
      const double* host = host_logits(logits);
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < m; ++j) stats[j] = row_stats(host + j * V, V, batch.targets[begin + j]);
      for (int64_t j = 0; j < m; ++j) {  // in position order: sums do not depend on the thread count
        SequenceScore& s = scores[batch.owner[begin + j]];
        s.log_prob += stats[j].log_prob;
        s.greedy = s.greedy && stats[j].argmax == batch.targets[begin + j];
        ++s.tokens;
      }
    }
  });
  return scores;
}

LensTotals Scorer::lens(const std::vector<ScoreRequest>& requests, const EvalProgressFn& progress) {
  const int64_t V = model_.config().vocab_size;
  LensTotals totals;
  totals.points = lens_points(model_);
  const size_t P = totals.points.size();
  totals.kl_sum.assign(P, 0.0);
  totals.agree_sum.assign(P, 0.0);
  std::vector<double> final_lp(static_cast<size_t>(block_rows_ * V));
  std::vector<int64_t> final_argmax(static_cast<size_t>(block_rows_));
  std::vector<double> kl(static_cast<size_t>(block_rows_));
  std::vector<int64_t> agree(static_cast<size_t>(block_rows_));
  run_batches(requests, progress, /*lens=*/true, [&](Batch& batch) {
    const int64_t M = static_cast<int64_t>(batch.rows.size());
    for (int64_t begin = 0; begin < M; begin += block_rows_) {
      const int64_t m = std::min(block_rows_, M - begin);
      Tensor index = batch.index.rows(0, m), rows = batch.block_hidden.rows(0, m);
      ops::copy(index, Tensor(batch.rows.data() + begin, DType::I32, {m}));
      // logits of residual rows through the final norm and output projection, on the host as log-probabilities
      auto log_probs = [&](Tensor source, bool final_hidden) {
        ops::gather_rows(rows, source, index);
        Tensor logits = batch.logits.rows(0, m);
        if (final_hidden) model_.output_logits(params_, rows, logits);
        else model_.lens_logits(params_, rows, batch.normed.rows(0, m), batch.rstd.rows(0, m), logits);
        if (!batch.logits_f32.empty()) {
          ops::convert(batch.logits_f32.rows(0, m), logits);
          logits = batch.logits_f32.rows(0, m);
        }
        return host_logits(logits);
      };
      const double* final_host = log_probs(batch.hidden, true);
      std::copy(final_host, final_host + m * V, final_lp.begin());
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < m; ++j) final_argmax[j] = log_softmax_inplace(final_lp.data() + j * V, V);
      for (size_t p = 0; p < P; ++p) {
        const double* host = log_probs(batch.taps[p], false);
        double* lens_lp = host_block_.data();
        if (host != lens_lp) std::copy(host, host + m * V, lens_lp);
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < m; ++j) {
          double* q = lens_lp + j * V;
          const double* f = final_lp.data() + j * V;
          agree[j] = log_softmax_inplace(q, V) == final_argmax[j];
          double sum = 0.0;
          for (int64_t v = 0; v < V; ++v) sum += std::exp(f[v]) * (f[v] - q[v]);
          kl[j] = std::max(sum, 0.0);
        }
        for (int64_t j = 0; j < m; ++j) {
          totals.kl_sum[p] += kl[j];
          totals.agree_sum[p] += static_cast<double>(agree[j]);
        }
      }
      totals.positions += m;
    }
  });
  return totals;
}

}  // namespace l3c
