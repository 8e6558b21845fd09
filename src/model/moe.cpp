// Mixture-of-Experts FFN: parameters, dropless grouped forward and backward, routing statistics.
#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "kernels/ops.h"

namespace l3c {

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
  return allocate_activations(arena, N, dtype, arena.alloc(ops::statistics_dtype(dtype), {ops::kMoeStatistics}));
}

MoeLayer::Activations MoeLayer::allocate_activations(Arena& arena, int64_t N, DType dtype, Tensor statistics) const {
  const int64_t M = N * top_k_;
  const DType stats = ops::statistics_dtype(dtype);  // softmax, weights, lse (ops.h)
  Activations a;
  a.logits = arena.alloc(dtype, {N, E_});
  a.probs = arena.alloc(stats, {N, E_});
  a.lse = arena.alloc(stats, {N});
  a.experts = arena.alloc(DType::I32, {N, top_k_});
  a.weights = arena.alloc(stats, {N, top_k_});
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
  a.statistics = statistics;
  L3C_CHECK(a.statistics.numel() == ops::kMoeStatistics && a.statistics.dtype == stats,
            "{}: the routing statistics need ({}) {}, got {} {}", name("statistics"), ops::kMoeStatistics,
            dtype_name(stats), a.statistics.shape_string(), dtype_name(a.statistics.dtype));
  return a;
}

MoeLayer::Scratch MoeLayer::allocate_scratch(Arena& arena, int64_t N, DType dtype) const {
  const int64_t M = N * top_k_;
  const DType stats = ops::statistics_dtype(dtype);
  Scratch s;
  s.dy_rows = arena.alloc(dtype, {M, d_});
  s.dx_rows = arena.alloc(dtype, {M, d_});
  s.dact = arena.alloc(dtype, {M, F_});
  s.dgate = arena.alloc(dtype, {M, F_});
  s.dup = arena.alloc(dtype, {M, F_});
  s.dweights = arena.alloc(stats, {N, top_k_});
  s.dlogits = arena.alloc(dtype, {N, E_});
  s.probs_bias = arena.alloc(stats, {E_});
  if (shared_F_ > 0) {
    s.dshared_act = arena.alloc(dtype, {N, shared_F_});
    s.dshared_gate = arena.alloc(dtype, {N, shared_F_});
    s.dshared_up = arena.alloc(dtype, {N, shared_F_});
  }
  return s;
}

void MoeLayer::forward(const Weights& w, Activations& a, Tensor x, Tensor out) const {
  const int64_t N = x.numel() / d_, M = N * top_k_;
  // routing: probabilities, top-k experts and weights, then the pairs grouped by expert (the router's experts
  // are in range by construction: no check that would wait for the device)
  ops::matmul_forward(a.logits, x, w.router);
  ops::moe_router_forward(a.probs, a.lse, a.experts, a.weights, a.logits, normalize_);
  ops::group_by_key(a.order, a.expert_offsets, a.experts.view({M}), ops::KeyCheck::Trusted);
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
  // the auxiliary losses and load statistics, reduced where the routing lives
  ops::moe_routing_stats(a.statistics, a.probs, a.lse, a.expert_offsets);
}

MoeLayerStats MoeLayer::statistics(const double* values) const {
  MoeLayerStats stats;
  stats.layer = layer_;
  stats.load_balance_loss = aux_loss_ * static_cast<double>(E_) * values[0];
  stats.z_loss = z_loss_ * values[1];
  stats.load_max = values[2];
  stats.load_min = values[3];
  stats.router_entropy = values[4];
  return stats;
}

std::vector<double> MoeLayer::read_statistics(const Tensor& statistics) {
  const int64_t n = statistics.numel();
  std::vector<double> values(static_cast<size_t>(n));
  if (statistics.dtype == DType::F64) {
    ops::copy(Tensor(values.data(), DType::F64, {n}), statistics.view({n}));
  } else {
    std::vector<float> f32(values.size());
    ops::copy(Tensor(f32.data(), DType::F32, {n}), statistics.view({n}));
    std::copy(f32.begin(), f32.end(), values.begin());
  }
  return values;
}

MoeLayerStats MoeLayer::statistics(const Activations& a) const {
  return statistics(read_statistics(a.statistics).data());
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

  // router: through the weights, plus the load-balancing term (f_e = rows_e / M fixed: d/dp_{n,e} of
  // alpha E sum_e f_e P_e is alpha E f_e / N, computed from the expert offsets on the device) and the z-loss
  // (beta / N * sum_n lse_n^2)
  const double n_tokens = static_cast<double>(std::max<int64_t>(N, 1));
  const double n_pairs = static_cast<double>(std::max<int64_t>(M, 1));
  ops::moe_balance_bias(s.probs_bias, a.expert_offsets,
                        aux_scale * aux_loss_ * static_cast<double>(E_) / (n_pairs * n_tokens));
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
