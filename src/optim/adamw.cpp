// AdamW update and gradient clipping over flat buffers.
#include "optim/adamw.h"

#include <cmath>

#include "kernels/ops.h"

namespace l3c {

AdamW::AdamW(const ParamRegistry& registry, DType dtype, AdamWSettings settings, Device device)
    : registry_(registry),
      settings_(settings),
      m_(registry.total(), dtype, device),
      v_(registry.total(), dtype, device) {
  build_runs({});
}

void AdamW::build_runs(const std::vector<uint8_t>& trainable) {
  runs_.clear();
  const auto& params = registry_.params();
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamInfo& p = params[i];
    if (!trainable.empty() && !trainable[i]) continue;  // frozen: no update, no decay, moments untouched
    const bool table = p.group == "l3_table";
    const double decay = !p.decay ? 0.0
                         : table && settings_.table_weight_decay >= 0.0 ? settings_.table_weight_decay
                                                                         : settings_.weight_decay;
    const double lr_scale = table ? settings_.table_lr_scale : 1.0;
    Run& last = runs_.empty() ? runs_.emplace_back(Run{p.offset, 0, decay, lr_scale}) : runs_.back();
    if (last.weight_decay == decay && last.lr_scale == lr_scale && last.offset + last.numel == p.offset)
      last.numel += p.numel;
    else
      runs_.push_back({p.offset, p.numel, decay, lr_scale});
  }
}

void AdamW::step(FlatBuffer& params, const FlatBuffer& grads, double lr, FlatBuffer* master) {
  ++step_;
  // PyTorch order (ops::adamw_update): decoupled decay first, then the moments and the bias-corrected step.
  ops::AdamWStep s;
  s.beta1 = settings_.beta1;
  s.beta2 = settings_.beta2;
  s.eps = settings_.eps;
  s.bias1 = 1.0 - std::pow(settings_.beta1, static_cast<double>(step_));
  s.bias2 = 1.0 - std::pow(settings_.beta2, static_cast<double>(step_));
  const Tensor p = params.all(), g = grads.all(), m = m_.all(), v = v_.all();
  const Tensor w = master != nullptr ? master->all() : Tensor();
  for (const Run& run : runs_) {
    s.lr = lr * run.lr_scale;
    s.weight_decay = run.weight_decay;
    const int64_t begin = run.offset, end = run.offset + run.numel;
    ops::adamw_update(p.rows(begin, end), g.rows(begin, end), m.rows(begin, end), v.rows(begin, end),
                      master != nullptr ? w.rows(begin, end) : Tensor(), s);
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
