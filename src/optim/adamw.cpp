// AdamW update and gradient clipping over flat buffers.
#include "optim/adamw.h"

#include <cmath>

#include "kernels/ops.h"

namespace l3c {

AdamW::AdamW(const ParamRegistry& registry, DType dtype, AdamWSettings settings)
    : registry_(registry), settings_(settings), m_(registry.total(), dtype), v_(registry.total(), dtype) {
  for (const ParamInfo& p : registry.params()) decay_mask_.push_back(p.decay ? 1 : 0);
}

namespace {
template <typename T>
void adamw_update(T* __restrict w, const T* __restrict g, T* __restrict m, T* __restrict v, int64_t n,
                  double lr, double weight_decay, const AdamWSettings& s, double bias1, double bias2) {
  const T b1 = static_cast<T>(s.beta1), b2 = static_cast<T>(s.beta2);
  const T step_size = static_cast<T>(lr / bias1);
  const T inv_sqrt_bias2 = static_cast<T>(1.0 / std::sqrt(bias2));
  const T eps = static_cast<T>(s.eps);
  const T decay = static_cast<T>(1.0 - lr * weight_decay);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    // PyTorch order: decoupled decay first, then the moment updates and the bias-corrected step.
    const T wi = w[i] * decay;
    const T mi = b1 * m[i] + (T(1) - b1) * g[i];
    const T vi = b2 * v[i] + (T(1) - b2) * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    w[i] = wi - step_size * mi / (std::sqrt(vi) * inv_sqrt_bias2 + eps);
  }
}
}  // namespace

void AdamW::step(FlatBuffer& params, const FlatBuffer& grads, double lr) {
  ++step_;
  const double bias1 = 1.0 - std::pow(settings_.beta1, static_cast<double>(step_));
  const double bias2 = 1.0 - std::pow(settings_.beta2, static_cast<double>(step_));
  const auto& infos = registry_.params();
  for (size_t i = 0; i < infos.size(); ++i) {
    const ParamInfo& p = infos[i];
    if (!trainable_.empty() && !trainable_[i]) continue;
    const double wd = decay_mask_[i] ? settings_.weight_decay : 0.0;
    if (params.dtype() == DType::F32) {
      adamw_update(params.ptr<float>() + p.offset, grads.ptr<float>() + p.offset, m_.ptr<float>() + p.offset,
                   v_.ptr<float>() + p.offset, p.numel, lr, wd, settings_, bias1, bias2);
    } else {
      adamw_update(params.ptr<double>() + p.offset, grads.ptr<double>() + p.offset, m_.ptr<double>() + p.offset,
                   v_.ptr<double>() + p.offset, p.numel, lr, wd, settings_, bias1, bias2);
    }
  }
}

double global_grad_norm(const FlatBuffer& grads) { return std::sqrt(ops::sum_squares(grads.all())); }

double clip_grad_norm(FlatBuffer& grads, double norm, double max_norm) {
  if (max_norm <= 0.0) return 1.0;
  const double clip = max_norm / (norm + 1e-6);
  if (clip >= 1.0) return 1.0;
  ops::scale_inplace(grads.all(), clip);
  return clip;
}

}  // namespace l3c
