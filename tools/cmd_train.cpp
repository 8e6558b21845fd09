// `l3c train CONFIG [--set k=v ...] [--json]`
#include <cmath>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "train/perf.h"
#include "train/trainer.h"

namespace l3c::cmd {

int train(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"device"}, {"json"}, 1, 1, "l3c train CONFIG [--device cpu|cuda|auto] [--set key=value ...] [--json]"});
  const Config config = load_config(args.positional[0], args.overrides());
  const TrainSummary s = run_training(config);
  spdlog::info("done: {} steps, {} tokens in {} | {:.0f} tok/s | MFU {:.1f}% | final train loss {:.4f}{}", s.steps,
               s.tokens, format_duration(s.seconds), s.tokens_per_second, 100.0 * s.mfu, s.final_train_loss,
               std::isnan(s.final_val_loss)
                   ? std::string()
                   : fmt::format(" | val loss {:.4f} (ppl {:.2f})", s.final_val_loss, std::exp(s.final_val_loss)));
  spdlog::info("run folder: {}", config.run.dir);
  if (args.flag("json")) {
    nlohmann::json j = {{"run_dir", config.run.dir}, {"steps", s.steps}, {"tokens", s.tokens},
                        {"seconds", s.seconds}, {"tokens_per_second", s.tokens_per_second}, {"mfu", s.mfu},
                        {"final_train_loss", s.final_train_loss}};
    j["final_val_loss"] = std::isnan(s.final_val_loss) ? nlohmann::json() : nlohmann::json(s.final_val_loss);
    cli::print_json_line(j.dump());
  }
  return 0;
}

}  // namespace l3c::cmd
