// `l3c logits --checkpoint DIR --tokens "ID ID ..." --out FILE`: the logits (T, V) of one sequence, as a
// float32 safetensors file (tensors `logits` and `tokens`): for comparing l3c with other implementations
// (scripts/hf_logits_check.py).
#include <algorithm>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/errors.h"
#include "core/limits.h"
#include "core/safetensors.h"
#include "kernels/arena.h"
#include "runtime/model_dir.h"
#include "train/perf.h"
#include "cli.h"
#include "commands.h"

namespace l3c::cmd {

int logits(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(argv, {{"checkpoint", "tokens", "out", "threads"}, {"json"}, 0, 0,
                                           "l3c logits --checkpoint DIR --tokens \"ID ID ...\" --out FILE.safetensors"});
  LoadedModel loaded = load_model_dir(args.require("checkpoint"));
  configure_threads(args.has("threads") ? args.get_int("threads", 0, 0)
                                         : std::min<int64_t>(loaded.config.train.threads, limits::max_threads()),
                    "--threads");
  const int64_t V = loaded.config.model.vocab_size;
  std::vector<int32_t> ids;
  std::istringstream in(args.require("tokens"));
  for (std::string word; in >> word;) {
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || id < 0 || id >= V)
      fail("--tokens: '{}' is not a token id in [0, {})", word, V);
    ids.push_back(static_cast<int32_t>(id));
  }
  const int64_t T = static_cast<int64_t>(ids.size());
  if (T == 0 || T > loaded.config.data.seq_len)
    fail("--tokens: expected 1 to {} ids (data.seq_len), got {}", loaded.config.data.seq_len, T);
  const DType dtype = loaded.params.dtype();
  Arena arena(loaded.model->activation_bytes(1, T, dtype, false), "activation");
  std::vector<double> out_f64(static_cast<size_t>(T * V));
  std::vector<float> out_f32(static_cast<size_t>(T * V));
  const Tensor tokens(ids.data(), DType::I32, {1, T});
  const Tensor logits = dtype == DType::F64 ? Tensor(out_f64.data(), dtype, {T, V}) : Tensor(out_f32.data(), dtype, {T, V});
  loaded.model->forward_logits(loaded.params, tokens, logits, arena);
  if (dtype == DType::F64)
    for (size_t i = 0; i < out_f32.size(); ++i) out_f32[i] = static_cast<float>(out_f64[i]);
  const std::string out = args.require("out");
  write_safetensors(out, {{"logits", Tensor(out_f32.data(), DType::F32, {T, V})}, {"tokens", Tensor(ids.data(), DType::I32, {T})}},
                    {{"format", "pt"}});
  spdlog::info("logits of {} tokens -> {}", T, out);
  if (args.flag("json")) cli::print_json_line(nlohmann::json{{"out", out}, {"tokens", T}, {"vocab_size", V}}.dump());
  return 0;
}

}  // namespace l3c::cmd
