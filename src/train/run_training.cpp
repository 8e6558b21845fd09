// run_training: a whole training job, from the checks of its input to the final model: the same job on every
// rank, the run folder, the loop with validation, checkpoints and stop signals.
#include <elf.h>
#include <link.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/sha256.h"
#include "data/allocation.h"
#include "data/prepare.h"
#include "eval/during_training.h"
#include "runtime/checkpoint.h"
#include "runtime/memory.h"
#include "train/perf.h"
#include "train/run_folder.h"
#include "train/step_logger.h"
#include "train/trainer.h"

namespace l3c {

namespace {

using clock = std::chrono::steady_clock;

// Signals: the first SIGINT or SIGTERM asks the loop to stop after the current step (with a checkpoint);
// a second one ends the process at once with the default action.
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int signal_number) {
  if (g_stop_signal.exchange(signal_number) != 0) {
    std::signal(signal_number, SIG_DFL);
    std::raise(signal_number);
    return;
  }
  static const char message[] =
      "\nstop requested: finishing the current step, then writing a checkpoint (signal again to stop at once)\n";
  [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, message, sizeof message - 1);
}

class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // The signal received so far (0: none).
  static int received() { return g_stop_signal.load(); }
  static const char* name(int signal_number) {
    return signal_number == SIGTERM ? "SIGTERM" : signal_number == SIGINT ? "SIGINT" : nullptr;
  }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};


// The identity of this binary: its ELF build id (the linker's hash of the code), else the sha256 of the file.
std::string binary_identity() {
  std::string id;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) -> int {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& segment = info->dlpi_phdr[i];
          if (segment.p_type != PT_NOTE) continue;
          const char* p = reinterpret_cast<const char*>(info->dlpi_addr + segment.p_vaddr);
          const char* end = p + segment.p_memsz;
          while (p + sizeof(ElfW(Nhdr)) <= end) {
            const auto* note = reinterpret_cast<const ElfW(Nhdr)*>(p);
            const char* name = p + sizeof(ElfW(Nhdr));
            const char* desc = name + ((note->n_namesz + 3u) & ~3u);
            if (note->n_type == NT_GNU_BUILD_ID && note->n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0) {
              for (uint32_t k = 0; k < note->n_descsz; ++k)
                *static_cast<std::string*>(out) += fmt::format("{:02x}", static_cast<unsigned char>(desc[k]));
              return 1;
            }
            p = desc + ((note->n_descsz + 3u) & ~3u);
          }
        }
        return 1;  // the first object is the program itself
      },
      &id);
  return id.empty() ? "sha256 " + sha256_file("/proc/self/exe") : "build id " + id;
}

// What must be the same on every rank of a job: the resolved config, the data (shard paths and token counts)
// and the binary (its build id). Rank 0's description goes to every rank; a rank that differs names the difference,
// and every rank stops.
void check_same_job(Communicator& comm, const Config& config, const WindowLoader& train_data,
                    const WindowLoader* val_data) {
  if (comm.size() == 1) return;
  auto data_of = [](const WindowLoader& loader) {
    return nlohmann::json{{"shards", loader.paths()}, {"tokens", loader.num_tokens()}};
  };
  nlohmann::json mine = {{"config", nlohmann::json(config_to_json(config))}, {"train", data_of(train_data)},
                         {"val", val_data ? data_of(*val_data) : nlohmann::json()},
                         {"binary", binary_identity()}};
  const nlohmann::json root = nlohmann::json::parse(broadcast_string(comm, mine.dump()));
  std::vector<std::string> differences;
  if (root["config"] != mine["config"])
    for (const auto& [key, values] : config_differences(config_from_json(root["config"]), config))
      differences.push_back("config " + describe_difference(key, values));
  for (const char* data : {"train", "val"})
    if (root[data] != mine[data])
      differences.push_back(fmt::format("data.{}: rank 0 reads {}, this rank {}", data, root[data].dump(),
                                        mine[data].dump()));
  if (root["binary"] != mine["binary"])
    differences.push_back(fmt::format("the l3c binary: {} on rank 0, {} here", root["binary"].get<std::string>(),
                                      mine["binary"].get<std::string>()));
  // Every rank learns which ranks differ, so that all stop together.
  std::vector<double> differs(static_cast<size_t>(comm.size()), 0.0);
  differs[static_cast<size_t>(comm.rank())] = differences.empty() ? 0.0 : 1.0;
  differs = all_reduce_values(comm, differs, ReduceOp::Max);
  std::string ranks;
  for (int r = 0; r < comm.size(); ++r)
    if (differs[static_cast<size_t>(r)] != 0.0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  if (ranks.empty()) return;
  std::string list;
  for (const std::string& line : differences) list += "\n  " + line;
  if (!differences.empty())
    fail("rank {} was started differently from rank 0 (rank 0 -> this rank):{}\nstart every rank with the same "
         "binary, config, --set options and data", comm.rank(), list);
  fail("rank {}: ranks {} were started with a different config, data or binary than rank 0 (their errors say how)",
       comm.rank(), ranks);
}

// Everything that can be wrong with the input, checked before the first step: data, tokenizer, memory, trainable.
struct RunInputs {
  WindowLoader train_data;
  std::unique_ptr<WindowLoader> val_data;
  RunDevice device;
  MemoryEstimate memory;
  std::unique_ptr<TrainingEvaluator> downstream;  // eval.tasks, eval.text (src/eval/during_training.h)
};

RunInputs check_inputs(const Config& config, Communicator& comm) {
  RunInputs in{WindowLoader(config.data.train, "data.train", config.data.seq_len, config.model.vocab_size), nullptr,
               resolve_run_device(config.train), {}, nullptr};
  if (!config.data.val.empty())
    in.val_data = std::make_unique<WindowLoader>(config.data.val, "data.val", config.data.seq_len, config.model.vocab_size);
  {
    const std::unique_ptr<Tokenizer> tokenizer = load_data_tokenizer(config.data.tokenizer, config.model.vocab_size);
    check_shards_tokenizer(*tokenizer, in.train_data.paths(), "data.train");
    if (in.val_data) check_shards_tokenizer(*tokenizer, in.val_data->paths(), "data.val");
  }
  check_same_job(comm, config, in.train_data, in.val_data.get());
  const Llama sizing_model(config.model);
  in.memory = estimate_training_memory(sizing_model, config, in.device, comm.size());
  if (in.device.device == Device::CUDA) check_fits_device_memory(in.memory);
  else check_fits_host_memory(in.memory);
  if (!config.train.trainable.empty()) trainable_mask(sizing_model.registry(), config.train.trainable);
  in.downstream = std::make_unique<TrainingEvaluator>(config);
  if (config.train.zero == 1 && comm.size() == 1)
    spdlog::info("train.zero 1 with one rank: nothing to shard, the optimizer state stays whole");
  return in;
}

// The L3 allocation of a new run, read or computed now (so that a bad one stops the run before it starts), with
// its log lines. A resumed run takes its allocations from the checkpoint.
std::optional<Allocation> new_run_allocation(const Config& config) {
  if (!config.model.l3.enabled()) return std::nullopt;
  const auto start = clock::now();
  Allocation allocation = allocation_for_model(config.model);
  const nlohmann::ordered_json summary = allocation_summary(allocation, 5);
  spdlog::info("L3 allocation ({}): {} rows for {} token ids, at most {} per token{}; {:.1f}s", choice_name(allocation.method),
               allocation.v, config.model.vocab_size, allocation.k,
               allocation.corpus ? fmt::format(", from {} tokens ({} codewords)", allocation.corpus->tokens_parsed,
                                               allocation.corpus->codewords)
                                 : std::string(),
               std::chrono::duration<double>(clock::now() - start).count());
  spdlog::info("L3 allocation: most rows {}; histogram {}", summary["most_rows"].dump(), summary["histogram"].dump());
  return allocation;
}

void log_run(const Config& config, const RunInputs& in, TrainingState& state, const ModelCost& cost, double peak,
             int threads) {
  const Communicator& comm = state.communicator();
  spdlog::info("model: {:.2f}M parameters, {:.1f} MFLOP/token; data: {} train tokens in {} shards{}; memory {}{}{}",
               cost.total_params / 1e6, cost.flops_per_token / 1e6, in.train_data.num_tokens(),
               in.train_data.num_shards(), in.val_data ? fmt::format(", {} val tokens", in.val_data->num_tokens()) : "",
               format_bytes(static_cast<double>(in.memory.total())), comm.size() > 1 ? " per rank" : "",
               in.device.device == Device::CUDA ? " on the GPU" : "");
  const std::string ranks = comm.size() > 1 ? fmt::format(" x {} ranks", comm.size()) : "";
  if (in.device.device == Device::CUDA)
    spdlog::info("{} steps of {} tokens ({} x {} x {} accumulation{}) on {} ({}{}), peak {:.0f} TFLOP/s",
                 config.train.steps, state.tokens_per_step(), config.train.micro_batch, config.data.seq_len,
                 state.accum_steps(), ranks, in.device.description, choice_name(config.train.precision),
                 config.train.recompute == RecomputeChoice::None
                     ? ""
                     : fmt::format(", recompute {}", choice_name(config.train.recompute)),
                 peak / 1e12);
  else
    spdlog::info("{} steps of {} tokens ({} x {} x {} accumulation{}), {} threads, CPU peak {:.1f} GFLOP/s",
                 config.train.steps, state.tokens_per_step(), config.train.micro_batch, config.data.seq_len,
                 state.accum_steps(), ranks, threads, peak / 1e9);
  if (comm.size() > 1)
    spdlog::info("data parallel: {} ranks ({}), gradients {}{}", comm.size(), choice_name(comm.backend()),
                 state.gradient_sync().sharded() ? "reduce-scattered, ZeRO-1 optimizer shards"
                                                  : fmt::format("all-reduced in buckets of {} MiB", config.dist.bucket_mb),
                 !state.gradient_sync().sharded() && config.dist.row_sparse ? ", row-sparse tables" : "");
  if (!config.train.trainable.empty()) {
    int64_t frozen = 0, total = 0;
    const std::vector<uint8_t> mask = trainable_mask(state.model().registry(), config.train.trainable);
    for (size_t i = 0; i < mask.size(); ++i) {
      total += state.model().registry().params()[i].numel;
      if (!mask[i]) frozen += state.model().registry().params()[i].numel;
    }
    spdlog::info("train.trainable: {:.2f}M of {:.2f}M parameters train; the others are frozen", (total - frozen) / 1e6,
                 total / 1e6);
  }
}

// The steps from the run's start to train.steps (or a stop), with validation, checkpoints and the final model.
// Every rank runs it in lockstep: the stop decision is reduced over the ranks after each step.
TrainSummary train_loop(const Config& config, const TrainOptions& options, TrainingState& state, RunFolder& folder,
                        StepLogger& log, const WindowLoader* val_data, const TrainingEvaluator& downstream,
                        const BatchSource& batches) {
  TrainerProgress progress = folder.start();
  TrainSummary summary;
  summary.start_step = progress.step;
  summary.resumed_from = folder.resume_dir();
  summary.final_train_loss = std::numeric_limits<double>::quiet_NaN();
  if (folder.resuming() && progress.step == config.train.steps)
    spdlog::info("the checkpoint is at the last step ({}): nothing left to train", progress.step);

  const int64_t step_pause_ms = test_hook_milliseconds("L3C_TEST_STEP_PAUSE_MS");
  const StopSignals signals;
  const auto run_start = clock::now();
  int64_t checkpointed_step = progress.step;  // the newest step saved in a checkpoint (0: none)
  auto checkpoint = [&]() {
    progress.data_position = first_sequence(progress.step * state.accum_steps(), config.train.micro_batch, 0,
                                            state.communicator().size());
    checkpointed_step = progress.step;
    return folder.checkpoint(state, progress);
  };
  // A shard changed under the run (src/data/shard.h) ends it, after a checkpoint of the last completed step: the
  // error comes before a step updates anything, so the weights and moments are those of progress.step.
  auto stop_for_changed_shard = [&](const ShardChangedError& e) {
    std::string saved = progress.step == 0 ? "no step had completed" : "";
    if (progress.step > checkpointed_step) {
      try {
        saved = fmt::format("wrote checkpoint {} for step {}", checkpoint(), progress.step);
      } catch (const UserError& failed) {
        saved = fmt::format("could not write a checkpoint for step {}: {}", progress.step, failed.what());
      }
    } else if (progress.step > 0) {
      saved = fmt::format("step {} is already in a checkpoint", progress.step);
    }
    folder.write_metrics({{"event", "stopped"}, {"step", progress.step}, {"reason", "a shard changed"}});
    fail("{}; {}; replace the shard, then continue with --resume auto", e.what(), saved);
  };
  for (int64_t step = progress.step; step < config.train.steps; ++step) {
    const auto start = clock::now();
    StepResult r;
    try {
      r = state.step(step, batches);
    } catch (const ShardChangedError& e) {
      stop_for_changed_shard(e);
    }
    progress.step = step + 1;
    progress.tokens_seen += state.tokens_per_step();
    if (r.skipped) ++progress.skipped_steps;
    else summary.final_train_loss = r.loss;
    log.step(step, r, std::chrono::duration<double>(clock::now() - start).count(), progress);
    const bool last = step + 1 == config.train.steps;
    if ((val_data || downstream.enabled()) &&
        (last || (config.eval.every > 0 && (step + 1) % config.eval.every == 0))) {
      const auto val_start = clock::now();
      double loss = std::numeric_limits<double>::quiet_NaN();
      try {
        if (val_data) loss = state.evaluate(*val_data, config.eval.batches);
      } catch (const ShardChangedError& e) {
        stop_for_changed_shard(e);
      }
      if (val_data) summary.final_val_loss = loss;
      const double seconds = std::chrono::duration<double>(clock::now() - val_start).count();
      // The tasks and held-out text: every rank scores them (no collective waits on a long evaluation), rank 0 logs.
      nlohmann::ordered_json sections;
      if (downstream.enabled()) {
        spdlog::info("step {:>6} | evaluation (eval.tasks, eval.text):", step + 1);
        sections = downstream.run(state.model(), state.params());
      }
      log.validation(step + 1, loss, seconds, sections);
    }
    if (step_pause_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_pause_ms));

    // A signal to any rank stops every rank after this step (the largest signal number received wins).
    const int signal_number = static_cast<int>(all_reduce_value(state.communicator(), StopSignals::received(), ReduceOp::Max));
    const char* stop = StopSignals::name(signal_number);
    if (!stop && options.stop_at == step + 1 && !last) stop = "--stop-at";
    if (last || stop || (config.checkpoint.every > 0 && (step + 1) % config.checkpoint.every == 0))
      summary.checkpoint = checkpoint();
    if (stop && !last) {
      summary.stopped = stop;
      folder.write_metrics({{"event", "stopped"}, {"step", step + 1}, {"reason", stop}, {"checkpoint", summary.checkpoint}});
      break;
    }
  }
  summary.steps = progress.step;
  summary.tokens = progress.tokens_seen;
  summary.skipped_steps = progress.skipped_steps;
  summary.seconds = std::chrono::duration<double>(clock::now() - run_start).count();
  summary.tokens_per_second = log.average_tokens_per_second();
  summary.mfu = log.mfu(summary.tokens_per_second);
  if (!summary.stopped.empty()) return summary;

  folder.save_model(state);
  auto number_or_null = [](double x) { return std::isnan(x) ? nlohmann::json() : nlohmann::json(x); };
  folder.write_metrics({{"summary", true}, {"steps", summary.steps}, {"tokens", summary.tokens},
                        {"skipped_steps", summary.skipped_steps},
                        {"final_train_loss", number_or_null(summary.final_train_loss)},
                        {"final_val_loss", number_or_null(summary.final_val_loss)},
                        {"seconds", summary.seconds}, {"tokens_per_second", summary.tokens_per_second},
                        {"mfu", summary.mfu}});
  return summary;
}

}  // namespace

TrainSummary run_training(const Config& config, const TrainOptions& options) {
  LocalCommunicator local;
  return run_training(config, options, local);
}

TrainSummary run_training(const Config& config, const TrainOptions& options, Communicator& comm) {
  const int threads = configure_threads(config.train.threads);
  RunInputs in = check_inputs(config, comm);
  RunFolder folder(config, options, comm, threads);
  const std::optional<Allocation> l3_allocation = folder.resuming() ? std::nullopt : new_run_allocation(config);
  folder.open(l3_allocation);

  // A resumed L3 model starts from a placeholder allocation that the checkpoint's replaces.
  const std::vector<int32_t> placeholder =
      folder.resuming() && config.model.l3.enabled()
          ? uniform_allocation(config.model.vocab_size, config.model.l3.v, config.model.l3.k)
          : std::vector<int32_t>();
  TrainingState state(config, l3_allocation ? &l3_allocation->counts : folder.resuming() ? &placeholder : nullptr,
                      &comm);
  const auto load_start = clock::now();
  folder.load_into(state);
  if (folder.resuming()) {
    const double load_seconds = std::chrono::duration<double>(clock::now() - load_start).count();
    const double bytes = static_cast<double>(folder.resume_bytes());
    spdlog::info("resume: checkpoint of {:.1f} MB verified in {:.2f}s and loaded in {:.2f}s ({:.0f} MB/s in all)",
                 bytes / 1e6, folder.verify_seconds(), load_seconds,
                 bytes / 1e6 / std::max(folder.verify_seconds() + load_seconds, 1e-9));
  }
  const ModelCost cost = state.model().cost(config.data.seq_len);
  // MFU: against the measured CPU peak, or the GPU's datasheet bf16 peak (0 when unknown: MFU is then 0).
  const double peak = in.device.device == Device::CUDA ? gpu_peak_flops(in.device.description) : measure_cpu_peak_flops();
  log_run(config, in, state, cost, peak, threads);

  // Training reads windows in the order of (train.seed, epoch, position); validation in file order.
  const WindowOrder order(in.train_data.num_windows(), config.train.seed, config.data.shuffle);
  const double epochs = static_cast<double>(config.train.steps) * static_cast<double>(state.tokens_per_step()) /
                        (static_cast<double>(in.train_data.num_windows()) * static_cast<double>(config.data.seq_len));
  spdlog::info("data: {} training windows of {} + 1 tokens, {}; the run reads {:.2f} epochs", in.train_data.num_windows(),
               config.data.seq_len, order.shuffled() ? fmt::format("shuffled per epoch (seed {})", config.train.seed)
                                                     : std::string("in file order (data.shuffle is false)"), epochs);
  const BatchSource batches = [&](int64_t first, Tensor tokens, Tensor targets) {
    in.train_data.fill(order, first, tokens, targets);
  };
  StepLogger log(config, folder, folder.start().step, state.tokens_per_step(), peak, cost.flops_per_token);
  return train_loop(config, options, state, folder, log, in.val_data.get(), *in.downstream, batches);
}

}  // namespace l3c
