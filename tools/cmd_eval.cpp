// `l3c eval --checkpoint DIR --data SHARDS [--batches N] [--micro-batch B] [--json]`
#include <cmath>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "train/model_io.h"
#include "train/perf.h"
#include "train/trainer.h"

namespace l3c::cmd {

int eval(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"checkpoint", "data", "batches", "micro-batch", "threads"}, {"json"}, 0, 0,
             "l3c eval --checkpoint DIR --data SHARDS [--batches N (0: all)] [--micro-batch B] [--json]"});
  LoadedModel loaded = load_model_dir(args.require("checkpoint"));
  configure_threads(args.get_int("threads", loaded.config.train.threads, 0));
  const int64_t micro_batch = args.get_int("micro-batch", loaded.config.train.micro_batch, 1);
  const int64_t batches = args.get_int("batches", 0, 0);
  const WindowLoader data(args.require("data"), "--data", loaded.config.data.seq_len, loaded.config.model.vocab_size);
  const DType dtype = loaded.params.dtype();
  Arena arena(loaded.model->activation_bytes(micro_batch, loaded.config.data.seq_len, dtype, false), "activation");
  const int64_t windows = batches == 0 ? data.num_windows() : std::min(batches * micro_batch, data.num_windows());
  const double loss = evaluate_loss(*loaded.model, loaded.params, data, micro_batch, batches, arena);
  spdlog::info("eval: {} windows of {} tokens | loss {:.4f} | perplexity {:.3f}", windows, loaded.config.data.seq_len,
               loss, std::exp(loss));
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"loss", loss}, {"perplexity", std::exp(loss)}, {"windows", windows},
                                        {"tokens", windows * loaded.config.data.seq_len}}
                             .dump());
  return 0;
}

}  // namespace l3c::cmd
