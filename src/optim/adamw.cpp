// AdamW update over flat buffers.
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"

#include "kernels/ops.h"

namespace l3c {

AdamW::AdamW(const ParamRegistry& registry, DType dtype, AdamWSettings settings, Device device, BufferRange range)
    : registry_(registry),
      settings_(settings),
      range_(range.size() > 0 ? range : BufferRange{0, registry.total()}),
      m_(range_.size(), dtype, device),
      v_(range_.size(), dtype, device) {
  build_runs({});
}

void AdamW::build_runs(const std::vector<uint8_t>& trainable) {
  runs_.clear();
  const auto& params = registry_.params();
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamInfo& p = params[i];
    if (!trainable.empty() && !trainable[i]) continue;  // frozen: no update, no decay, moments untouched
    const int64_t begin = std::max(p.offset, range_.begin), end = std::min(p.offset + p.numel, range_.end);
    if (begin >= end) continue;  // outside this optimizer's range
    const bool table = p.group == "l3_table";
    const double decay = !p.decay ? 0.0
                         : table && settings_.table_weight_decay >= 0.0 ? settings_.table_weight_decay
                                                                         : settings_.weight_decay;
    const double lr_scale = table ? settings_.table_lr_scale : 1.0;
    if (!runs_.empty() && runs_.back().weight_decay == decay && runs_.back().lr_scale == lr_scale &&
        runs_.back().offset + runs_.back().numel == begin)
      runs_.back().numel += end - begin;
    else
      runs_.push_back({begin, end - begin, decay, lr_scale});
  }
}

void AdamW::step(FlatBuffer& params, const FlatBuffer& grads, double lr, FlatBuffer* master, Tensor gate) {
  step_range(params, grads.all().rows(range_.begin, range_.end), lr,
             master != nullptr ? master->all().rows(range_.begin, range_.end) : Tensor(), gate);
}

void AdamW::step_range(FlatBuffer& params, Tensor range_grads, double lr, Tensor range_master, Tensor gate) {
  L3C_CHECK(range_grads.numel() == range_.size(), "AdamW: {} gradients for a range of {}", range_grads.numel(),
            range_.size());
  const bool has_master = range_master.data != nullptr;
  ++step_;
  // PyTorch order (ops::adamw_update): decoupled decay first, then the moments and the bias-corrected step.
  ops::AdamWStep s;
  s.beta1 = settings_.beta1;
  s.beta2 = settings_.beta2;
  s.eps = settings_.eps;
  s.bias1 = 1.0 - std::pow(settings_.beta1, static_cast<double>(step_));
  s.bias2 = 1.0 - std::pow(settings_.beta2, static_cast<double>(step_));
  const Tensor p = params.all(), m = m_.all(), v = v_.all();
  for (const Run& run : runs_) {
    s.lr = lr * run.lr_scale;
    s.weight_decay = run.weight_decay;
    const int64_t begin = run.offset, end = run.offset + run.numel;  // in the parameters
    const int64_t local_begin = begin - range_.begin, local_end = end - range_.begin;  // in the range
    ops::adamw_update(p.rows(begin, end), range_grads.rows(local_begin, local_end), m.rows(local_begin, local_end),
                      v.rows(local_begin, local_end),
                      has_master ? range_master.rows(local_begin, local_end) : Tensor(), s, gate);
  }
}

}  // namespace l3c
