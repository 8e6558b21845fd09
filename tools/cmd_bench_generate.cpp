// `l3c bench --generate CHECKPOINT_OR_CONFIG [--batch B] [--prompt-tokens P] [--new-tokens N] [--repeats R]
// [--l3-tables device|host|mmap] [--device D] [--precision fp32|bf16] [--threads T] [--set k=v ...] [--json]`:
// inference speed. B prompts of P random tokens are prefilled and decoded together for N new tokens (greedy), R
// times after one warm-up; reports prefill tokens/s, decode tokens/s, the time of a decode step (median and p99),
// the memory of trunk, tables, KV cache and activations, the process's peak resident memory, and the L3 table bytes
// read per token (--cold: the mmap tables' pages are dropped from the page cache before each repeat). A config
// instead of a checkpoint gives random weights (and uniform L3 allocations), so that models can be measured without
// training them; with --l3-tables mmap they are first written to a temporary folder.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "core/rng.h"
#include "data/allocation.h"
#include "infer/generate.h"
#include "infer/model.h"
#include "infer/session.h"
#include "kernels/arena.h"
#include "runtime/model_io.h"
#include "train/perf.h"
#include "infer_options.h"

namespace l3c::cmd {

namespace {

// A random model of `config` saved in a temporary folder (removed with this object), for mmap tables.
struct TemporaryModelDir {
  std::string dir;
  ~TemporaryModelDir() {
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }
};

size_t peak_resident_bytes() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<size_t>(usage.ru_maxrss) * 1024;
}

double percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5));
  return values[index];
}

}  // namespace

int bench_generate(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"batch", "prompt-tokens", "new-tokens", "repeats", "l3-tables", "device", "precision", "threads"},
             {"json", "generate", "cold"},
             1,
             1,
             "l3c bench --generate CHECKPOINT_OR_CONFIG [--batch B] [--prompt-tokens P] [--new-tokens N] [--repeats R]\n"
             "       [--l3-tables device|host|mmap] [--device cpu|cuda|auto] [--precision fp32|bf16] [--threads T]\n"
             "       [--cold] [--set key=value ...] [--json]   (--cold: mmap tables read from the disk each repeat)"});
  const std::string source = args.positional[0];
  const int64_t batch = args.get_int("batch", 1, 1);
  const int64_t prompt_tokens = args.get_int("prompt-tokens", 128, 1);
  const int64_t new_tokens = args.get_int("new-tokens", 128, 1);
  const int64_t repeats = args.get_int("repeats", 3, 1);
  const InferenceOptions options = inference_options(args);

  std::unique_ptr<InferenceModel> model;
  TemporaryModelDir temporary;
  int threads = 0;
  const bool from_config = std::filesystem::is_regular_file(source);
  if (from_config) {
    const Config config = load_config(source, args.sets);
    threads = configure_threads(args.get_int("threads", config.train.threads, 0));
    Llama llama(config.model);
    FlatBuffer params(llama.registry().total(), DType::F32);
    init_params(llama.registry(), params, config.train.seed);
    if (config.model.l3.enabled())
      llama.set_l3_allocations(uniform_allocation(config.model.vocab_size, config.model.l3.v, config.model.l3.k),
                               "a uniform allocation");
    if (options.tables == L3TableMode::Mmap) {
      temporary.dir = (std::filesystem::temp_directory_path() / fmt::format("l3c_bench_{}", ::getpid())).string();
      std::filesystem::create_directories(temporary.dir);
      save_model(temporary.dir + "/model.safetensors", llama, params, config);
      write_config_json(temporary.dir + "/config.json", config);
      params = FlatBuffer();
      model = InferenceModel::load(temporary.dir, options);
    } else {
      model = std::make_unique<InferenceModel>(config, llama, params, options);
    }
  } else {
    if (!args.sets.empty()) fail("--set applies to a config, not to a checkpoint ({})", source);
    model = InferenceModel::load(source, options);
    threads = configure_threads(args.get_int("threads", model->config().train.threads, 0));
  }
  const int64_t V = model->model_config().vocab_size;
  const int64_t context = prompt_tokens + new_tokens;
  InferenceSession session(*model, {.max_batch = batch, .max_context = context});
  const Philox rng(7, RngPurpose::Test);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < prompt_tokens; ++t)
      prompts[b].push_back(static_cast<int32_t>(rng.below(static_cast<uint64_t>(b * prompt_tokens + t), V)));
  GenerationOptions generation;
  generation.max_new_tokens = new_tokens;
  generation.sampling.temperature = 0.0;
  generation.slide_context = false;
  {
    GenerationOptions warmup = generation;
    warmup.max_new_tokens = std::min<int64_t>(new_tokens, 4);
    generate(session, prompts, warmup);
  }
  GenerationStats stats;
  std::vector<GeneratedSequence> last;
  const bool cold = args.flag("cold");
  if (cold && options.tables != L3TableMode::Mmap) fail("--cold: only with --l3-tables mmap (it drops the mapped tables' pages)");
  for (int64_t r = 0; r < repeats; ++r) {
    if (cold)
      for (int64_t j = 0; j < model->model_config().l3.num_layers(); ++j) model->tables(j).drop_page_cache();
    last = generate(session, prompts, generation, {}, &stats);
  }

  const double prefill_tps = stats.prefill_tokens / std::max(stats.prefill_seconds, 1e-12);
  const double decode_tps = stats.decode_tokens / std::max(stats.decode_seconds, 1e-12);
  const double median = percentile(stats.step_seconds, 0.5), p99 = percentile(stats.step_seconds, 0.99);
  const SessionMemory& memory = session.memory();
  const double l3_bytes_per_token = session.positions_computed() > 0
                                        ? static_cast<double>(session.l3_bytes_read()) /
                                              static_cast<double>(session.positions_computed())
                                        : 0.0;
  const size_t peak = peak_resident_bytes();
  auto b = [](size_t bytes) { return format_bytes(static_cast<double>(bytes)); };
  spdlog::info("bench --generate: {} ({}), {} on {}, L3 tables {}, batch {}, prompt {} + {} new tokens, {} threads",
               source, from_config ? "random weights" : "checkpoint", dtype_name(options.dtype),
               device_name(options.device), choice_name(options.tables), batch, prompt_tokens, new_tokens,
               threads);
  spdlog::info("prefill {:.0f} tokens/s | decode {:.1f} tokens/s | decode step median {:.3f} ms, p99 {:.3f} ms", prefill_tps,
               decode_tps, 1e3 * median, 1e3 * p99);
  spdlog::info("memory: trunk {}, L3 tables in memory {}, KV cache {}, activations {}; peak resident {}; L3 rows read "
               "per token {}",
               b(memory.trunk), b(memory.tables), b(memory.kv_cache), b(memory.activations), b(peak),
               b(static_cast<size_t>(l3_bytes_per_token)));
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"framework", "l3c"},
                                        {"source", source},
                                        {"random_weights", from_config},
                                        {"device", options.device == Device::CUDA ? "cuda" : "cpu"},
                                        {"precision", options.dtype == DType::BF16 ? "bf16" : "fp32"},
                                        {"l3_tables", std::string(choice_name(options.tables))},
                                        {"page_cache", cold ? "dropped" : "warm"},
                                        {"threads", threads},
                                        {"batch", batch},
                                        {"prompt_tokens", prompt_tokens},
                                        {"new_tokens", new_tokens},
                                        {"prefill_tokens_per_second", prefill_tps},
                                        {"decode_tokens_per_second", decode_tps},
                                        {"decode_step_median_seconds", median},
                                        {"decode_step_p99_seconds", p99},
                                        {"trunk_bytes", memory.trunk},
                                        {"table_bytes_in_memory", memory.tables},
                                        {"kv_cache_bytes", memory.kv_cache},
                                        {"activation_bytes", memory.activations},
                                        {"peak_resident_bytes", peak},
                                        {"l3_bytes_per_token", l3_bytes_per_token},
                                        {"prompts", prompts},
                                        {"first_generated", last.at(0).tokens}}
                             .dump());
  return 0;
}

}  // namespace l3c::cmd
