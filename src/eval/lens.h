// The logit lens on held-out text: how far the residual stream after each decoder layer and each L3 layer is from
// the model's final prediction. At every point, the final norm and the output projection turn the residual stream
// into a distribution; its KL divergence from the final distribution, KL(final || lens), is averaged over the scored
// tokens of the held-out text (windows as in src/eval/text.h). The paper's mechanism figure: sharp drops at the L3
// layers. Also reported: how often the lens's most likely token is the final one.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/scorer.h"
#include "eval/text.h"

namespace l3c {

struct LensResult {
  LensTotals totals;
  int64_t windows = 0;
  double seconds = 0.0;
  nlohmann::ordered_json to_json() const;  // {"tokens", "windows", "layers": [{"name", "layer", "l3", "kl", "top1"}]}
  std::string table() const;               // one line per point, for the log
};

// At most max_tokens scored tokens (0: all), taken window by window in turn from every document.
LensResult evaluate_lens(Scorer& scorer, const TextCorpus& corpus, const TextOptions& options, int64_t max_tokens);

// Draws the lens JSON (LensResult::to_json, or a whole `l3c eval --json` object holding it under "lens") as a PNG
// with scripts/plot_lens.py (python3 with matplotlib). UserError when it cannot.
void plot_lens(const nlohmann::ordered_json& lens, const std::string& title, const std::string& png_path);

}  // namespace l3c
