// The Large Lookup Layer: parameters, forward and backward in grouped order.
#include "model/l3.h"

#include <fmt/format.h>

#include "kernels/ops.h"

namespace l3c {

L3Rows L3Rows::from_counts(std::vector<int32_t> counts) {
  L3Rows rows;
  rows.row_offsets.assign(counts.size() + 1, 0);
  for (size_t u = 0; u < counts.size(); ++u) rows.row_offsets[u + 1] = rows.row_offsets[u] + counts[u];
  rows.counts = std::move(counts);
  return rows;
}

Tensor L3Rows::offsets_tensor(Device device) const {
  if (device == Device::CPU)
    return Tensor(const_cast<int32_t*>(row_offsets.data()), DType::I32, {static_cast<int64_t>(row_offsets.size())});
  L3C_CHECK(device_offsets && device_offsets->device() == device, "L3 row offsets not uploaded to the {} device",
            device_name(device));
  return device_offsets->all();
}

void L3Rows::upload(Device device) {
  if (device == Device::CPU || empty()) return;
  device_offsets = std::make_shared<FlatBuffer>(static_cast<int64_t>(row_offsets.size()), DType::I32, device);
  ops::copy(device_offsets->all(), offsets_tensor(Device::CPU));
}

L3Layer::L3Layer(const ModelConfig& model, int64_t index)
    : index_(index),
      after_layer_(model.l3.after_layers.at(static_cast<size_t>(index))),
      d_(model.d_model),
      v_(model.l3.v),
      k_(model.l3.k),
      d_emb_(model.l3.d_emb),
      d_up_(model.l3.d_up),
      tie_kv_(model.l3.tie_kv),
      residual_(model.l3.residual),
      mix_identity_(model.l3.mix_init == MixInit::Identity),
      init_std_(model.l3.init_std),
      eps_(model.norm_eps) {
  L3C_CHECK(d_emb_ > 0 && d_up_ > 0, "model.l3 sizes not resolved: d_emb {}, d_up {}", d_emb_, d_up_);
  L3C_CHECK(!tie_kv_ || d_emb_ == d_, "tie_kv needs d_emb == d_model");
}

std::string L3Layer::name(const std::string& suffix) const { return fmt::format("model.l3.{}.{}", index_, suffix); }

void L3Layer::register_params(ParamRegistry& registry) const {
  registry.add(name("norm_in.weight"), {d_}, InitKind::Ones, 0, "norm");
  registry.add(name("w_k"), {v_, d_}, InitKind::Normal, init_std_, "l3_table");
  if (!tie_kv_) registry.add(name("w_v"), {v_, d_emb_}, InitKind::Normal, init_std_, "l3_table");
  registry.add(name("w_up.weight"), {d_up_, d_emb_}, InitKind::Normal, init_std_, "l3");
  registry.add(name("norm_out.weight"), {d_up_}, InitKind::Ones, 0, "norm");
  // W_mix (d, d_up + d) multiplies [z ; h]: its h-part is columns [d_up, d_up + d).
  if (mix_identity_)
    registry.add_normal_identity(name("w_mix.weight"), d_, d_up_ + d_, /*identity_column=*/d_up_, init_std_, "l3");
  else
    registry.add(name("w_mix.weight"), {d_, d_up_ + d_}, InitKind::Normal, init_std_, "l3");
}

L3Layer::Weights L3Layer::weights(const FlatBuffer& buffer, const ParamRegistry& registry) const {
  auto get = [&](const std::string& suffix) { return buffer.view(registry.find(name(suffix))); };
  Weights w;
  w.norm_in = get("norm_in.weight");
  w.w_k = get("w_k");
  w.w_v = tie_kv_ ? w.w_k : get("w_v");
  w.w_up = get("w_up.weight");
  w.norm_out = get("norm_out.weight");
  w.w_mix = get("w_mix.weight");
  return w;
}

L3Layer::Activations L3Layer::allocate_activations(Arena& arena, int64_t N, DType dtype) const {
  const DType stats = ops::statistics_dtype(dtype);
  Activations a;
  a.h = arena.alloc(dtype, {N, d_});
  a.x = arena.alloc(dtype, {N, d_});
  a.rstd_in = arena.alloc(stats, {N});
  a.probs = arena.alloc(stats, {N, k_});
  a.e = arena.alloc(dtype, {N, d_emb_});
  a.u = arena.alloc(dtype, {N, d_up_});
  a.z = arena.alloc(dtype, {N, d_up_});
  a.rstd_out = arena.alloc(stats, {N});
  a.zh = arena.alloc(dtype, {N, d_up_ + d_});
  a.out = arena.alloc(dtype, {N, d_});
  return a;
}

L3Layer::Scratch L3Layer::allocate_scratch(Arena& arena, int64_t N, DType dtype) const {
  Scratch s;
  s.dout = arena.alloc(dtype, {N, d_});
  s.dzh = arena.alloc(dtype, {N, d_up_ + d_});
  s.dz = arena.alloc(dtype, {N, d_up_});
  s.du = arena.alloc(dtype, {N, d_up_});
  s.de = arena.alloc(dtype, {N, d_emb_});
  s.dx = arena.alloc(dtype, {N, d_});
  s.dh = arena.alloc(dtype, {N, d_});
  return s;
}

void L3Layer::forward(const Weights& w, Activations& a, Tensor h, const L3Routing& routing, const L3Rows& rows) const {
  L3C_CHECK(!rows.empty(), "L3 layer {}: no allocation set", index_);
  forward(w, a, h, routing, rows.offsets_tensor(h.device));
}

void L3Layer::forward(const Weights& w, Activations& a, Tensor h, const L3Routing& routing, Tensor row_offsets) const {
  const int64_t N = routing.order.numel();
  Tensor hn = h.view({N, d_});
  ops::gather_rows(a.h, hn, routing.order);                              // (N, d), grouped by token
  ops::rmsnorm_forward(a.x, a.rstd_in, a.h, w.norm_in, eps_);
  ops::l3_lookup_forward(a.e, a.probs, a.x, w.w_k, w.w_v, routing.group_offsets, row_offsets);
  ops::matmul_forward(a.u, a.e, w.w_up);                                 // (N, d_up)
  ops::rmsnorm_forward(a.z, a.rstd_out, a.u, w.norm_out, eps_);
  ops::concat_last_dim(a.zh, a.z, a.h);                                  // (N, d_up + d), z first
  if (residual_) ops::copy(a.out, a.h);
  ops::matmul_forward(a.out, a.zh, w.w_mix, /*accumulate=*/residual_);  // (N, d)
  ops::scatter_rows(hn, a.out, routing.order);                           // back to position order
}

void L3Layer::backward(const Weights& w, const Weights& g, const Activations& a, Scratch& s, Tensor dh,
                       const L3Routing& routing, const L3Rows& rows) const {
  const int64_t N = routing.order.numel();
  Tensor dhn = dh.view({N, d_});
  ops::gather_rows(s.dout, dhn, routing.order);                          // d/d h', grouped
  ops::matmul_backward(s.dzh, g.w_mix, s.dout, a.zh, w.w_mix);           // d/d [z ; h]
  ops::split_last_dim(s.dz, s.dh, s.dzh);                                // s.dh: the skip through W_mix
  if (residual_) ops::add_inplace(s.dh, s.dout);
  ops::fill_zero(s.du);
  ops::rmsnorm_backward(s.du, g.norm_out, s.dz, a.u, w.norm_out, a.rstd_out);
  ops::matmul_backward(s.de, g.w_up, s.du, a.e, w.w_up);
  ops::l3_lookup_backward(s.dx, g.w_k, g.w_v, s.de, a.x, w.w_k, w.w_v, a.probs, routing.group_offsets,
                          rows.offsets_tensor(dh.device));
  ops::rmsnorm_backward(s.dh, g.norm_in, s.dx, a.h, w.norm_in, a.rstd_in);  // accumulates into s.dh
  ops::scatter_rows(dhn, s.dh, routing.order);                           // d/d h, position order
}

}  // namespace l3c
