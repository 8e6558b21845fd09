// The inference session: KV cache, prefill in chunks, batched decode.
#include "infer/session.h"

#include <algorithm>

#include "core/errors.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "runtime/memory.h"

namespace l3c {

namespace {

constexpr int64_t kPrefillChunk = 128;  // positions per prefill step: enough rows for efficient matrix products

// The tensors of one step of `rows` new positions over `sequences` sequences, carved from the arena.
struct Step {
  Tensor tokens, slots, start;               // i32 (N), (B), (B)
  Tensor x, ln, rstd;                        // (N, d) the residual stream, (N, d) its norm, (N)
  Tensor q, k, v, att;                       // (N, H * hd), (N, Hkv * hd), (N, Hkv * hd), (N, H * hd)
  Tensor gate, up, act;                      // (N, F) when some FFN is dense
  MoeLayer::Activations moe;                 // shared by the MoE layers
  L3Layer::Activations l3;                   // shared by the L3 layers
  Tensor order, group_offsets;               // i32 (N), (U + 1): the step's positions grouped by token
  std::vector<Tensor> row_offsets, table_rows, step_k, step_v;  // per L3 layer: (U + 1), (R), (R, d), (R, d_emb)
  Tensor lnf, rstdf, logits, logits_f32;     // (B, d), (B), (B, V), (B, V) f32 when the logits are bf16
};

Step allocate_step(const InferenceModel& model, Arena& arena, int64_t rows, int64_t sequences, int64_t groups,
                   std::span<const int64_t> l3_rows) {
  const ModelConfig& m = model.model_config();
  const DType dtype = model.options().dtype, stats = ops::statistics_dtype(dtype);
  const int64_t N = rows, B = sequences, d = m.d_model, hd = m.head_dim();
  Step s;
  s.tokens = arena.alloc(DType::I32, {N});
  s.slots = arena.alloc(DType::I32, {B});
  s.start = arena.alloc(DType::I32, {B});
  s.x = arena.alloc(dtype, {N, d});
  s.ln = arena.alloc(dtype, {N, d});
  s.rstd = arena.alloc(stats, {N});
  s.q = arena.alloc(dtype, {N, m.n_heads * hd});
  s.k = arena.alloc(dtype, {N, m.n_kv_heads * hd});
  s.v = arena.alloc(dtype, {N, m.n_kv_heads * hd});
  s.att = arena.alloc(dtype, {N, m.n_heads * hd});
  const Llama& llama = model.llama();
  if (static_cast<int64_t>(llama.moe_layers().size()) < m.n_layers) {
    s.gate = arena.alloc(dtype, {N, m.ffn_hidden});
    s.up = arena.alloc(dtype, {N, m.ffn_hidden});
    s.act = arena.alloc(dtype, {N, m.ffn_hidden});
  }
  if (!llama.moe_layers().empty()) s.moe = llama.moe_layers().front().allocate_activations(arena, N, dtype);
  if (!llama.l3_layers().empty()) {
    s.l3 = llama.l3_layers().front().allocate_activations(arena, N, dtype);
    s.order = arena.alloc(DType::I32, {N});
    s.group_offsets = arena.alloc(DType::I32, {groups + 1});
    for (size_t j = 0; j < l3_rows.size(); ++j) {
      const L3TableStore& tables = model.tables(static_cast<int64_t>(j));
      s.row_offsets.push_back(arena.alloc(DType::I32, {groups + 1}));
      s.table_rows.push_back(arena.alloc(DType::I32, {std::max<int64_t>(l3_rows[j], 1)}));
      s.step_k.push_back(arena.alloc(dtype, {l3_rows[j], tables.d_k()}));
      s.step_v.push_back(tables.tied() ? s.step_k.back() : arena.alloc(dtype, {l3_rows[j], tables.d_v()}));
    }
  }
  s.lnf = arena.alloc(dtype, {B, d});
  s.rstdf = arena.alloc(stats, {B});
  s.logits = arena.alloc(dtype, {B, m.vocab_size});
  if (dtype != DType::F32) s.logits_f32 = arena.alloc(DType::F32, {B, m.vocab_size});
  return s;
}

struct Sizes {
  int64_t max_batch, max_context, chunk, rows, max_l3_rows;
};

Sizes sizes_of(const InferenceModel& model, const SessionLimits& limits) {
  const ModelConfig& m = model.model_config();
  Sizes z;
  z.max_batch = limits.max_batch;
  z.max_context = limits.max_context > 0 ? limits.max_context : model.config().data.seq_len;
  if (z.max_batch < 1) fail("the batch must hold at least one sequence, got {}", z.max_batch);
  if (z.max_context < 1) fail("the context must hold at least one position, got {}", z.max_context);
  z.chunk = std::min(z.max_context, kPrefillChunk);
  z.rows = std::max(z.chunk, z.max_batch);
  // A step's distinct tokens own at most k rows each, and never more than the table.
  z.max_l3_rows = m.l3.num_layers() > 0 ? std::min(z.rows * m.l3.k, m.l3.v) : 0;
  return z;
}

// i32 values from host memory into dst (any device).
void upload_i32(Tensor dst, std::span<const int32_t> values) {
  ops::copy(dst, Tensor(const_cast<int32_t*>(values.data()), DType::I32, {static_cast<int64_t>(values.size())}));
}

}  // namespace

SessionMemory InferenceSession::memory(const InferenceModel& model, const SessionLimits& limits) {
  const ModelConfig& m = model.model_config();
  const Sizes z = sizes_of(model, limits);
  SessionMemory mem;
  mem.trunk = model.trunk_bytes();
  mem.tables = model.table_bytes_resident();
  mem.kv_cache = 2 * static_cast<size_t>(m.n_layers * z.max_batch * z.max_context * m.n_kv_heads * m.head_dim()) *
                 dtype_size(model.options().dtype);
  Arena measuring;
  const std::vector<int64_t> l3_rows(static_cast<size_t>(m.l3.num_layers()), z.max_l3_rows);
  allocate_step(model, measuring, z.rows, z.max_batch, std::min(z.rows, m.vocab_size), l3_rows);
  mem.activations = measuring.peak();
  return mem;
}

InferenceSession::InferenceSession(InferenceModel& model, const SessionLimits& limits) : model_(model) {
  const ModelConfig& m = model.model_config();
  const Sizes z = sizes_of(model, limits);
  max_batch_ = z.max_batch;
  max_context_ = z.max_context;
  chunk_ = z.chunk;
  max_l3_rows_ = z.max_l3_rows;
  vocab_ = m.vocab_size;
  memory_ = memory(model, limits);
  // Refuse before allocating anything, naming the bytes.
  const Device device = model.options().device;
  const size_t needed = memory_.session();
  const size_t available = device == Device::CUDA ? cuda_memory_info().first : available_host_memory();
  if (available != 0 && needed > available)
    fail("a batch of {} sequences of up to {} positions needs {} ({} bytes: KV cache {}, activations {}) but only {} "
         "is available; lower --batch or the context",
         max_batch_, max_context_, format_bytes(static_cast<double>(needed)), needed,
         format_bytes(static_cast<double>(memory_.kv_cache)), format_bytes(static_cast<double>(memory_.activations)),
         format_bytes(static_cast<double>(available)));
  const int64_t cache_elements = max_batch_ * max_context_ * m.n_kv_heads * m.head_dim();
  for (int64_t i = 0; i < m.n_layers; ++i) {
    k_cache_.emplace_back(cache_elements, model.options().dtype, device);
    v_cache_.emplace_back(cache_elements, model.options().dtype, device);
  }
  arena_ = Arena(memory_.activations, "inference activation", device);
  lengths_.assign(static_cast<size_t>(max_batch_), 0);
  for (const L3Layer& layer : model.llama().l3_layers())
    l3_allocations_.push_back(L3Rows::from_counts(model.llama().l3_allocation(layer.index())));
}

void InferenceSession::prefill(int64_t slot, std::span<const int32_t> tokens, std::span<float> logits) {
  if (slot < 0 || slot >= max_batch_) fail("slot {} outside the session's {} slots", slot, max_batch_);
  if (tokens.empty()) fail("an empty prompt: at least one token is needed");
  const int64_t length = lengths_[static_cast<size_t>(slot)];
  if (length + static_cast<int64_t>(tokens.size()) > max_context_)
    fail("a prompt of {} tokens{} exceeds the context of {} positions", tokens.size(),
         length > 0 ? fmt::format(" after {} cached", length) : std::string(), max_context_);
  L3C_CHECK(static_cast<int64_t>(logits.size()) == vocab_, "prefill: logits hold {} values, expected {}", logits.size(),
            vocab_);
  const int32_t slot_id = static_cast<int32_t>(slot);
  for (size_t first = 0; first < tokens.size(); first += static_cast<size_t>(chunk_)) {
    const size_t count = std::min(tokens.size() - first, static_cast<size_t>(chunk_));
    const int32_t start = static_cast<int32_t>(lengths_[static_cast<size_t>(slot)]);
    forward({&slot_id, 1}, {&start, 1}, tokens.subspan(first, count), static_cast<int64_t>(count), logits);
    lengths_[static_cast<size_t>(slot)] += static_cast<int64_t>(count);
  }
}

void InferenceSession::decode(std::span<const int32_t> slots, std::span<const int32_t> tokens, std::span<float> logits) {
  const int64_t B = static_cast<int64_t>(slots.size());
  L3C_CHECK(B >= 1 && B <= max_batch_ && tokens.size() == slots.size() &&
                static_cast<int64_t>(logits.size()) == B * vocab_,
            "decode: {} slots, {} tokens and {} logits for a session of {} slots and {} classes", slots.size(),
            tokens.size(), logits.size(), max_batch_, vocab_);
  std::vector<int32_t> start(slots.size());
  for (int64_t b = 0; b < B; ++b) {
    const int32_t slot = slots[b];
    L3C_CHECK(slot >= 0 && slot < max_batch_, "decode: slot {} outside the session's {} slots", slot, max_batch_);
    L3C_CHECK(std::count(slots.begin(), slots.end(), slot) == 1, "decode: slot {} listed twice", slot);
    const int64_t length = lengths_[static_cast<size_t>(slot)];
    L3C_CHECK(length >= 1, "decode: slot {} holds no sequence (prefill it first)", slot);
    if (length >= max_context_) fail("sequence in slot {} reached the context of {} positions", slot, max_context_);
    start[b] = static_cast<int32_t>(length);
  }
  forward(slots, start, tokens, 1, logits);
  for (int32_t slot : slots) ++lengths_[static_cast<size_t>(slot)];
}

void InferenceSession::forward(std::span<const int32_t> slots, std::span<const int32_t> start,
                               std::span<const int32_t> tokens, int64_t T, std::span<float> logits) {
  const ModelConfig& m = model_.model_config();
  const InferenceModel::Weights& w = model_.weights();
  const Llama& llama = model_.llama();
  const Device device = model_.options().device;
  const int64_t B = static_cast<int64_t>(slots.size()), N = B * T, d = m.d_model, hd = m.head_dim();
  const int64_t H = m.n_heads, Hkv = m.n_kv_heads;
  const double eps = m.norm_eps, theta = m.rope_theta;
  L3C_CHECK(T == 1 || B == 1, "a step is one sequence's positions or one position of each sequence");
  for (int32_t token : tokens)
    if (token < 0 || token >= vocab_) fail("token id {} outside the vocabulary of {} ids", token, vocab_);

  // The step's L3 rows, known from its tokens before any layer runs.
  const int64_t num_l3 = static_cast<int64_t>(llama.l3_layers().size());
  L3StepGroups groups;
  std::vector<L3StepRows> l3_rows;
  std::vector<int64_t> l3_row_counts;
  if (num_l3 > 0) {
    groups = L3StepGroups::of(tokens);
    for (const L3Layer& layer : llama.l3_layers()) {
      l3_rows.push_back(L3StepRows::of(groups, l3_allocations_[static_cast<size_t>(layer.index())]));
      l3_row_counts.push_back(l3_rows.back().rows());
    }
  }
  arena_.reset();
  Step s = allocate_step(model_, arena_, N, B, static_cast<int64_t>(groups.tokens.size()), l3_row_counts);
  upload_i32(s.tokens, tokens);
  upload_i32(s.slots, slots);
  upload_i32(s.start, start);
  if (num_l3 > 0) {
    upload_i32(s.order, groups.order);
    upload_i32(s.group_offsets, groups.group_offsets);
    for (int64_t j = 0; j < num_l3; ++j) {
      upload_i32(s.row_offsets[j], l3_rows[j].row_offsets);
      if (!l3_rows[j].table_rows.empty()) upload_i32(s.table_rows[j].rows(0, l3_rows[j].rows()), l3_rows[j].table_rows);
      l3_bytes_read_ += model_.tables(j).step_bytes(l3_rows[j].rows());
    }
  }
  // Rows served from host memory or a file start on their way now: on the CPU before any layer, on the GPU once
  // the first decoder layer is queued, so that the copies run beside it.
  auto prefetch_l3 = [&] {
    for (int64_t j = 0; j < num_l3; ++j) model_.tables(j).prefetch(l3_rows[j], s.step_k[j], s.step_v[j]);
  };
  if (device == Device::CPU) prefetch_l3();

  ops::embedding_forward(s.x, w.embed, s.tokens);
  const int64_t slots_held = max_batch_;
  int64_t moe_index = 0;
  for (int64_t i = 0; i < m.n_layers; ++i) {
    const InferenceModel::LayerWeights& lw = w.layers[i];
    // attention: x += o_proj(attention of the new queries over the cached keys and values)
    ops::rmsnorm_forward(s.ln, s.rstd, s.x, lw.input_norm, eps);
    ops::matmul_forward(s.q, s.ln, lw.wq);
    ops::matmul_forward(s.k, s.ln, lw.wk);
    ops::matmul_forward(s.v, s.ln, lw.wv);
    const Tensor q = s.q.view({B, T, H, hd}), k = s.k.view({B, T, Hkv, hd}), v = s.v.view({B, T, Hkv, hd});
    ops::rope_forward_at(q, theta, s.start);
    ops::rope_forward_at(k, theta, s.start);
    const Tensor k_cache = k_cache_[i].all().view({slots_held, max_context_, Hkv, hd});
    const Tensor v_cache = v_cache_[i].all().view({slots_held, max_context_, Hkv, hd});
    ops::kv_cache_write(k_cache, k, s.slots, s.start);
    ops::kv_cache_write(v_cache, v, s.slots, s.start);
    ops::attention_cached(s.att.view({B, T, H, hd}), q, k_cache, v_cache, s.slots, s.start);
    ops::matmul_forward(s.x, s.att, lw.wo, /*accumulate=*/true);
    // feed-forward: x += SwiGLU(x) or MoE(x)
    ops::rmsnorm_forward(s.ln, s.rstd, s.x, lw.post_norm, eps);
    if (m.is_moe_layer(i)) {
      const int64_t j = moe_index++;
      llama.moe_layers()[j].forward(w.moe[j], s.moe, s.ln, s.x);
    } else {
      ops::matmul_forward(s.gate, s.ln, lw.w_gate);
      ops::matmul_forward(s.up, s.ln, lw.w_up);
      ops::swiglu_forward(s.act, s.gate, s.up);
      ops::matmul_forward(s.x, s.act, lw.w_down, /*accumulate=*/true);
    }
    if (i == 0 && device == Device::CUDA) prefetch_l3();
    // an L3 layer after this one replaces x, on the step's rows of its tables
    for (const L3Layer& layer : llama.l3_layers()) {
      if (layer.after_layer() != i) continue;
      const int64_t j = layer.index();
      model_.tables(j).gather(l3_rows[j], s.step_k[j], s.step_v[j], s.table_rows[j].rows(0, l3_rows[j].rows()));
      L3Layer::Weights lw3 = w.l3[j];
      lw3.w_k = s.step_k[j];
      lw3.w_v = s.step_v[j];
      layer.forward(lw3, s.l3, s.x, L3Routing{s.order, s.group_offsets}, s.row_offsets[j]);
    }
  }
  // logits after each sequence's last new position
  const Tensor last = T == 1 ? s.x : s.x.rows(N - 1, N);
  ops::rmsnorm_forward(s.lnf, s.rstdf, last, w.final_norm, eps);
  ops::matmul_forward(s.logits, s.lnf, w.lm_head);
  Tensor out(logits.data(), DType::F32, {B, vocab_});
  if (s.logits.dtype == DType::F32) {
    ops::copy(out, s.logits);
  } else {
    ops::convert(s.logits_f32, s.logits);
    ops::copy(out, s.logits_f32);
  }
  positions_ += static_cast<uint64_t>(N);
  (void)d;
}

}  // namespace l3c
