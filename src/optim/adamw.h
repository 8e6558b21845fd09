// AdamW with PyTorch semantics over flat buffers (MODEL.md "Optimizer"), with global-norm clipping through the
// step's update gate (ops::update_gate).
// Moments are fp32 (or f64 when the parameters are f64) buffers with the parameters' layout, on the parameters'
// device; weight decay applies to the parameters whose ParamInfo::decay is set (2-D weights by default). The
// update itself is ops::adamw_update, over runs of consecutive parameters that share a decay setting. With bf16
// parameters (CUDA) the update runs on f32 master weights and writes their rounded copy into the parameters.
// The step's constants (learning rate, bias corrections, decay) live in a small buffer on the moments' device, one
// row per run, rewritten before each update (on a GPU: one asynchronous copy from pinned host memory), so that the
// update's launches take the same arguments at every step.
#pragma once
#include <cstdint>
#include <vector>

#include "core/config.h"
#include "model/params.h"

namespace l3c {

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  // The L3 tables (ParamInfo::group "l3_table"): their own learning-rate factor and weight decay (-1: weight_decay).
  // Each table row only gets gradient from the positions of its token, so its updates are rarer than a dense
  // weight's; these let an experiment give the tables a larger step or no decay between their updates.
  double table_lr_scale = 1.0, table_weight_decay = -1.0;
  static AdamWSettings from(const TrainConfig& train) {
    return {train.beta1, train.beta2, train.eps, train.weight_decay, train.table_lr_scale, train.table_weight_decay};
  }
};

// Elements [begin, end) of the flat buffer: the part of the parameters an optimizer updates (ZeRO-1 shards them
// over ranks; the whole buffer otherwise).
struct BufferRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

class AdamW {
 public:
  // dtype: the moments' dtype (f32 for f32 or bf16 parameters, f64 for f64). `range`: the elements this optimizer
  // updates and keeps moments for (ZeRO-1: this rank's shard); the whole registry when empty.
  AdamW(const ParamRegistry& registry, DType dtype, AdamWSettings settings, Device device = Device::CPU,
        BufferRange range = {});

  // One update with learning rate lr. step_ counts from 1. master: the f32 weights behind bf16 parameters (mixed
  // precision), else null. gate: empty (grads are used as they are), or the step's update gate (ops::update_gate,
  // on the parameters' device): the gradients enter scaled by its clipping factor, and a closed gate leaves
  // everything untouched (call undo_step() once that is known on the host, so that step_ counts updates).
  // On a GPU the step's constants are copied from pinned memory that the next step rewrites: a step that finds no
  // wait for the device since the last one's copy (a training step reads its sums back after the update) waits
  // first, so the copy has been read before the memory changes.
  void step(FlatBuffer& params, const FlatBuffer& grads, double lr, FlatBuffer* master = nullptr,
            Tensor gate = Tensor());
  // The same over range() only: range_grads (range().size()) are the gradients of the range, range_master
  // (range().size(), or empty) its f32 master weights; params is the whole buffer.
  void step_range(FlatBuffer& params, Tensor range_grads, double lr, Tensor range_master = Tensor(),
                  Tensor gate = Tensor());
  // Takes back the count of the last step, whose gate turned out closed (nothing was updated).
  void undo_step() { --step_; }
  const BufferRange& range() const { return range_; }

  int64_t steps_taken() const { return step_; }
  // The moments of range() (the whole buffer unless sharded): element i is the moment of element
  // range().begin + i of the parameters.
  FlatBuffer& first_moment() { return m_; }
  FlatBuffer& second_moment() { return v_; }
  void set_steps_taken(int64_t steps) { step_ = steps; }
  // Per parameter (registry order): 0 freezes it (no update, no weight decay, its moments untouched).
  void set_trainable(const std::vector<uint8_t>& mask) { build_runs(mask); }
  // The last step's constants: ops::kAdamWConstants per run (the update's launches read them there).
  const FlatBuffer& constants() const { return constants_; }

 private:
  const ParamRegistry& registry_;
  AdamWSettings settings_;
  BufferRange range_;
  FlatBuffer m_, v_;
  struct Run {
    int64_t offset, numel;
    double weight_decay, lr_scale;
  };
  // Consecutive trainable parameters with the same weight decay and learning-rate factor, in buffer order, cut to
  // range_.
  std::vector<Run> runs_;
  void build_runs(const std::vector<uint8_t>& trainable);
  int64_t step_ = 0;
  // The runs' constants (ops::AdamWConstants, in the moments' dtype) where the update reads them; on a GPU, written
  // in staging_ (pinned host memory) and copied over, with the count of host waits at that copy.
  FlatBuffer constants_;
  DeviceMemory staging_;
  int64_t waits_at_upload_ = -1;
};

}  // namespace l3c
