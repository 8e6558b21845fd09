// `l3c eval --checkpoint DIR --data SHARDS [--batches N] [--micro-batch B] [--device cpu|cuda|auto] [--json]`
#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/limits.h"
#include "cli.h"
#include "commands.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "train/device.h"
#include "train/memory.h"
#include "train/model_io.h"
#include "train/perf.h"
#include "train/trainer.h"

namespace l3c::cmd {

int eval(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"checkpoint", "data", "batches", "micro-batch", "threads", "device"}, {"json"}, 0, 0,
             "l3c eval --checkpoint DIR --data SHARDS [--batches N (0: all)] [--micro-batch B] "
             "[--device cpu|cuda|auto] [--json]"});
  LoadedModel loaded = load_model_dir(args.require("checkpoint"));
  configure_threads(args.has("threads") ? args.get_int("threads", 0, 0)
                                         : std::min<int64_t>(loaded.config.train.threads, limits::max_threads()),
                    "--threads");
  const int64_t micro_batch = args.get_int("micro-batch", loaded.config.train.micro_batch, 1, limits::kMaxMicroBatch);
  const int64_t batches = args.get_int("batches", 0, 0, limits::kMaxSteps);
  const WindowLoader data(args.require("data"), "--data", loaded.config.data.seq_len, loaded.config.model.vocab_size);
  // Evaluation computes in the saved weights' precision (f32, or f64 on the CPU), on the device asked for
  // (default: the GPU when there is one), whatever device the run trained on.
  TrainConfig train = loaded.config.train;
  train.device = args.get("device", "auto");
  train.precision = "fp32";
  const RunDevice device = resolve_run_device(train);
  const DType dtype = loaded.params.dtype();
  const int64_t T = loaded.config.data.seq_len;
  FlatBuffer device_params;
  if (device.device == Device::CUDA) {
    loaded.model->set_device(Device::CUDA);
    device_params = FlatBuffer(loaded.params.numel(), dtype, Device::CUDA);
    ops::copy(device_params.all(), loaded.params.all());
    Config sized = loaded.config;
    sized.train.micro_batch = micro_batch;
    cuda_reserve_workspace(cuda_workspace_bytes(workspace_shape(sized, dtype)));
  }
  const FlatBuffer& params = device.device == Device::CUDA ? device_params : loaded.params;
  Arena arena(loaded.model->activation_bytes(micro_batch, T, dtype, false), "activation", device.device);
  const int64_t windows = batches == 0 ? data.num_windows() : std::min(batches * micro_batch, data.num_windows());
  const double loss = evaluate_loss(*loaded.model, params, data, micro_batch, batches, arena);
  spdlog::info("eval: {} windows of {} tokens on {} | loss {:.4f} | perplexity {:.3f}", windows, T, device.description,
               loss, std::exp(loss));
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"loss", loss}, {"perplexity", std::exp(loss)}, {"windows", windows},
                                        {"tokens", windows * T}, {"device", device.device == Device::CUDA ? "cuda" : "cpu"}}
                             .dump());
  return 0;
}

}  // namespace l3c::cmd
