// The `l3c` command: dispatches to the subcommands and turns errors into exit codes
// (bad input: 2, internal failure: 1).
#include <csignal>
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "commands.h"
#include "core/errors.h"
#include "core/logging.h"

namespace {
constexpr const char* kUsage = R"(usage: l3c COMMAND [ARGS]

commands:
  train CONFIG [--set key=value ...] [--json]       train a model as the config says
        [--resume auto|CHECKPOINT] [--init-from CHECKPOINT] [--stop-at STEP]
  eval --checkpoint DIR [--data|--text|--tasks|--lens] held-out text, zero-shot tasks, logit lens, val loss
  inspect CONFIG [--set key=value ...] [--json]     parameters, FLOPs per token and memory of a config
  bench CONFIG [--steps N] [--warmup N] [--json]    steady-state training throughput and MFU
  bench --generate CHECKPOINT_OR_CONFIG [--batch B] inference speed: prefill and decode tokens/s, memory
  prepare --tokenizer DIR|bytes --out DIR INPUT...  text, JSONL files or folders -> token shards + manifest
  generate --checkpoint DIR [--prompt TEXT]         sample text from a trained model (KV cache, batches with
           [--prompts FILE] [--l3-tables MODE]      --prompts, L3 tables on the device, in host memory or mmap)
  allocate --data SHARDS --v N --k K --out FILE    L3 allocation (rows per token id) by LZW, unigram or uniform
  tokenizer train|encode|decode|bench ...           byte-level BPE: train a vocabulary, encode, decode, speed
  export hf CHECKPOINT OUT_DIR                      Hugging Face config.json + model.safetensors (transformers)
  import hf HF_DIR OUT_DIR                          a Hugging Face Llama folder -> an l3c model folder
  logits --checkpoint DIR --tokens IDS --out FILE   logits of one sequence (safetensors), to compare implementations

Every command that reads a config accepts --set key=value (e.g. --set train.lr=3e-4).
With --json the last line of stdout is one JSON object.)";
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::puts(kUsage);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  // A file-size limit (ulimit -f) makes write() fail with EFBIG, reported like a full disk, instead of
  // killing the process halfway through a file.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    l3c::init_logging();
    if (command == "train") return l3c::cmd::train(args);
    if (command == "eval") return l3c::cmd::eval(args);
    if (command == "inspect") return l3c::cmd::inspect(args);
    if (command == "bench") return l3c::cmd::bench(args);
    if (command == "prepare") return l3c::cmd::prepare(args);
    if (command == "generate") return l3c::cmd::generate(args);
    if (command == "allocate") return l3c::cmd::allocate(args);
    if (command == "tokenizer") return l3c::cmd::tokenizer(args);
    if (command == "export") return l3c::cmd::export_model(args);
    if (command == "import") return l3c::cmd::import_model(args);
    if (command == "logits") return l3c::cmd::logits(args);
    throw l3c::UserError(fmt::format("unknown command '{}'\n{}", command, kUsage));
  } catch (const l3c::UserError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    // Sizes are checked against limits and the memory estimate first (src/core/limits.h); what still does not fit
    // comes from the input too.
    std::fprintf(stderr, "error: out of memory: the input asks for more memory than this machine has\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 1;
  }
}
