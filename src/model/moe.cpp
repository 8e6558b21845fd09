// Mixture-of-Experts FFN: parameters, dropless grouped forward and backward, routing statistics.
#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "kernels/ops.h"

namespace l3c {

namespace {
// The values of an f32 / f64 tensor in host or GPU memory, as doubles in host memory.
std::vector<double> host_values(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::F64) {
    ops::copy(Tensor(out.data(), DType::F64, {t.numel()}), t);
    return out;
  }
  std::vector<float> f32(out.size());
  ops::copy(Tensor(f32.data(), DType::F32, {t.numel()}), t);
  for (size_t i = 0; i < out.size(); ++i) out[i] = f32[i];
  return out;
}

// The rows each expert received: the group sizes of the expert offsets (E + 1), read to the host.
std::vector<int64_t> rows_per_expert(const Tensor& offsets) {
  std::vector<int32_t> host(static_cast<size_t>(offsets.numel()));
  ops::copy(Tensor(host.data(), DType::I32, {offsets.numel()}), offsets);
  std::vector<int64_t> rows(host.size() - 1);
  for (size_t e = 0; e + 1 < host.size(); ++e) rows[e] = host[e + 1] - host[e];
  return rows;
}
}  // namespace

MoeLayer::MoeLayer(const ModelConfig& model, int64_t layer)
    : layer_(layer),
      d_(model.d_model),
      E_(model.moe.experts),
      top_k_(model.moe.top_k),
      F_(model.moe.expert_hidden),
      shared_F_(model.moe.shared_expert_hidden),
      normalize_(model.moe.normalize_topk),
      aux_loss_(model.moe.aux_loss),
      z_loss_(model.moe.z_loss),
      init_std_(model.moe.init_std),
      // Output projections scaled by 1/sqrt(2 * n_layers), as in the dense blocks.
      out_std_(model.moe.init_std / std::sqrt(2.0 * static_cast<double>(model.n_layers))) {
  L3C_CHECK(model.is_moe_layer(layer), "decoder layer {} is not an MoE layer", layer);
}

std::string MoeLayer::name(const std::string& suffix) const {
  return fmt::format("model.layers.{}.block_sparse_moe.{}", layer_, suffix);
}

std::string MoeLayer::expert_name(int64_t expert, const char* projection) const {
  return name(fmt::format("experts.{}.{}.weight", expert, projection));
}

void MoeLayer::register_params(ParamRegistry& registry) const {
  registry.add(name("gate.weight"), {E_, d_}, InitKind::Normal, init_std_, "router");
  for (int64_t e = 0; e < E_; ++e) registry.add(expert_name(e, "w1"), {F_, d_}, InitKind::Normal, init_std_, "experts");
  for (int64_t e = 0; e < E_; ++e) registry.add(expert_name(e, "w3"), {F_, d_}, InitKind::Normal, init_std_, "experts");
  for (int64_t e = 0; e < E_; ++e) registry.add(expert_name(e, "w2"), {d_, F_}, InitKind::Normal, out_std_, "experts");
  if (shared_F_ > 0) {
    registry.add(name("shared_expert.gate_proj.weight"), {shared_F_, d_}, InitKind::Normal, init_std_, "shared_expert");
    registry.add(name("shared_expert.up_proj.weight"), {shared_F_, d_}, InitKind::Normal, init_std_, "shared_expert");
    registry.add(name("shared_expert.down_proj.weight"), {d_, shared_F_}, InitKind::Normal, out_std_, "shared_expert");
  }
}

MoeLayer::Weights MoeLayer::weights(const FlatBuffer& buffer, const ParamRegistry& registry) const {
  // One projection of all experts as an (E, rows, cols) view starting at expert 0's tensor; the
  // registration order makes the E tensors adjacent.
  auto stacked = [&](const char* projection, int64_t rows, int64_t cols) {
    const ParamInfo& first = registry.find(expert_name(0, projection));
    const ParamInfo& last = registry.find(expert_name(E_ - 1, projection));
    L3C_CHECK(last.offset == first.offset + (E_ - 1) * rows * cols, "{}: expert tensors are not contiguous",
              name(projection));
    return Tensor(static_cast<std::byte*>(buffer.all().data) + first.offset * dtype_size(buffer.dtype()),
                  buffer.dtype(), {E_, rows, cols}, buffer.all().device);
  };
  Weights w;
  w.router = buffer.view(registry.find(name("gate.weight")));
  w.w1 = stacked("w1", F_, d_);
  w.w3 = stacked("w3", F_, d_);
  w.w2 = stacked("w2", d_, F_);
  if (shared_F_ > 0) {
    w.shared_gate = buffer.view(registry.find(name("shared_expert.gate_proj.weight")));
    w.shared_up = buffer.view(registry.find(name("shared_expert.up_proj.weight")));
    w.shared_down = buffer.view(registry.find(name("shared_expert.down_proj.weight")));
  }
  return w;
}

MoeLayer::Activations MoeLayer::allocate_activations(Arena& arena, int64_t N, DType dtype) const {
  const int64_t M = N * top_k_;
  Activations a;
  a.logits = arena.alloc(dtype, {N, E_});
  a.probs = arena.alloc(dtype, {N, E_});
  a.lse = arena.alloc(dtype, {N});
  a.experts = arena.alloc(DType::I32, {N, top_k_});
  a.weights = arena.alloc(dtype, {N, top_k_});
  a.order = arena.alloc(DType::I32, {M});
  a.expert_offsets = arena.alloc(DType::I32, {E_ + 1});
  a.token_of_row = arena.alloc(DType::I32, {M});
  a.row_of_pair = arena.alloc(DType::I32, {M});
  a.x_rows = arena.alloc(dtype, {M, d_});
  a.gate = arena.alloc(dtype, {M, F_});
  a.up = arena.alloc(dtype, {M, F_});
  a.act = arena.alloc(dtype, {M, F_});
  a.y_rows = arena.alloc(dtype, {M, d_});
  if (shared_F_ > 0) {
    a.shared_gate = arena.alloc(dtype, {N, shared_F_});
    a.shared_up = arena.alloc(dtype, {N, shared_F_});
    a.shared_act = arena.alloc(dtype, {N, shared_F_});
  }
  a.probs_mean = arena.alloc(dtype, {E_});
  return a;
}

MoeLayer::Scratch MoeLayer::allocate_scratch(Arena& arena, int64_t N, DType dtype) const {
  const int64_t M = N * top_k_;
  Scratch s;
  s.dy_rows = arena.alloc(dtype, {M, d_});
  s.dx_rows = arena.alloc(dtype, {M, d_});
  s.dact = arena.alloc(dtype, {M, F_});
  s.dgate = arena.alloc(dtype, {M, F_});
  s.dup = arena.alloc(dtype, {M, F_});
  s.dweights = arena.alloc(dtype, {N, top_k_});
  s.dlogits = arena.alloc(dtype, {N, E_});
  s.probs_bias = arena.alloc(dtype, {E_});
  if (shared_F_ > 0) {
    s.dshared_act = arena.alloc(dtype, {N, shared_F_});
    s.dshared_gate = arena.alloc(dtype, {N, shared_F_});
    s.dshared_up = arena.alloc(dtype, {N, shared_F_});
  }
  return s;
}

MoeLayerStats MoeLayer::forward(const Weights& w, Activations& a, Tensor x, Tensor out) const {
  const int64_t N = x.numel() / d_, M = N * top_k_;
  // routing: probabilities, top-k experts and weights, then the pairs grouped by expert
  ops::matmul_forward(a.logits, x, w.router);
  ops::moe_router_forward(a.probs, a.lse, a.experts, a.weights, a.logits, normalize_);
  ops::group_by_key(a.order, a.expert_offsets, a.experts.view({M}));
  ops::moe_pair_indices(a.token_of_row, a.row_of_pair, a.order, top_k_);
  // every expert's SwiGLU on its rows, as grouped products
  ops::gather_rows(a.x_rows, x, a.token_of_row);
  ops::grouped_matmul_forward(a.gate, a.x_rows, w.w1, a.expert_offsets);
  ops::grouped_matmul_forward(a.up, a.x_rows, w.w3, a.expert_offsets);
  ops::swiglu_forward(a.act, a.gate, a.up);
  ops::grouped_matmul_forward(a.y_rows, a.act, w.w2, a.expert_offsets);
  // out += sum_s w_s y_s, in token order
  ops::moe_combine_forward(out, a.y_rows, a.weights, a.row_of_pair, /*accumulate=*/true);
  if (shared_F_ > 0) {
    ops::matmul_forward(a.shared_gate, x, w.shared_gate);
    ops::matmul_forward(a.shared_up, x, w.shared_up);
    ops::swiglu_forward(a.shared_act, a.shared_gate, a.shared_up);
    ops::matmul_forward(out, a.shared_act, w.shared_down, /*accumulate=*/true);
  }

  // Auxiliary losses and load statistics, read to the host (E + 1 offsets, E means, the (N, E) probabilities).
  MoeLayerStats stats;
  stats.layer = layer_;
  ops::column_sum(a.probs_mean, a.probs);
  ops::scale_inplace(a.probs_mean, 1.0 / static_cast<double>(std::max<int64_t>(N, 1)));
  a.expert_rows = rows_per_expert(a.expert_offsets);
  const std::vector<int64_t>& rows = a.expert_rows;
  const std::vector<double> probs_mean = host_values(a.probs_mean);
  double balance = 0.0;
  stats.load_min = N > 0 ? 1.0 : 0.0;
  for (int64_t e = 0; e < E_; ++e) {
    const double assigned = static_cast<double>(rows[e]);
    const double f = M > 0 ? assigned / static_cast<double>(M) : 0.0;  // f_e: share of the N * top_k pairs
    balance += f * probs_mean[e];
    const double load = N > 0 ? assigned / static_cast<double>(N) : 0.0;  // share of tokens reaching e
    stats.load_max = std::max(stats.load_max, load);
    stats.load_min = std::min(stats.load_min, load);
  }
  stats.load_balance_loss = aux_loss_ * static_cast<double>(E_) * balance;
  stats.z_loss = N > 0 ? z_loss_ * ops::sum_squares(a.lse) / static_cast<double>(N) : 0.0;
  double entropy = 0.0;
  for (const double p : host_values(a.probs))
    if (p > 0.0) entropy -= p * std::log(p);
  stats.router_entropy = N > 0 ? entropy / static_cast<double>(N) : 0.0;
  return stats;
}

void MoeLayer::backward(const Weights& w, const Weights& g, const Activations& a, Scratch& s, Tensor x, Tensor dout,
                        Tensor dx, double aux_scale) const {
  const int64_t N = dout.numel() / d_, M = N * top_k_;
  // combine: each pair's output row and routing weight
  ops::moe_combine_backward(s.dy_rows, s.dweights, dout, a.y_rows, a.weights, a.row_of_pair);
  // the experts' SwiGLU, grouped
  ops::grouped_matmul_backward(s.dact, g.w2, s.dy_rows, a.act, w.w2, a.expert_offsets);
  ops::swiglu_backward(s.dgate, s.dup, s.dact, a.gate, a.up);
  ops::grouped_matmul_backward(s.dx_rows, g.w1, s.dgate, a.x_rows, w.w1, a.expert_offsets);
  ops::grouped_matmul_backward(s.dx_rows, g.w3, s.dup, a.x_rows, w.w3, a.expert_offsets, /*accumulate_dx=*/true);
  // the dispatch gather: each token's top_k row gradients summed back into dx
  ops::moe_combine_forward(dx, s.dx_rows, Tensor(), a.row_of_pair, /*accumulate=*/false);

  // router: through the weights, plus the load-balancing term (f_e fixed: d/dp_{n,e} of
  // alpha E sum_e f_e P_e is alpha E f_e / N) and the z-loss (beta / N * sum_n lse_n^2)
  const std::vector<int64_t>& rows = a.expert_rows;  // f_e, as the forward counted it
  const double n_tokens = static_cast<double>(std::max<int64_t>(N, 1));
  std::vector<double> bias(static_cast<size_t>(E_));
  for (int64_t e = 0; e < E_; ++e) {
    const double f = M > 0 ? static_cast<double>(rows[e]) / static_cast<double>(M) : 0.0;
    bias[e] = aux_scale * aux_loss_ * static_cast<double>(E_) * f / n_tokens;
  }
  if (s.probs_bias.dtype == DType::F64) {
    ops::copy(s.probs_bias, Tensor(bias.data(), DType::F64, {E_}));
  } else {
    std::vector<float> f32(bias.begin(), bias.end());
    ops::copy(s.probs_bias, Tensor(f32.data(), DType::F32, {E_}));
  }
  ops::moe_router_backward(s.dlogits, s.dweights, a.probs, a.lse, a.experts, a.weights, s.probs_bias,
                           aux_scale * z_loss_ / n_tokens, normalize_);
  ops::matmul_backward(dx, g.router, s.dlogits, x, w.router, /*accumulate_dx=*/true);
  if (shared_F_ > 0) {
    ops::matmul_backward(s.dshared_act, g.shared_down, dout, a.shared_act, w.shared_down);
    ops::swiglu_backward(s.dshared_gate, s.dshared_up, s.dshared_act, a.shared_gate, a.shared_up);
    ops::matmul_backward(dx, g.shared_gate, s.dshared_gate, x, w.shared_gate, /*accumulate_dx=*/true);
    ops::matmul_backward(dx, g.shared_up, s.dshared_up, x, w.shared_up, /*accumulate_dx=*/true);
  }
}

}  // namespace l3c
