// Llama decoder: parameter registration, forward, backward, cost model.
#include "model/llama.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "data/allocation.h"
#include "kernels/ops.h"

namespace l3c {

namespace {
std::string layer_name(int64_t i, const char* suffix) { return fmt::format("model.layers.{}.{}", i, suffix); }

// The mean of the per-position losses (N): ops::add_mean's sum on the host (read back from the GPU first).
double mean_loss(Tensor losses) {
  std::vector<float> host;
  if (losses.device != Device::CPU) {
    host.resize(static_cast<size_t>(losses.numel()));
    ops::copy(Tensor(host.data(), DType::F32, {losses.numel()}), losses);
    losses = Tensor(host.data(), DType::F32, {losses.numel()});
  }
  double mean = 0.0;
  ops::add_mean(Tensor(&mean, DType::F64, {1}), losses);
  return mean;
}
}  // namespace

Llama::Llama(const ModelConfig& config) : config_(config) {
  const int64_t d = config.d_model, V = config.vocab_size, F = config.ffn_hidden;
  const int64_t hd = config.head_dim(), H = config.n_heads, Hkv = config.n_kv_heads;
  const double std = config.init_std;
  // Output projections of each block are scaled by 1/sqrt(2 * n_layers) (GPT-2 / llm.c).
  const double out_std = std / std::sqrt(2.0 * static_cast<double>(config.n_layers));

  registry_.add("model.embed_tokens.weight", {V, d}, InitKind::Normal, std, "embedding");
  for (int64_t i = 0; i < config.n_layers; ++i) {
    registry_.add(layer_name(i, "input_layernorm.weight"), {d}, InitKind::Ones, 0, "norm");
    registry_.add(layer_name(i, "self_attn.q_proj.weight"), {H * hd, d}, InitKind::Normal, std, "attention");
    registry_.add(layer_name(i, "self_attn.k_proj.weight"), {Hkv * hd, d}, InitKind::Normal, std, "attention");
    registry_.add(layer_name(i, "self_attn.v_proj.weight"), {Hkv * hd, d}, InitKind::Normal, std, "attention");
    registry_.add(layer_name(i, "self_attn.o_proj.weight"), {d, H * hd}, InitKind::Normal, out_std, "attention");
    registry_.add(layer_name(i, "post_attention_layernorm.weight"), {d}, InitKind::Ones, 0, "norm");
    if (config.is_moe_layer(i)) {
      moe_index_.push_back(static_cast<int64_t>(moe_layers_.size()));
      moe_layers_.emplace_back(config, i);
      moe_layers_.back().register_params(registry_);
      continue;
    }
    moe_index_.push_back(-1);
    registry_.add(layer_name(i, "mlp.gate_proj.weight"), {F, d}, InitKind::Normal, std, "ffn");
    registry_.add(layer_name(i, "mlp.up_proj.weight"), {F, d}, InitKind::Normal, std, "ffn");
    registry_.add(layer_name(i, "mlp.down_proj.weight"), {d, F}, InitKind::Normal, out_std, "ffn");
  }
  registry_.add("model.norm.weight", {d}, InitKind::Ones, 0, "norm");
  if (!config.tie_embeddings) registry_.add("lm_head.weight", {V, d}, InitKind::Normal, std, "lm_head");
  // L3 parameters last: the dense parameters keep their indices, hence their initial values.
  for (int64_t j = 0; j < config.l3.num_layers(); ++j) {
    l3_layers_.emplace_back(config, j);
    l3_layers_.back().register_params(registry_);
  }
  l3_rows_.resize(l3_layers_.size());
}

void Llama::set_l3_allocation(int64_t layer, std::vector<int32_t> counts, const std::string& what) {
  L3C_CHECK(layer >= 0 && layer < static_cast<int64_t>(l3_layers_.size()), "no L3 layer {}", layer);
  validate_allocation(counts, config_.vocab_size, config_.l3.v, config_.l3.k, what);
  l3_rows_[layer] = L3Rows::from_counts(std::move(counts));
  l3_rows_[layer].upload(device_);
}

void Llama::set_device(Device device) {
  device_ = device;
  for (L3Rows& rows : l3_rows_) rows.upload(device);
}

void Llama::set_l3_allocations(const std::vector<int32_t>& counts, const std::string& what) {
  for (int64_t j = 0; j < static_cast<int64_t>(l3_layers_.size()); ++j) set_l3_allocation(j, counts, what);
}

bool Llama::l3_allocations_set() const {
  for (const L3Rows& rows : l3_rows_)
    if (rows.empty()) return false;
  return true;
}

const L3Layer* Llama::l3_after(int64_t i) const {
  for (const L3Layer& layer : l3_layers_)
    if (layer.after_layer() == i) return &layer;
  return nullptr;
}

Llama::LayerWeights Llama::layer_weights(const FlatBuffer& buffer, const ParamRegistry& registry, int64_t i) const {
  auto get = [&](const std::string& name) { return buffer.view(registry.find(name)); };
  LayerWeights lw{get(layer_name(i, "input_layernorm.weight")), get(layer_name(i, "self_attn.q_proj.weight")),
                  get(layer_name(i, "self_attn.k_proj.weight")), get(layer_name(i, "self_attn.v_proj.weight")),
                  get(layer_name(i, "self_attn.o_proj.weight")), get(layer_name(i, "post_attention_layernorm.weight")),
                  {}, {}, {}};
  if (moe_index(i) < 0) {
    lw.w_gate = get(layer_name(i, "mlp.gate_proj.weight"));
    lw.w_up = get(layer_name(i, "mlp.up_proj.weight"));
    lw.w_down = get(layer_name(i, "mlp.down_proj.weight"));
  }
  return lw;
}

Llama::Weights Llama::weights(const FlatBuffer& buffer) const {
  auto get = [&](const std::string& name) { return buffer.view(registry_.find(name)); };
  Weights w;
  w.embed = get("model.embed_tokens.weight");
  w.final_norm = get("model.norm.weight");
  w.lm_head = config_.tie_embeddings ? w.embed : get("lm_head.weight");
  for (int64_t i = 0; i < config_.n_layers; ++i) w.layers.push_back(layer_weights(buffer, registry_, i));
  for (const L3Layer& layer : l3_layers_) w.l3.push_back(layer.weights(buffer, registry_));
  for (const MoeLayer& layer : moe_layers_) w.moe.push_back(layer.weights(buffer, registry_));
  return w;
}

Llama::Activations Llama::allocate_activations(Arena& arena, int64_t B, int64_t T, DType dtype, bool inference) const {
  const int64_t N = B * T, d = config_.d_model, F = config_.ffn_hidden, hd = config_.head_dim();
  const int64_t H = config_.n_heads, Hkv = config_.n_kv_heads;
  const DType stats = ops::statistics_dtype(dtype);  // rstd, lse, losses (ops.h)
  Activations a;
  if (recompute_.attention) a.att_shared = arena.alloc(dtype, {B, T, H, hd});
  if (recompute_.swiglu) a.act_shared = arena.alloc(dtype, {N, F});
  if (inference) {
    // Layer i reads its residual stream from one buffer and writes the next into the other; nothing else of a
    // layer outlives it (a layer's input is not read after its attention block copies it).
    const Tensor resid[2] = {arena.alloc(dtype, {N, d}), arena.alloc(dtype, {N, d})};
    LayerActivations shared;
    shared.ln1 = arena.alloc(dtype, {N, d});
    shared.rstd1 = arena.alloc(stats, {N});
    shared.q = arena.alloc(dtype, {B, T, H, hd});
    shared.k = arena.alloc(dtype, {B, T, Hkv, hd});
    shared.v = arena.alloc(dtype, {B, T, Hkv, hd});
    shared.att = arena.alloc(dtype, {B, T, H, hd});
    shared.lse = arena.alloc(stats, {B, H, T});
    shared.resid_mid = arena.alloc(dtype, {N, d});
    shared.ln2 = arena.alloc(dtype, {N, d});
    shared.rstd2 = arena.alloc(stats, {N});
    if (static_cast<int64_t>(moe_layers_.size()) < config_.n_layers) {
      shared.gate = arena.alloc(dtype, {N, F});
      shared.up = arena.alloc(dtype, {N, F});
      shared.act = arena.alloc(dtype, {N, F});
    }
    for (int64_t i = 0; i < config_.n_layers; ++i) {
      a.layers.push_back(shared);
      a.layers.back().resid_in = resid[i % 2];
    }
    a.resid_out = resid[config_.n_layers % 2];
    a.lnf = arena.alloc(dtype, {N, d});
    a.rstdf = arena.alloc(stats, {N});
    if (!l3_layers_.empty()) {
      a.routing.order = arena.alloc(DType::I32, {N});
      a.routing.group_offsets = arena.alloc(DType::I32, {config_.vocab_size + 1});
      const L3Layer::Activations l3 = l3_layers_.front().allocate_activations(arena, N, dtype);
      a.l3.assign(l3_layers_.size(), l3);
    }
    if (!moe_layers_.empty()) a.moe.assign(moe_layers_.size(), moe_layers_.front().allocate_activations(arena, N, dtype));
    return a;
  }
  for (int64_t i = 0; i < config_.n_layers; ++i) {
    LayerActivations l;
    l.resid_in = arena.alloc(dtype, {N, d});
    l.ln1 = arena.alloc(dtype, {N, d});
    l.rstd1 = arena.alloc(stats, {N});
    l.q = arena.alloc(dtype, {B, T, H, hd});
    l.k = arena.alloc(dtype, {B, T, Hkv, hd});
    l.v = arena.alloc(dtype, {B, T, Hkv, hd});
    l.att = recompute_.attention ? a.att_shared : arena.alloc(dtype, {B, T, H, hd});
    l.lse = arena.alloc(stats, {B, H, T});
    l.resid_mid = arena.alloc(dtype, {N, d});
    l.ln2 = arena.alloc(dtype, {N, d});
    l.rstd2 = arena.alloc(stats, {N});
    if (moe_index(i) < 0) {
      l.gate = arena.alloc(dtype, {N, F});
      l.up = arena.alloc(dtype, {N, F});
      l.act = recompute_.swiglu ? a.act_shared : arena.alloc(dtype, {N, F});
    }
    a.layers.push_back(l);
  }
  a.resid_out = arena.alloc(dtype, {N, d});
  a.lnf = arena.alloc(dtype, {N, d});
  a.rstdf = arena.alloc(stats, {N});
  a.losses = arena.alloc(stats, {N});
  if (!l3_layers_.empty()) {
    a.routing.order = arena.alloc(DType::I32, {N});
    a.routing.group_offsets = arena.alloc(DType::I32, {config_.vocab_size + 1});
    for (const L3Layer& layer : l3_layers_) a.l3.push_back(layer.allocate_activations(arena, N, dtype));
  }
  if (!moe_layers_.empty()) {
    a.moe_statistics = arena.alloc(stats, {static_cast<int64_t>(moe_layers_.size()), ops::kMoeStatistics});
    for (size_t j = 0; j < moe_layers_.size(); ++j) {
      const auto row = static_cast<int64_t>(j);
      a.moe.push_back(moe_layers_[j].allocate_activations(arena, N, dtype, a.moe_statistics.rows(row, row + 1)));
    }
  }
  return a;
}

Llama::Scratch Llama::allocate_scratch(Arena& arena, int64_t B, int64_t T, DType dtype) const {
  const int64_t N = B * T, d = config_.d_model, F = config_.ffn_hidden, hd = config_.head_dim();
  const int64_t H = config_.n_heads, Hkv = config_.n_kv_heads;
  Scratch s;
  s.dresid = arena.alloc(dtype, {N, d});
  s.dln = arena.alloc(dtype, {N, d});
  s.datt = arena.alloc(dtype, {B, T, H, hd});
  s.dq = arena.alloc(dtype, {B, T, H, hd});
  s.dk = arena.alloc(dtype, {B, T, Hkv, hd});
  s.dv = arena.alloc(dtype, {B, T, Hkv, hd});
  if (static_cast<int64_t>(moe_layers_.size()) < config_.n_layers) {  // some FFN is dense
    s.dact = arena.alloc(dtype, {N, F});
    s.dgate = arena.alloc(dtype, {N, F});
    s.dup = arena.alloc(dtype, {N, F});
  }
  if (!l3_layers_.empty()) s.l3 = l3_layers_.front().allocate_scratch(arena, N, dtype);
  if (!moe_layers_.empty()) s.moe = moe_layers_.front().allocate_scratch(arena, N, dtype);
  return s;
}

size_t Llama::activation_bytes(int64_t B, int64_t T, DType dtype, bool training) const {
  Arena measuring;
  allocate_activations(measuring, B, T, dtype);
  if (training) allocate_scratch(measuring, B, T, dtype);
  return measuring.peak();
}

void Llama::forward_trunk(const Weights& w, Activations& a, Tensor tokens, int64_t B, int64_t T,
                          const ResidualObserver& observe) const {
  const int64_t N = B * T, d = config_.d_model, hd = config_.head_dim();
  const int64_t H = config_.n_heads, Hkv = config_.n_kv_heads;
  const double eps = config_.norm_eps, theta = config_.rope_theta;
  Tensor flat_tokens = tokens.view({N});

  ops::embedding_forward(a.layers.empty() ? a.resid_out : a.layers[0].resid_in, w.embed, flat_tokens);
  if (!l3_layers_.empty()) {
    L3C_CHECK(l3_allocations_set(), "the model's L3 allocations must be set before a forward pass");
    // Shared by every L3 layer. Token ids were checked when loaded (and the embedding has read at them), so the
    // sort need not read its count of valid keys back: on a GPU the host does not wait here.
    ops::group_by_key(a.routing.order, a.routing.group_offsets, flat_tokens, ops::KeyCheck::Trusted);
  }
  for (int64_t i = 0; i < config_.n_layers; ++i) {
    const LayerWeights& lw = w.layers[i];
    LayerActivations& l = a.layers[i];
    Tensor resid_out = (i + 1 < config_.n_layers) ? a.layers[i + 1].resid_in : a.resid_out;
    // attention block: resid_mid = resid_in + o_proj(attention(rope(q), rope(k), v))
    ops::rmsnorm_forward(l.ln1, l.rstd1, l.resid_in, lw.input_norm, eps);
    ops::matmul_forward(l.q.view({N, H * hd}), l.ln1, lw.wq);
    ops::matmul_forward(l.k.view({N, Hkv * hd}), l.ln1, lw.wk);
    ops::matmul_forward(l.v.view({N, Hkv * hd}), l.ln1, lw.wv);
    ops::rope_forward(l.q, theta);
    ops::rope_forward(l.k, theta);
    ops::attention_forward(l.att, l.lse, l.q, l.k, l.v);
    ops::copy(l.resid_mid, l.resid_in);
    ops::matmul_forward(l.resid_mid, l.att.view({N, H * hd}), lw.wo, /*accumulate=*/true);
    // feed-forward block: resid_out = resid_mid + down(silu(gate(x)) * up(x)), or + MoE(x)
    ops::rmsnorm_forward(l.ln2, l.rstd2, l.resid_mid, lw.post_norm, eps);
    ops::copy(resid_out, l.resid_mid);
    if (const int64_t j = moe_index(i); j >= 0) {
      moe_layers_[j].forward(w.moe[j], a.moe[j], l.ln2, resid_out);
    } else {
      ops::matmul_forward(l.gate, l.ln2, lw.w_gate);
      ops::matmul_forward(l.up, l.ln2, lw.w_up);
      ops::swiglu_forward(l.act, l.gate, l.up);
      ops::matmul_forward(resid_out, l.act, lw.w_down, /*accumulate=*/true);
    }
    if (observe) observe(i, false, resid_out);
    // an L3 layer after this one replaces its output in place
    if (const L3Layer* l3 = l3_after(i)) {
      l3->forward(w.l3[l3->index()], a.l3[l3->index()], resid_out, a.routing, l3_rows_[l3->index()]);
      if (observe) observe(i, true, resid_out);
    }
  }
  ops::rmsnorm_forward(a.lnf, a.rstdf, a.resid_out, w.final_norm, eps);
  (void)d;
}

void Llama::backward_trunk(const Weights& w, const Weights& g, Activations& a, Scratch& s, Tensor tokens,
                           int64_t B, int64_t T, double aux_scale) const {
  const int64_t N = B * T, hd = config_.head_dim(), H = config_.n_heads, Hkv = config_.n_kv_heads;
  const double theta = config_.rope_theta;
  // On entry s.dln holds d(loss)/d(lnf) from the classifier.
  ops::fill_zero(s.dresid);
  ops::rmsnorm_backward(s.dresid, g.final_norm, s.dln, a.resid_out, w.final_norm, a.rstdf);
  for (int64_t i = config_.n_layers - 1; i >= 0; --i) {
    const LayerWeights& lw = w.layers[i];
    const LayerWeights& lg = g.layers[i];
    LayerActivations& l = a.layers[i];
    // an L3 layer after this one: s.dresid becomes d/d(its input), this layer's resid_out
    if (const L3Layer* l3 = l3_after(i))
      l3->backward(w.l3[l3->index()], g.l3[l3->index()], a.l3[l3->index()], s.l3, s.dresid, a.routing,
                   l3_rows_[l3->index()]);
    // feed-forward block; s.dresid is d/d(resid_out) and becomes d/d(resid_mid) (the skip adds in place)
    if (const int64_t j = moe_index(i); j >= 0) {
      moe_layers_[j].backward(w.moe[j], g.moe[j], a.moe[j], s.moe, l.ln2, s.dresid, s.dln, aux_scale);
    } else {
      if (recompute_.swiglu) ops::swiglu_forward(l.act, l.gate, l.up);  // the shared buffer holds another layer's
      ops::matmul_backward(s.dact, lg.w_down, s.dresid, l.act, lw.w_down);
      ops::swiglu_backward(s.dgate, s.dup, s.dact, l.gate, l.up);
      ops::matmul_backward(s.dln, lg.w_gate, s.dgate, l.ln2, lw.w_gate);
      ops::matmul_backward(s.dln, lg.w_up, s.dup, l.ln2, lw.w_up, /*accumulate_dx=*/true);
    }
    ops::rmsnorm_backward(s.dresid, lg.post_norm, s.dln, l.resid_mid, lw.post_norm, l.rstd2);
    // attention block; s.dresid becomes d/d(resid_in)
    if (recompute_.attention) ops::attention_forward(l.att, l.lse, l.q, l.k, l.v);  // rewrites lse with equal values
    ops::matmul_backward(s.datt.view({N, H * hd}), lg.wo, s.dresid, l.att.view({N, H * hd}), lw.wo);
    ops::attention_backward(s.dq, s.dk, s.dv, s.datt, l.q, l.k, l.v, l.att, l.lse);
    ops::rope_backward(s.dq, theta);
    ops::rope_backward(s.dk, theta);
    ops::matmul_backward(s.dln, lg.wq, s.dq.view({N, H * hd}), l.ln1, lw.wq);
    ops::matmul_backward(s.dln, lg.wk, s.dk.view({N, Hkv * hd}), l.ln1, lw.wk, /*accumulate_dx=*/true);
    ops::matmul_backward(s.dln, lg.wv, s.dv.view({N, Hkv * hd}), l.ln1, lw.wv, /*accumulate_dx=*/true);
    ops::rmsnorm_backward(s.dresid, lg.input_norm, s.dln, l.resid_in, lw.input_norm, l.rstd1);
  }
  ops::embedding_backward(g.embed, s.dresid, tokens.view({N}));
}

LossReport Llama::forward_backward(const FlatBuffer& params, FlatBuffer* grads, Tensor tokens, Tensor targets,
                                   double grad_scale, Arena& arena, const StepSums* sums) const {
  const int64_t B = tokens.dim(0), T = tokens.dim(1), N = B * T;
  const DType dtype = params.dtype();
  L3C_CHECK(params.device() == device_ && arena.device() == device_ && tokens.device == device_ &&
                targets.device == device_ && (grads == nullptr || grads->device() == device_),
            "Llama::forward_backward: the model computes on {}; parameters, gradients, arena, tokens and targets must "
            "live there", device_name(device_));
  const Weights w = weights(params);
  Activations a = allocate_activations(arena, B, T, dtype);
  forward_trunk(w, a, tokens, B, T);

  Tensor flat_targets = targets.view({N});
  if (grads == nullptr) {
    ops::classifier_forward_backward(a.losses, Tensor(), Tensor(), a.lnf, w.lm_head, flat_targets, 0.0);
  } else {
    const Weights g = weights(*grads);
    Scratch s = allocate_scratch(arena, B, T, dtype);
    ops::classifier_forward_backward(a.losses, s.dln, g.lm_head, a.lnf, w.lm_head, flat_targets, grad_scale);
    // Each micro-batch's auxiliary losses are means over its N tokens; they enter the objective with the
    // weight its summed cross-entropy has per token, times N.
    backward_trunk(w, g, a, s, tokens, B, T, grad_scale * static_cast<double>(N));
  }
  LossReport report;
  if (sums != nullptr) {  // left where the model computes, for the caller to read once per step
    ops::add_mean(sums->loss, a.losses);
    if (!moe_layers_.empty()) ops::add_to_sums(sums->moe_statistics, a.moe_statistics.view({a.moe_statistics.numel()}));
    return report;
  }
  report.cross_entropy = mean_loss(a.losses);
  if (!moe_layers_.empty()) moe_report(MoeLayer::read_statistics(a.moe_statistics).data(), report);
  return report;
}

void Llama::moe_report(const double* statistics, LossReport& report) const {
  for (size_t j = 0; j < moe_layers_.size(); ++j) {
    const MoeLayerStats stats = moe_layers_[j].statistics(statistics + j * ops::kMoeStatistics);
    report.aux_loss += stats.load_balance_loss + stats.z_loss;
    report.moe.push_back(stats);
  }
}

void Llama::forward_logits(const FlatBuffer& params, Tensor tokens, Tensor logits, Arena& arena) const {
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  const Weights w = weights(params);
  Activations a = allocate_activations(arena, B, T, params.dtype());
  forward_trunk(w, a, tokens, B, T);
  ops::matmul_forward(logits, a.lnf, w.lm_head);
}

size_t Llama::inference_bytes(int64_t B, int64_t T, DType dtype) const {
  Arena measuring;
  allocate_activations(measuring, B, T, dtype, /*inference=*/true);
  return measuring.peak();
}

void Llama::forward_hidden(const FlatBuffer& params, Tensor tokens, Tensor hidden, Arena& arena,
                           const ResidualObserver& observe) const {
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  L3C_CHECK(params.device() == device_ && arena.device() == device_ && tokens.device == device_ &&
                hidden.device == device_, "Llama::forward_hidden: the model computes on {}; parameters, arena, tokens "
            "and output must live there", device_name(device_));
  const Weights w = weights(params);
  Activations a = allocate_activations(arena, B, T, params.dtype(), /*inference=*/true);
  forward_trunk(w, a, tokens, B, T, observe);
  ops::copy(hidden, a.lnf);
}

void Llama::output_logits(const FlatBuffer& params, Tensor hidden, Tensor logits) const {
  ops::matmul_forward(logits, hidden, weights(params).lm_head);
}

void Llama::lens_logits(const FlatBuffer& params, Tensor resid, Tensor normed, Tensor rstd, Tensor logits) const {
  const Weights w = weights(params);
  ops::rmsnorm_forward(normed, rstd, resid, w.final_norm, config_.norm_eps);
  ops::matmul_forward(logits, normed, w.lm_head);
}

ModelCost Llama::cost(int64_t seq_len) const {
  ModelCost c;
  c.total_params = registry_.total();
  const int64_t k = config_.l3.k;
  int64_t expert_params = 0;
  for (const ParamInfo& p : registry_.params()) {
    auto it = std::find_if(c.params_by_group.begin(), c.params_by_group.end(),
                           [&](const auto& e) { return e.first == p.group; });
    if (it == c.params_by_group.end()) c.params_by_group.emplace_back(p.group, p.numel);
    else it->second += p.numel;
    if (p.group == "l3_table") {
      // A token reads at most k rows of each L3 table, and multiplies all of them: the keys with x,
      // the values with the attention weights (tied tables serve as both).
      const int64_t rows = k * p.shape[1];
      c.active_params += rows;
      c.matmul_params += config_.l3.tie_kv ? 2 * rows : rows;
      continue;
    }
    if (p.group == "experts") {
      expert_params += p.numel;
      continue;
    }
    c.active_params += p.numel;
    // Every 2-D weight multiplies the hidden state except the embedding lookup itself; the output
    // projection counts once, tied or not.
    if (p.shape.size() == 2 && p.group != "embedding") c.matmul_params += p.numel;
  }
  if (config_.tie_embeddings) c.matmul_params += config_.vocab_size * config_.d_model;
  // A token passes through top_k of the E equally sized experts of each MoE layer.
  if (expert_params > 0) {
    const int64_t used = expert_params / config_.moe.experts * config_.moe.top_k;
    c.active_params += used;
    c.matmul_params += used;
  }
  // Attention scores and weighted values: 2 matmuls of (T x hd) per head and layer, 2 FLOPs per
  // multiply-add, x3 for forward + backward; counted over the full (non-causal) square, as PaLM does.
  const double attention = 12.0 * static_cast<double>(config_.n_layers * config_.n_heads * config_.head_dim() * seq_len);
  c.flops_per_token = 6.0 * static_cast<double>(c.matmul_params) + attention;
  return c;
}

}  // namespace l3c
