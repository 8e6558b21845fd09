// Training: the optimizer step (micro-batches with gradient accumulation, the reduction over data-parallel
// ranks, clipping, AdamW, ZeRO-1), validation, and run_training, the whole job (src/train/run_training.cpp, with
// the run folder in run_folder.h and the step log in step_logger.h). `bench` times the same step on synthetic
// tokens.
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "data/dataloader.h"
#include "dist/communicator.h"
#include "kernels/arena.h"
#include "kernels/device.h"
#include "model/llama.h"
#include "model/params.h"
#include "optim/adamw.h"
#include "runtime/device.h"
#include "train/grad_sync.h"

namespace l3c {

// Fills tokens and targets (B, T) with the micro-batch whose first sequence is at global position
// `first_position` of the training order (first_sequence() in src/data/dataloader.h: micro-batch m of
// step s on rank r of R starts at first_sequence(s * accumulation + m, B, r, R)).
using BatchSource = std::function<void(int64_t first_position, Tensor tokens, Tensor targets)>;

struct StepResult {
  double loss = 0.0;       // mean cross-entropy over the step's tokens (of all ranks)
  double aux_loss = 0.0;   // MoE auxiliary losses, mean over the micro-batches (0 without MoE layers)
  double grad_norm = 0.0;  // before clipping
  double lr = 0.0;
  bool skipped = false;    // non-finite loss or gradient with train.on_nonfinite = skip: no update was made
  // Host seconds spent outside the forward and backward passes on whole-buffer work: zeroing the gradients, their
  // reduction over ranks, their norm, clipping and AdamW (on the GPU, the time to queue that work; `l3c bench`
  // reports it on the CPU).
  double update_seconds = 0.0;
  std::vector<MoeLayerStats> moe;  // per MoE layer, averaged over the micro-batches of all ranks
  ReduceReport reduce;     // what the gradient reduction over ranks moved (nothing at world size 1)
};

// Everything one optimizer step touches: model, weights, gradients, AdamW state, the activation arena
// and the batch buffers, all allocated once, on the run's device (train.device: src/runtime/device.h). On the GPU
// the token batches are filled on the host in pinned memory and copied over per micro-batch without waiting, and
// the step reads back once: the loss summed on the device with the gradients' sum of squares (docs/design.md, "What
// a GPU step waits for"); with train.precision bf16 the parameters and activations are bf16, the gradients accumulate in
// f32, and AdamW updates f32 master weights.
//
// Data parallelism: with a communicator of R ranks, train.batch_tokens is the global batch; each rank runs its
// share of the micro-batches (accum_steps() of them), the gradients are summed over ranks (GradientSync), and
// the loss, the MoE statistics and the gradient norm are those of the global batch, the same on every rank.
// With train.zero 1 each rank keeps AdamW moments (and master weights) for its shard of the flat buffer only,
// updates that shard, and the parameters are all-gathered.
class TrainingState {
 public:
  // A model with L3 layers needs an allocation: `l3_allocation` (rows per token id, used by every L3
  // layer), or, when null, the one model.l3.allocation describes (computed or read here). `comm`: the ranks of
  // the run (null: one process).
  explicit TrainingState(const Config& config, const std::vector<int32_t>* l3_allocation = nullptr,
                         Communicator* comm = nullptr);

  StepResult step(int64_t step, const BatchSource& batches);
  // Mean validation loss over `batches` micro-batches from the start of the loader, split over the ranks.
  double evaluate(const WindowLoader& loader, int64_t batches);

  const Llama& model() const { return model_; }
  const RunDevice& run_device() const { return device_; }
  // Replaces L3 layer j's allocation (validated; for reference tests with per-layer allocations).
  void set_l3_allocation(int64_t layer, std::vector<int32_t> counts, const std::string& what) {
    model_.set_l3_allocation(layer, std::move(counts), what);
  }
  // The parameters on the run's device, in its dtype (bf16 with mixed precision).
  FlatBuffer& params() { return params_; }
  Llama& mutable_model() { return model_; }
  AdamW& optimizer() { return optimizer_; }
  // The optimizer as a checkpoint reads and writes it, whole: optimizer() itself, or with ZeRO-1 a host copy of
  // all shards (gather_optimizer fills it from every rank's shard: a collective; scatter_optimizer copies this
  // rank's range back after loading).
  AdamW& io_optimizer();
  void gather_optimizer();
  void scatter_optimizer();
  Communicator& communicator() { return comm_; }
  const GradientSync& gradient_sync() const { return *sync_; }
  // The parameters in host memory, f32 (or f64): params() itself on the CPU; on the GPU a copy of the f32
  // parameters or master weights, refreshed by each call. For saving. With ZeRO-1 master weights a collective.
  const FlatBuffer& host_params();
  // Replaces the parameters with host values (f32, or the run's CPU dtype): on the GPU they are copied over, and
  // with bf16 parameters they become the f32 master weights and their rounded copy.
  void set_params(const FlatBuffer& host);
  int64_t tokens_per_step() const { return tokens_per_step_; }
  int64_t accum_steps() const { return accum_steps_; }

 private:
  // The whole buffer, all-gathered from the ranks' ZeRO-1 shards of `shard` (range() of the optimizer) into
  // `full` (zero_padded_size elements, on the shard's device).
  void gather_shards(const Tensor& shard, FlatBuffer& full);
  // Where micro-batch `micro` of a step is loaded on the host: pinned memory of its own on a GPU, else one buffer.
  std::pair<Tensor, Tensor> host_batch(int64_t micro);

  Config config_;
  LocalCommunicator local_comm_;
  Communicator& comm_;
  RunDevice device_;
  Llama model_;
  DType dtype_;
  // params_ and grads_ hold the registry's elements (padded to a multiple of the world size with ZeRO-1);
  // master_: the f32 weights behind bf16 params_ (mixed precision only; this rank's shard with ZeRO-1).
  FlatBuffer params_, master_, grads_;
  AdamW optimizer_;
  std::unique_ptr<AdamW> io_optimizer_;  // ZeRO-1: the gathered optimizer, in host memory
  std::unique_ptr<GradientSync> sync_;
  FlatBuffer shard_grads_;               // ZeRO-1: the summed gradients of this rank's shard
  Arena arena_;
  std::vector<int32_t> tokens_, targets_;  // the micro-batch on the CPU
  std::vector<uint8_t> trainable_;  // per parameter (registry order), from train.trainable
  DeviceMemory pinned_batches_;  // on a GPU: the step's (tokens, targets) per micro-batch, pinned for the uploads
  FlatBuffer device_tokens_, device_targets_;  // the micro-batch on the GPU
  FlatBuffer step_sums_;  // (4) f64 where the model computes: the step's loss sum, gradient sum of squares, update gate
  FlatBuffer host_copy_;
  int64_t accum_steps_ = 1;
  int64_t tokens_per_step_ = 0;
};

// Which parameters train.trainable selects (per parameter, registry order): an entry names a registry group
// ("attention", "l3_table") or a name prefix ("model.l3.1."); empty selects all. UserError for an entry that
// matches nothing.
std::vector<uint8_t> trainable_mask(const ParamRegistry& registry, const std::vector<std::string>& trainable);

// How `l3c train` starts and stops, beyond the config.
struct TrainOptions {
  std::string resume;     // "": a new run; "auto": the newest valid checkpoint of run.dir (a new run if it has
                          // none and holds no run); else a checkpoint folder
  std::string init_from;  // a checkpoint folder whose weights start a new run
  int64_t stop_at = 0;    // > 0: stop after this step with a checkpoint (the schedule still ends at train.steps)
};

struct TrainSummary {
  int64_t start_step = 0;       // > 0 when resumed
  std::string resumed_from;     // the checkpoint resumed from
  std::string stopped;          // why the run stopped before train.steps ("SIGTERM", "SIGINT", "--stop-at"), or ""
  std::string checkpoint;       // the last checkpoint written
  int64_t skipped_steps = 0;
  int64_t steps = 0;
  int64_t tokens = 0;
  double final_train_loss = 0.0;
  double final_val_loss = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0.0;
  double tokens_per_second = 0.0;
  double mfu = 0.0;
};

// Runs a whole training job as the config says, writing config.json, metrics.jsonl, checkpoints (every
// checkpoint.every steps, at the end, and when stopped) and model.safetensors into run.dir. SIGINT and
// SIGTERM finish the current step, write a checkpoint and return with `stopped` set; a second one ends
// the process at once. With a communicator of several ranks every rank calls it: rank 0 alone writes the run
// folder, a signal to any rank stops all of them after the same step, and a rank whose config, data or binary
// differs from rank 0's is refused before the first step.
TrainSummary run_training(const Config& config, const TrainOptions& options = {});
TrainSummary run_training(const Config& config, const TrainOptions& options, Communicator& comm);

}  // namespace l3c
