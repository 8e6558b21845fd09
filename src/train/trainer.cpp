// The training state: one optimizer step over the micro-batches of every rank, validation, and the parameters
// and optimizer as checkpoints see them.
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/checked.h"
#include "core/errors.h"
#include "data/allocation.h"
#include "eval/loss.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "optim/schedule.h"
#include "runtime/memory.h"

namespace l3c {

namespace {

// The number of elements the parameter and gradient buffers hold: the registry's, padded for ZeRO-1.
int64_t buffer_elements(const Config& config, const ParamRegistry& registry, const Communicator& comm) {
  const bool sharded = config.train.zero == 1 && comm.size() > 1;
  return sharded ? zero_padded_size(registry.total(), comm.size()) : registry.total();
}
BufferRange optimizer_range(const Config& config, const ParamRegistry& registry, const Communicator& comm) {
  const bool sharded = config.train.zero == 1 && comm.size() > 1;
  return sharded ? zero_shard(registry.total(), comm.rank(), comm.size()) : BufferRange{0, registry.total()};
}

// The model as the run computes it: on its device, with its recomputation setting.
Llama make_model(const Config& config, Device device) {
  Llama model(config.model);
  model.set_recompute(Recompute::from(config.train.recompute));
  model.set_device(device);
  return model;
}

// Queues the copy of the host batch (pinned memory) to the device buffers when the model computes on the GPU,
// in order with the ops and without waiting; returns what to pass on.
std::pair<Tensor, Tensor> batch_on_device(Tensor tokens, Tensor targets, const FlatBuffer& device_tokens,
                                          const FlatBuffer& device_targets) {
  if (device_tokens.numel() == 0) return {tokens, targets};
  const int64_t n = tokens.numel();
  Tensor t = device_tokens.all().rows(0, n).view({tokens.dim(0), tokens.dim(1)});
  Tensor g = device_targets.all().rows(0, n).view({targets.dim(0), targets.dim(1)});
  cuda_upload_async(t.data, tokens.data, tokens.bytes());
  cuda_upload_async(g.data, targets.data, targets.bytes());
  return {t, g};
}
}  // namespace

TrainingState::TrainingState(const Config& config, const std::vector<int32_t>* l3_allocation, Communicator* comm)
    : config_(config),
      comm_(comm != nullptr ? *comm : local_comm_),
      device_(resolve_run_device(config.train)),
      model_(make_model(config, device_.device)),
      dtype_(device_.param_dtype),
      params_(buffer_elements(config, model_.registry(), comm_), dtype_, device_.device),
      grads_(buffer_elements(config, model_.registry(), comm_), device_.grad_dtype, device_.device),
      optimizer_(model_.registry(), device_.moment_dtype, AdamWSettings::from(config.train), device_.device,
                 optimizer_range(config, model_.registry(), comm_)),
      arena_(model_.activation_bytes(config.train.micro_batch, config.data.seq_len, dtype_, true), "activation",
             device_.device) {
  const int64_t total = model_.registry().total();
  init_params(model_.registry(), params_, config.train.seed);
  if (device_.mixed_precision) {
    // The f32 master weights of this rank's range: all of them, or its ZeRO-1 shard.
    const BufferRange range = optimizer_.range();
    FlatBuffer full(total, DType::F32, device_.device);
    init_params(model_.registry(), full, config.train.seed);
    master_ = FlatBuffer(range.size(), DType::F32, device_.device);
    ops::copy(master_.all(), full.all().rows(range.begin, range.end));
  }
  if (config.model.l3.enabled()) {
    if (l3_allocation) model_.set_l3_allocations(*l3_allocation, "the L3 allocation");
    else model_.set_l3_allocations(allocation_for_model(config.model).counts, "model.l3.allocation");
  }
  const int64_t micro_tokens = config.train.micro_batch * config.data.seq_len;
  // train.batch_tokens is the global batch: each of the ranks accumulates its share of the micro-batches.
  const int64_t ranks = comm_.size();
  if (config.train.batch_tokens % (micro_tokens * ranks) != 0)
    fail("train.batch_tokens ({}) must be a multiple of train.micro_batch * data.seq_len * ranks ({} x {} x {} = {}): "
         "the global batch is split evenly over the {} ranks", config.train.batch_tokens, config.train.micro_batch,
         config.data.seq_len, ranks, micro_tokens * ranks, ranks);
  accum_steps_ = config.train.grad_accum_steps(config.data.seq_len, ranks);
  // [0] the gradients' sum of squares, [1] the loss sum, the MoE statistics, then the update gate (2): see step().
  step_sums_ = FlatBuffer(4 + static_cast<int64_t>(model_.moe_layers().size()) * ops::kMoeStatistics, DType::F64,
                          device_.device);
  if (device_.device == Device::CUDA) {
    // Every micro-batch of a step has its own pinned tokens and targets, so that no upload waits: the host fills
    // micro-batch m + 1 while the copy of m may still be queued, and the step's read-back (which follows every
    // upload on the stream) is passed before the next step writes them again.
    const size_t bytes = static_cast<size_t>(checked_mul(checked_mul(accum_steps_, micro_tokens, "the step's tokens"),
                                                         static_cast<int64_t>(2 * sizeof(int32_t)), "the step's tokens"));
    pinned_batches_ = DeviceMemory(bytes, MemoryKind::PinnedHost, "the step's tokens and targets");
    device_tokens_ = FlatBuffer(micro_tokens, DType::I32, Device::CUDA);
    device_targets_ = FlatBuffer(micro_tokens, DType::I32, Device::CUDA);
    cuda_reserve_workspace(cuda_workspace_bytes(workspace_shape(config, dtype_)));
  } else {
    tokens_.resize(static_cast<size_t>(micro_tokens));
    targets_.resize(static_cast<size_t>(micro_tokens));
  }
  tokens_per_step_ = accum_steps_ * micro_tokens * ranks;
  if (!config.train.trainable.empty()) {
    trainable_ = trainable_mask(model_.registry(), config.train.trainable);
    optimizer_.set_trainable(trainable_);
  }
  sync_ = std::make_unique<GradientSync>(comm_, model_, config_);
  if (sync_->sharded()) shard_grads_ = FlatBuffer(optimizer_.range().size(), device_.grad_dtype, device_.device);
}

std::vector<uint8_t> trainable_mask(const ParamRegistry& registry, const std::vector<std::string>& trainable) {
  const auto& params = registry.params();
  std::vector<uint8_t> mask(params.size(), trainable.empty() ? 1 : 0);
  for (const std::string& entry : trainable) {
    bool matched = false;
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].group == entry || params[i].name.rfind(entry, 0) == 0) mask[i] = 1, matched = true;
    if (!matched) {
      std::vector<std::string> groups;
      for (const ParamInfo& p : params)
        if (std::find(groups.begin(), groups.end(), p.group) == groups.end()) groups.push_back(p.group);
      std::string group_list;
      for (const std::string& g : groups) group_list += (group_list.empty() ? "" : ", ") + g;
      fail("train.trainable: \"{}\" matches no parameter (an entry is a group: {}; or a parameter name prefix, "
           "e.g. model.layers.0.)", entry, group_list);
    }
  }
  return mask;
}


std::pair<Tensor, Tensor> TrainingState::host_batch(int64_t micro) {
  const int64_t B = config_.train.micro_batch, T = config_.data.seq_len;
  if (pinned_batches_.data() == nullptr)
    return {Tensor(tokens_.data(), DType::I32, {B, T}), Tensor(targets_.data(), DType::I32, {B, T})};
  auto* base = reinterpret_cast<int32_t*>(pinned_batches_.data()) + 2 * micro * B * T;
  return {Tensor(base, DType::I32, {B, T}), Tensor(base + B * T, DType::I32, {B, T})};
}

StepResult TrainingState::step(int64_t step, const BatchSource& batches) {
  const int64_t B = config_.train.micro_batch;
  const int rank = comm_.rank(), ranks = comm_.size();
  // The step's loss is the mean over all its tokens (of every rank), so each micro-batch's summed loss is scaled
  // by 1 / (tokens per step), and the ranks' gradients are summed.
  const double grad_scale = 1.0 / static_cast<double>(tokens_per_step_);

  StepResult result;
  result.lr = learning_rate(config_.train, step);
  using Clock = std::chrono::steady_clock;
  auto update_start = Clock::now();
  ops::fill_zero(grads_.all());
  // Where the model computes: [0] the gradients' sum of squares, [1] the sum of the micro-batches' mean losses,
  // [2, 2 + 5 * MoE layers) the sums of their MoE statistics, and last the update gate computed from the first two
  // (ops::update_gate). The update is queued behind them, and all are read back together after it: the step's one
  // read-back (on a GPU nothing else waits, see docs/design.md).
  ops::fill_zero(step_sums_.all());
  const Tensor all_sums = step_sums_.all();
  const int64_t moe_end = all_sums.numel() - 2;
  const Tensor grad_squares = all_sums.rows(0, 1), gate = all_sums.rows(moe_end, moe_end + 2);
  const StepSums sums{all_sums.rows(1, 2), all_sums.rows(2, moe_end)};
  result.update_seconds = std::chrono::duration<double>(Clock::now() - update_start).count();
  sync_->begin_step();
  for (int64_t micro = 0; micro < accum_steps_; ++micro) {
    arena_.reset();
    const auto [tokens, targets] = host_batch(micro);
    batches(first_sequence(step * accum_steps_ + micro, B, rank, ranks), tokens, targets);
    sync_->note_tokens(tokens);
    const auto [tok, tgt] = batch_on_device(tokens, targets, device_tokens_, device_targets_);
    model_.forward_backward(params_, &grads_, tok, tgt, grad_scale, arena_, &sums);
  }
  update_start = Clock::now();
  // Frozen parameters (train.trainable) take no part in the norm, the clipping or the update.
  for (size_t i = 0; i < trainable_.size(); ++i)
    if (!trainable_[i]) ops::fill_zero(grads_.view(model_.registry().params()[i]));
  result.reduce = sync_->reduce(grads_, shard_grads_.all());
  // Each rank holds all of the summed gradients, or (ZeRO-1) its shard.
  ops::sum_squares_into(grad_squares, sync_->sharded() ? shard_grads_.all() : grads_.all());
  // Summed over the ranks in one collective: the loss and MoE statistics, and the sum of squares when each rank
  // holds a shard (else every rank has the same), so that every rank opens or closes the same gate.
  if (ranks > 1) comm_.all_reduce(all_sums.rows(sync_->sharded() ? 0 : 1, moe_end));
  ops::update_gate(gate, sums.loss, grad_squares, config_.train.grad_clip);
  // The update, queued behind the gate without waiting for it: clipped by its factor, or (a non-finite loss or
  // norm) nothing, leaving weights and AdamW state as they were (on every rank: same values). Frozen parameters
  // (train.trainable) are not in the optimizer's runs.
  if (!sync_->sharded()) {
    optimizer_.step(params_, grads_, result.lr, device_.mixed_precision ? &master_ : nullptr, gate);
  } else {
    // ZeRO-1: update this rank's shard, then every rank gathers the others' shards of the parameters.
    optimizer_.step_range(params_, shard_grads_.all(), result.lr, device_.mixed_precision ? master_.all() : Tensor(),
                          gate);
    const int64_t chunk = params_.numel() / ranks;
    comm_.all_gather(params_.all().rows(rank * chunk, (rank + 1) * chunk), params_.all());
  }
  result.update_seconds += std::chrono::duration<double>(Clock::now() - update_start).count();
  // On a GPU the host waits here for the step's queued work (not counted in update_seconds).
  std::vector<double> read_back(static_cast<size_t>(all_sums.numel()));
  ops::copy(Tensor(read_back.data(), DType::F64, {all_sums.numel()}), all_sums);
  update_start = Clock::now();
  // Means over the micro-batches of all ranks (the MoE load extremes too: the mean of each micro-batch's).
  const double micro_batches = static_cast<double>(accum_steps_ * ranks);
  for (int64_t i = 1; i < moe_end; ++i) read_back[i] /= micro_batches;
  result.loss = read_back[1];
  LossReport moe;
  model_.moe_report(read_back.data() + 2, moe);
  result.aux_loss = moe.aux_loss;
  result.moe = std::move(moe.moe);
  result.grad_norm = std::sqrt(read_back[0]);  // of the summed gradients
  // The gate saw the loss and the norm. The aux loss comes from the MoE routers' logits, which also feed the loss:
  // it is not non-finite while the loss is finite.
  result.skipped = read_back[moe_end + 1] == 0.0;
  if (result.skipped) optimizer_.undo_step();  // nothing was updated
  if ((result.skipped || !std::isfinite(result.aux_loss)) && config_.train.on_nonfinite == NonFinitePolicy::Stop)
    fail("step {}: non-finite loss ({}) or gradient norm ({}); lower train.lr or raise train.warmup_steps, or set "
         "train.on_nonfinite=skip to skip such steps", step + 1, result.loss + result.aux_loss, result.grad_norm);
  result.update_seconds += std::chrono::duration<double>(Clock::now() - update_start).count();
  return result;
}

void TrainingState::gather_shards(const Tensor& shard, FlatBuffer& full) {
  const int64_t padded = zero_padded_size(model_.registry().total(), comm_.size());
  const int64_t chunk = padded / comm_.size(), begin = comm_.rank() * chunk;
  if (full.numel() != padded || full.dtype() != shard.dtype || full.device() != shard.device)
    full = FlatBuffer(padded, shard.dtype, shard.device);
  if (shard.numel() > 0) ops::copy(full.all().rows(begin, begin + shard.numel()), shard);
  comm_.all_gather(full.all().rows(begin, begin + chunk), full.all());
}

const FlatBuffer& TrainingState::host_params() {
  if (device_.device == Device::CPU) return params_;
  const int64_t total = model_.registry().total();
  if (host_copy_.numel() != params_.numel()) host_copy_ = FlatBuffer(params_.numel(), DType::F32);
  if (!device_.mixed_precision) {
    ops::copy(host_copy_.all(), params_.all());
  } else if (!sync_->sharded()) {
    ops::copy(host_copy_.all(), master_.all());
  } else {
    FlatBuffer full;
    gather_shards(master_.all(), full);
    ops::copy(host_copy_.all().rows(0, total), full.all().rows(0, total));
  }
  return host_copy_;
}

void TrainingState::set_params(const FlatBuffer& host) {
  L3C_CHECK(host.numel() == params_.numel() && host.device() == Device::CPU, "set_params: {} host values for {}",
            host.numel(), params_.numel());
  if (device_.device == Device::CPU) {
    ops::convert(params_.all(), host.all());
    return;
  }
  L3C_CHECK(host.dtype() == DType::F32, "set_params: f32 values for the GPU, got {}", dtype_name(host.dtype()));
  if (!device_.mixed_precision) {
    ops::copy(params_.all(), host.all());
    return;
  }
  const BufferRange range = optimizer_.range();
  ops::copy(master_.all(), host.all().rows(range.begin, range.end));
  FlatBuffer f32(params_.numel(), DType::F32, device_.device);
  ops::copy(f32.all(), host.all());
  ops::convert(params_.all(), f32.all());
}

AdamW& TrainingState::io_optimizer() {
  if (!sync_->sharded()) return optimizer_;
  if (!io_optimizer_) {
    io_optimizer_ = std::make_unique<AdamW>(model_.registry(), device_.moment_dtype, AdamWSettings::from(config_.train),
                                            Device::CPU);
    if (!trainable_.empty()) io_optimizer_->set_trainable(trainable_);
  }
  return *io_optimizer_;
}

void TrainingState::gather_optimizer() {
  if (!sync_->sharded()) return;
  AdamW& whole = io_optimizer();
  const int64_t total = model_.registry().total();
  FlatBuffer full;
  for (auto [shard, out] : {std::pair{&optimizer_.first_moment(), &whole.first_moment()},
                            std::pair{&optimizer_.second_moment(), &whole.second_moment()}}) {
    gather_shards(shard->all(), full);
    ops::copy(out->all(), full.all().rows(0, total));
  }
  whole.set_steps_taken(optimizer_.steps_taken());
}

void TrainingState::scatter_optimizer() {
  if (!sync_->sharded()) return;
  const AdamW& whole = io_optimizer();
  const BufferRange range = optimizer_.range();
  ops::copy(optimizer_.first_moment().all(), io_optimizer_->first_moment().all().rows(range.begin, range.end));
  ops::copy(optimizer_.second_moment().all(), io_optimizer_->second_moment().all().rows(range.begin, range.end));
  optimizer_.set_steps_taken(whole.steps_taken());
}

double TrainingState::evaluate(const WindowLoader& loader, int64_t batches) {
  const double share = evaluate_loss(model_, params_, loader, config_.train.micro_batch, batches, comm_.rank(),
                                     comm_.size());
  return all_reduce_value(comm_, share);
}

}  // namespace l3c
