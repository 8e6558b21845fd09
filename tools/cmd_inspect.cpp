// `l3c inspect CONFIG [--set k=v ...] [--json]`: parameter counts per component (total, and active per
// token: an L3 layer's tables count k rows), FLOPs per token (active parameters) and the memory a training
// run needs.
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "cli.h"
#include "commands.h"
#include "core/arena.h"
#include "train/memory.h"

namespace l3c::cmd {

int inspect(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(argv, {{}, {"json"}, 1, 1, "l3c inspect CONFIG [--set key=value ...] [--json]"});
  const Config config = load_config(args.positional[0], args.sets);
  const Llama model(config.model);
  const ModelCost cost = model.cost(config.data.seq_len);
  const Device device = planned_device(config);
  const MemoryEstimate memory = estimate_training_memory(model, config, device);

  fmt::print("model: {} layers, d_model {}, {} heads ({} kv), ffn {}, vocab {}, {} embeddings\n", config.model.n_layers,
             config.model.d_model, config.model.n_heads, config.model.n_kv_heads, config.model.ffn_hidden,
             config.model.vocab_size, config.model.tie_embeddings ? "tied" : "untied");
  const L3Config& l3 = config.model.l3;
  if (l3.enabled())
    fmt::print("L3: {} layer{} after decoder layer{} {}; v {} rows per layer, k {}, d_emb {}, d_up {}{}{}\n",
               l3.num_layers(), l3.num_layers() == 1 ? "" : "s", l3.num_layers() == 1 ? "" : "s",
               nlohmann::json(l3.after_layers).dump(), l3.v, l3.k, l3.d_emb, l3.d_up, l3.tie_kv ? ", tied K/V" : "",
               l3.residual ? ", residual" : "");
  const double sparsity = static_cast<double>(cost.total_params) / static_cast<double>(cost.active_params);
  fmt::print("parameters: {:>14} total ({:.2f}M)\n", cost.total_params, cost.total_params / 1e6);
  fmt::print("            {:>14} active per token ({:.2f}M); sparsity (total / active) {:.2f}\n", cost.active_params,
             cost.active_params / 1e6, sparsity);
  for (const auto& [group, count] : cost.params_by_group)
    fmt::print("  {:<12} {:>14} ({:.1f}%)\n", group, count, 100.0 * count / cost.total_params);
  fmt::print("FLOPs per token (training, T={}): {:.4g} (6 x {} active matmul parameters + attention)\n", config.data.seq_len,
             cost.flops_per_token, cost.matmul_params);
  fmt::print("training memory (micro-batch {} x {}, {}): {}\n", config.train.micro_batch, config.data.seq_len,
             device == Device::CUDA ? fmt::format("GPU, {}", config.train.precision) : std::string("host"),
             format_bytes(static_cast<double>(memory.total())));
  fmt::print("  parameters {} | gradients {} | optimizer {} | activations {}{}\n",
             format_bytes(static_cast<double>(memory.params)), format_bytes(static_cast<double>(memory.grads)),
             format_bytes(static_cast<double>(memory.optimizer)), format_bytes(static_cast<double>(memory.activations)),
             device == Device::CUDA ? fmt::format(" | f32 master weights {} | workspace {}",
                                                  format_bytes(static_cast<double>(memory.master)),
                                                  format_bytes(static_cast<double>(memory.workspace)))
                                    : std::string());
  if (args.flag("json")) {
    nlohmann::json groups = nlohmann::json::object();
    for (const auto& [group, count] : cost.params_by_group) groups[group] = count;
    cli::print_json_line(nlohmann::json{{"total_params", cost.total_params},
                                        {"active_params", cost.active_params},
                                        {"sparsity", sparsity},
                                        {"params_by_group", groups},
                                        {"matmul_params", cost.matmul_params},
                                        {"flops_per_token", cost.flops_per_token},
                                        {"memory_bytes",
                                         {{"params", memory.params},
                                          {"grads", memory.grads},
                                          {"optimizer", memory.optimizer},
                                          {"activations", memory.activations},
                                          {"master", memory.master},
                                          {"workspace", memory.workspace},
                                          {"device", device == Device::CUDA ? "cuda" : "cpu"},
                                          {"total", memory.total()}}}}
                             .dump());
  }
  return 0;
}

}  // namespace l3c::cmd
