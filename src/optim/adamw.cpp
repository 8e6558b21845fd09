// AdamW update over flat buffers.
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"
#include "kernels/device.h"
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
  const int64_t values = static_cast<int64_t>(runs_.size()) * ops::kAdamWConstants;
  constants_ = FlatBuffer(values, m_.dtype(), m_.device());
  if (m_.device() == Device::CUDA)
    staging_ = DeviceMemory(static_cast<size_t>(values) * dtype_size(m_.dtype()), MemoryKind::PinnedHost,
                            "AdamW's constants");
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
  // Every run's constants, written on the host in one block (on a GPU, into the pinned staging memory once the
  // device has read the last step's copy from it) and copied to the device in one asynchronous copy.
  const bool on_gpu = constants_.device() == Device::CUDA;
  if (on_gpu && waits_at_upload_ == cuda_host_synchronizations()) cuda_synchronize();
  const Tensor host_constants = on_gpu ? Tensor(staging_.data(), constants_.dtype(), {constants_.numel()})
                                       : constants_.all();
  const int64_t k = ops::kAdamWConstants;
  for (size_t r = 0; r < runs_.size(); ++r) {
    s.lr = lr * runs_[r].lr_scale;
    s.weight_decay = runs_[r].weight_decay;
    const int64_t row = static_cast<int64_t>(r) * k;
    ops::write_adamw_constants(host_constants.rows(row, row + k), s);
  }
  if (on_gpu && !runs_.empty()) {
    cuda_upload_async(constants_.all().data, host_constants.data, host_constants.bytes());
    waits_at_upload_ = cuda_host_synchronizations();
  }
  const Tensor p = params.all(), m = m_.all(), v = v_.all(), constants = constants_.all();
  for (size_t r = 0; r < runs_.size(); ++r) {
    const Run& run = runs_[r];
    const int64_t begin = run.offset, end = run.offset + run.numel;  // in the parameters
    const int64_t local_begin = begin - range_.begin, local_end = end - range_.begin;  // in the range
    const int64_t row = static_cast<int64_t>(r) * k;
    ops::adamw_update(p.rows(begin, end), range_grads.rows(local_begin, local_end), m.rows(local_begin, local_end),
                      v.rows(local_begin, local_end),
                      has_master ? range_master.rows(local_begin, local_end) : Tensor(), constants.rows(row, row + k),
                      gate);
  }
}

}  // namespace l3c
