// `l3c prepare --tokenizer DIR|bytes --out DIR [--val-fraction F] [--field NAME] [--shard-tokens N]
//  [--seed S] [--invalid-utf8 error|replace] [--threads N] [--json] INPUT...`: text files, folders and
// JSONL files -> train_*.bin / val_*.bin token shards and manifest.json (src/data/prepare.h).
#include <nlohmann/json.hpp>

#include "core/limits.h"
#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

namespace l3c::cmd {

int prepare(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"out", "val-fraction", "tokenizer", "field", "shard-tokens", "seed", "invalid-utf8", "threads"},
             {"json", "no-progress"}, 1, 1 << 20,
             "l3c prepare --tokenizer DIR|bytes --out DIR [--val-fraction F (0.1)] [--field NAME (text)]\n"
             "            [--shard-tokens N (100000000)] [--seed S (1337)] [--invalid-utf8 error|replace]\n"
             "            [--threads N] [--no-progress] [--json] INPUT...\n"
             "INPUT: text files (one document each), .jsonl files (one document per line) or folders of them"});
  PrepareOptions options;
  options.inputs = args.positional;
  options.out = args.require("out");
  options.val_fraction = args.get_double("val-fraction", options.val_fraction);
  options.field = args.get("field", options.field);
  options.shard_tokens = args.get_int("shard-tokens", options.shard_tokens, 2);
  options.seed = static_cast<uint64_t>(args.get_int("seed", static_cast<int64_t>(options.seed), 0));
  options.threads = limits::checked_threads(args.get_int("threads", 0, 0), "--threads");
  options.progress = !args.flag("no-progress");
  options.invalid_utf8 = parse_choice<InvalidUtf8>(args.get("invalid-utf8", "error"), "--invalid-utf8");
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0))
    fail("--val-fraction: must be in [0, 1), got {}", options.val_fraction);

  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(args.get("tokenizer", "bytes"));
  const PrepareResult result = prepare_dataset(options, *tokenizer);
  if (args.flag("json")) {
    nlohmann::ordered_json summary = result.manifest;
    summary.erase("inputs");
    summary["out"] = options.out;
    summary["seconds"] = result.seconds;
    summary["megabytes_per_second"] = result.megabytes_per_second;
    cli::print_json_line(summary.dump());
  }
  return 0;
}

}  // namespace l3c::cmd
