// `l3c train CONFIG [--set k=v ...] [--resume auto|CHECKPOINT] [--init-from CHECKPOINT] [--stop-at N] [--json]`
#include <cmath>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "dist/bootstrap.h"
#include "runtime/device.h"
#include "train/perf.h"
#include "train/trainer.h"

namespace l3c::cmd {

int train(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"resume", "init-from", "stop-at", "device"}, {"json"}, 1, 1,
             "l3c train CONFIG [--device cpu|cuda|auto] [--set key=value ...] [--resume auto|CHECKPOINT]\n"
             "                 [--init-from CHECKPOINT] [--stop-at STEP] [--json]"});
  const Config config = load_config(args.positional[0], args.overrides());
  TrainOptions options;
  options.resume = args.get("resume", "");
  options.init_from = args.get("init-from", "");
  options.stop_at = args.get_int("stop-at", 0, 1);
  if (args.has("resume") && options.resume.empty()) fail("--resume: expected auto or a checkpoint folder");
  // Launched as one of several ranks (mpirun, srun, torchrun-style): the communicator joins them. The other
  // ranks log warnings and errors only, each line naming the rank; rank 0 logs the run.
  const LaunchInfo launch = detect_launch();
  if (launch.size > 1) {
    spdlog::default_logger()->set_pattern(fmt::format("%^%H:%M:%S%$ [rank {}] %v", launch.rank));
    if (launch.rank != 0) spdlog::set_level(spdlog::level::warn);
  }
  std::unique_ptr<Communicator> comm;
  TrainSummary s;
  try {
    comm = make_communicator(launch, config.dist, resolve_run_device(config.train).device, config.run.dir);
    s = run_training(config, options, *comm);
  } catch (const UserError& e) {
    // The error line names the rank that saw the problem (the launcher then ends the others).
    if (launch.size > 1 && std::string_view(e.what()).substr(0, 5) != "rank ")
      throw UserError(fmt::format("rank {}: {}", launch.rank, e.what()));
    throw;
  }
  if (!comm->is_root()) return 0;
  if (!s.stopped.empty()) {
    spdlog::info("stopped after step {} of {} ({}): checkpoint {}; continue with: l3c train {} --resume auto", s.steps,
                 config.train.steps, s.stopped, s.checkpoint, args.positional[0]);
  } else {
    spdlog::info("done: {} steps, {} tokens in {} | {:.0f} tok/s | MFU {:.1f}% | final train loss {:.4f}{}{}", s.steps,
                 s.tokens, format_duration(s.seconds), s.tokens_per_second, 100.0 * s.mfu, s.final_train_loss,
                 std::isnan(s.final_val_loss)
                     ? std::string()
                     : fmt::format(" | val loss {:.4f} (ppl {:.2f})", s.final_val_loss, std::exp(s.final_val_loss)),
                 s.skipped_steps ? fmt::format(" | {} steps skipped (non-finite)", s.skipped_steps) : "");
  }
  spdlog::info("run folder: {}", config.run.dir);
  if (args.flag("json")) {
    auto number_or_null = [](double x) { return std::isnan(x) ? nlohmann::json() : nlohmann::json(x); };
    nlohmann::json j = {{"run_dir", config.run.dir}, {"steps", s.steps}, {"start_step", s.start_step},
                        {"tokens", s.tokens}, {"skipped_steps", s.skipped_steps}, {"seconds", s.seconds},
                        {"tokens_per_second", s.tokens_per_second}, {"mfu", s.mfu},
                        {"final_train_loss", number_or_null(s.final_train_loss)},
                        {"final_val_loss", number_or_null(s.final_val_loss)},
                        {"checkpoint", s.checkpoint}, {"resumed_from", s.resumed_from},
                        {"stopped", s.stopped.empty() ? nlohmann::json() : nlohmann::json(s.stopped)}};
    cli::print_json_line(j.dump());
  }
  return 0;
}

}  // namespace l3c::cmd
