// `l3c import hf HF_DIR OUT_DIR [--json]`: a Hugging Face LlamaForCausalLM folder (or an L3 model exported by
// `l3c export hf`) -> an l3c model folder (config.json + model.safetensors) that generate, eval, bench --generate
// and `train --init-from` read; e.g. a trained dense model to which a config adds L3 layers.
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "train/hf_export.h"

namespace l3c::cmd {

int import_model(const std::vector<std::string>& argv) {
  const char* usage = "l3c import hf HF_DIR OUT_DIR [--json]   (HF_DIR: config.json + model.safetensors of a Llama)";
  const cli::Args args = cli::parse(argv, {{}, {"json"}, 3, 3, usage});
  if (args.positional[0] != "hf") fail("import: unknown format '{}' (known: hf)\nusage: {}", args.positional[0], usage);
  const ImportedModel imported = import_hf(args.positional[1], args.positional[2]);
  spdlog::info("imported {} ({}, {:.2f}M parameters) into {} (config.json, model.safetensors); set data.tokenizer in its "
               "config.json, or pass --tokenizer to generate",
               args.positional[1], imported.architecture, imported.params / 1e6, args.positional[2]);
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"out_dir", args.positional[2]},
                                        {"architecture", imported.architecture},
                                        {"params", imported.params}}
                             .dump());
  return 0;
}

}  // namespace l3c::cmd
