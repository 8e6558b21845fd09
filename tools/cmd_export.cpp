// `l3c export hf CHECKPOINT OUT_DIR`: a checkpoint (or run folder) -> Hugging Face config.json +
// model.safetensors that `transformers` loads (LlamaForCausalLM; MixtralForCausalLM for MoE models).
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "runtime/model_dir.h"
#include "train/hf_export.h"

namespace l3c::cmd {

int export_model(const std::vector<std::string>& argv) {
  const char* usage = "l3c export hf CHECKPOINT OUT_DIR [--json]   (CHECKPOINT: RUN/checkpoints/step_* or a run folder)";
  const cli::Args args = cli::parse(argv, {{}, {"json"}, 3, 3, usage});
  if (args.positional[0] != "hf") fail("export: unknown format '{}' (known: hf)\nusage: {}", args.positional[0], usage);
  const std::string checkpoint = args.positional[1], out_dir = args.positional[2];
  const LoadedModel loaded = load_model_dir(checkpoint);
  hf_config(loaded.config);  // refuses models without a Hugging Face class before anything is written
  export_hf(loaded.config, *loaded.model, loaded.params, out_dir);
  const std::string architecture = hf_config(loaded.config)["architectures"][0].get<std::string>();
  spdlog::info("exported {} as {} to {} (config.json, model.safetensors)", checkpoint, architecture, out_dir);
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"out_dir", out_dir}, {"architecture", architecture}}.dump());
  return 0;
}

}  // namespace l3c::cmd
