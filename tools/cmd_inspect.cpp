// `l3c inspect CONFIG [--match OTHER] [--set k=v ...] [--json]`: parameter counts per component (total,
// and active per token: an L3 layer's tables count k rows, an MoE layer top_k of its experts), FLOPs per
// token (active parameters) and the memory a training run needs. With --match, how the model compares
// with another in active and total parameters, and, for an MoE model, the expert sizes that would
// make it iso-sparse with the other (same active and same total parameters).
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "cli.h"
#include "commands.h"
#include "kernels/arena.h"
#include "runtime/memory.h"

namespace l3c::cmd {

namespace {

double percent_difference(int64_t value, int64_t reference) {
  return 100.0 * (static_cast<double>(value) - static_cast<double>(reference)) / static_cast<double>(reference);
}

// The cost of `model` with the MoE sizes replaced.
ModelCost moe_cost(ModelConfig model, int64_t experts, int64_t expert_hidden, int64_t seq_len) {
  model.moe.experts = experts;
  model.moe.expert_hidden = expert_hidden;
  return Llama(model).cost(seq_len);
}

// The MoE sizes that make `config` iso-sparse with a target: expert_hidden so that the active counts
// match (top_k and the rest fixed), then the number of experts so that the totals match. Both counts
// are linear in expert_hidden and in experts, so two evaluations give each line.
struct IsoSparseSuggestion {
  int64_t expert_hidden = 0, experts = 0;
  ModelCost cost;
};

IsoSparseSuggestion suggest_iso_sparse(const Config& config, const ModelCost& target) {
  const ModelConfig& m = config.model;
  const int64_t T = config.data.seq_len, E = m.moe.experts, k = m.moe.top_k;
  IsoSparseSuggestion s;
  // active(F) = active(1) + (F - 1) * slope, at the config's number of experts
  const int64_t active_at_1 = moe_cost(m, E, 1, T).active_params;
  const double active_slope = static_cast<double>(moe_cost(m, E, 2, T).active_params - active_at_1);
  s.expert_hidden = std::max<int64_t>(
      1, 1 + std::llround(static_cast<double>(target.active_params - active_at_1) / active_slope));
  // total(E) = total(k) + (E - k) * slope, at that expert_hidden
  const int64_t total_at_k = moe_cost(m, k, s.expert_hidden, T).total_params;
  const double total_slope = static_cast<double>(moe_cost(m, k + 1, s.expert_hidden, T).total_params - total_at_k);
  s.experts = std::max<int64_t>(k, k + std::llround(static_cast<double>(target.total_params - total_at_k) / total_slope));
  s.cost = moe_cost(m, s.experts, s.expert_hidden, T);
  return s;
}

}  // namespace

int inspect(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(
      argv, {{"match", "world-size"}, {"json"}, 1, 1,
             "l3c inspect CONFIG [--match OTHER_CONFIG] [--world-size N] [--set key=value ...] [--json]"});
  const Config config = load_config(args.positional[0], args.sets);
  const int world_size = static_cast<int>(args.get_int("world-size", 1, 1));
  const Llama model(config.model);
  const ModelCost cost = model.cost(config.data.seq_len);
  const RunDevice planned = resolve_run_device(config.train, Resolve::Plan);
  const Device device = planned.device;
  const MemoryEstimate memory = estimate_training_memory(model, config, planned, world_size);

  const bool all_moe = config.model.moe.enabled() && config.model.moe.layers.all;
  fmt::print("model: {} layers, d_model {}, {} heads ({} kv), {}vocab {}, {} embeddings\n", config.model.n_layers,
             config.model.d_model, config.model.n_heads, config.model.n_kv_heads,
             all_moe ? "" : fmt::format("ffn {}, ", config.model.ffn_hidden), config.model.vocab_size,
             config.model.tie_embeddings ? "tied" : "untied");
  const L3Config& l3 = config.model.l3;
  if (l3.enabled())
    fmt::print("L3: {} layer{} after decoder layer{} {}; v {} rows per layer, k {}, d_emb {}, d_up {}{}{}\n",
               l3.num_layers(), l3.num_layers() == 1 ? "" : "s", l3.num_layers() == 1 ? "" : "s",
               nlohmann::json(l3.after_layers).dump(), l3.v, l3.k, l3.d_emb, l3.d_up, l3.tie_kv ? ", tied K/V" : "",
               l3.residual ? ", residual" : "");
  const MoeConfig& moe = config.model.moe;
  if (moe.enabled())
    fmt::print("MoE: FFN of {} {}: {} experts of hidden {}, top-{}{}{}; aux loss {}, z-loss {}\n",
               moe.layers.all ? "all" : "decoder layers", moe.layers.all ? "layers" : nlohmann::json(moe.layers.layers).dump(),
               moe.experts, moe.expert_hidden, moe.top_k, moe.normalize_topk ? " (renormalised)" : "",
               moe.shared_expert_hidden > 0 ? fmt::format(", shared expert of hidden {}", moe.shared_expert_hidden) : "",
               moe.aux_loss, moe.z_loss);
  const double sparsity = static_cast<double>(cost.total_params) / static_cast<double>(cost.active_params);
  fmt::print("parameters: {:>14} total ({:.2f}M)\n", cost.total_params, cost.total_params / 1e6);
  fmt::print("            {:>14} active per token ({:.2f}M); sparsity (total / active) {:.2f}\n", cost.active_params,
             cost.active_params / 1e6, sparsity);
  for (const auto& [group, count] : cost.params_by_group)
    fmt::print("  {:<12} {:>14} ({:.1f}%)\n", group, count, 100.0 * count / cost.total_params);
  fmt::print("FLOPs per token (training, T={}): {:.4g} (6 x {} active matmul parameters + attention)\n", config.data.seq_len,
             cost.flops_per_token, cost.matmul_params);
  fmt::print("training memory (micro-batch {} x {}, {}{}): {}\n", config.train.micro_batch, config.data.seq_len,
             device == Device::CUDA ? fmt::format("GPU, {}", choice_name(config.train.precision)) : std::string("host"),
             world_size > 1 ? fmt::format(", per rank of {}, train.zero {}", world_size, config.train.zero) : "",
             format_bytes(static_cast<double>(memory.total())));
  fmt::print("  parameters {} | gradients {} | optimizer {} | activations {}{}\n",
             format_bytes(static_cast<double>(memory.params)), format_bytes(static_cast<double>(memory.grads)),
             format_bytes(static_cast<double>(memory.optimizer)), format_bytes(static_cast<double>(memory.activations)),
             device == Device::CUDA ? fmt::format(" | f32 master weights {} | workspace {}",
                                                  format_bytes(static_cast<double>(memory.master)),
                                                  format_bytes(static_cast<double>(memory.workspace)))
                                    : std::string());

  nlohmann::json comm_json;
  if (world_size > 1) {
    // The other ZeRO setting, so that one command shows whether sharding makes the run fit.
    Config other = config;
    other.train.zero = 1 - config.train.zero;
    const MemoryEstimate other_memory = estimate_training_memory(model, other, planned, world_size);
    fmt::print("  with train.zero {} instead: {} per rank (optimizer {}{})\n", other.train.zero,
               format_bytes(static_cast<double>(other_memory.total())),
               format_bytes(static_cast<double>(other_memory.optimizer)),
               device == Device::CUDA ? ", master weights " + format_bytes(static_cast<double>(other_memory.master)) : "");
    // What a step moves: the gradients, once (ring all-reduce: each rank sends and receives 2 (R - 1) / R of them);
    // with dist.row_sparse the row tables only in the rows of the tokens present in the global batch.
    const size_t element = memory.grad_element;
    int64_t table_params = 0;
    for (const ParamInfo& p : model.registry().params())
      if (p.group == "l3_table" || (p.group == "embedding" && !config.model.tie_embeddings)) table_params += p.numel;
    const double payload = static_cast<double>(cost.total_params) * static_cast<double>(element);
    const double ring = 2.0 * (world_size - 1) / world_size;
    fmt::print("gradient reduction per step at {} ranks: {} payload ({} of it row tables), {} sent per rank by a ring "
               "all-reduce: {:.1f} ms at 450 GB/s (NVLink), {:.1f} ms at 50 GB/s (InfiniBand)\n", world_size,
               format_bytes(payload), format_bytes(static_cast<double>(table_params) * static_cast<double>(element)),
               format_bytes(ring * payload), 1e3 * ring * payload / 450e9, 1e3 * ring * payload / 50e9);
    comm_json = {{"world_size", world_size}, {"payload_bytes", payload},
                 {"table_bytes", static_cast<double>(table_params) * static_cast<double>(element)},
                 {"ring_bytes_per_rank", ring * payload}, {"other_zero_total_bytes", other_memory.total()}};
  }

  nlohmann::json match_json;
  if (args.has("match")) {
    const std::string other_path = args.get("match", "");
    const Config other = load_config(other_path);
    const ModelCost target = Llama(other.model).cost(config.data.seq_len);
    const double other_sparsity = static_cast<double>(target.total_params) / static_cast<double>(target.active_params);
    fmt::print("\ncompared with {}:\n", other_path);
    fmt::print("  {:<8} {:>16} {:>16} {:>9}\n", "", "this model", "other", "diff");
    fmt::print("  {:<8} {:>16} {:>16} {:>+8.2f}%\n", "active", cost.active_params, target.active_params,
               percent_difference(cost.active_params, target.active_params));
    fmt::print("  {:<8} {:>16} {:>16} {:>+8.2f}%\n", "total", cost.total_params, target.total_params,
               percent_difference(cost.total_params, target.total_params));
    fmt::print("  {:<8} {:>16.2f} {:>16.2f}\n", "sparsity", sparsity, other_sparsity);
    fmt::print("  {:<8} {:>16.4g} {:>16.4g} {:>+8.2f}%  (training FLOPs per token at T={})\n", "FLOPs",
               cost.flops_per_token, target.flops_per_token,
               100.0 * (cost.flops_per_token - target.flops_per_token) / target.flops_per_token, config.data.seq_len);
    match_json = {{"config", other_path},
                  {"active_params", target.active_params},
                  {"total_params", target.total_params},
                  {"active_diff_percent", percent_difference(cost.active_params, target.active_params)},
                  {"total_diff_percent", percent_difference(cost.total_params, target.total_params)}};
    if (moe.enabled()) {
      const IsoSparseSuggestion s = suggest_iso_sparse(config, target);
      fmt::print("iso-sparse with it (top_k {} and everything else kept): expert_hidden {} matches the active "
                 "parameters, and then {} experts match the total:\n", moe.top_k, s.expert_hidden, s.experts);
      fmt::print("  --set model.moe.expert_hidden={} --set model.moe.experts={}  ->  active {} ({:+.2f}%), "
                 "total {} ({:+.2f}%)\n", s.expert_hidden, s.experts, s.cost.active_params,
                 percent_difference(s.cost.active_params, target.active_params), s.cost.total_params,
                 percent_difference(s.cost.total_params, target.total_params));
      match_json["suggestion"] = {{"expert_hidden", s.expert_hidden}, {"experts", s.experts},
                                  {"active_params", s.cost.active_params}, {"total_params", s.cost.total_params}};
    }
  }

  if (args.flag("json")) {
    nlohmann::json groups = nlohmann::json::object();
    for (const auto& [group, count] : cost.params_by_group) groups[group] = count;
    nlohmann::json out{{"total_params", cost.total_params},
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
                                          {"total", memory.total()}}}};
    if (!match_json.is_null()) out["match"] = match_json;
    if (!comm_json.is_null()) out["communication"] = comm_json;
    cli::print_json_line(out.dump());
  }
  return 0;
}

}  // namespace l3c::cmd
