// The logit lens (see lens.h).
#include "eval/lens.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/file_io.h"

namespace l3c {

nlohmann::ordered_json LensResult::to_json() const {
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  const double n = static_cast<double>(std::max<int64_t>(totals.positions, 1));
  for (size_t p = 0; p < totals.points.size(); ++p) {
    const LensPoint& point = totals.points[p];
    layers.push_back({{"name", point.name()}, {"layer", point.layer}, {"l3", point.after_l3},
                      {"kl", totals.kl_sum[p] / n}, {"top1", totals.agree_sum[p] / n}});
  }
  return {{"tokens", totals.positions}, {"windows", windows}, {"seconds", seconds}, {"layers", layers}};
}

std::string LensResult::table() const {
  const double n = static_cast<double>(std::max<int64_t>(totals.positions, 1));
  std::string out = fmt::format("logit lens over {} tokens: KL(final || lens) in nats, top-1 agreement with the final\n",
                                totals.positions);
  for (size_t p = 0; p < totals.points.size(); ++p)
    out += fmt::format("  {:<20} KL {:8.4f}   top-1 {:6.2f}%\n", totals.points[p].name(), totals.kl_sum[p] / n,
                       100.0 * totals.agree_sum[p] / n);
  return out;
}

LensResult evaluate_lens(Scorer& scorer, const TextCorpus& corpus, const TextOptions& options, int64_t max_tokens) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t stride = options.stride > 0 ? options.stride : options.seq_len;
  std::vector<std::vector<ScoreRequest>> per_document;
  for (const TextDocument& d : corpus.documents) per_document.push_back(text_windows(d.ids, options.seq_len, stride));
  std::vector<ScoreRequest> requests;
  int64_t tokens = 0;
  for (size_t k = 0; max_tokens == 0 || tokens < max_tokens; ++k) {
    bool any = false;
    for (std::vector<ScoreRequest>& windows : per_document) {
      if (k >= windows.size() || (max_tokens > 0 && tokens >= max_tokens)) continue;
      ScoreRequest& w = windows[k];
      const int64_t scored = static_cast<int64_t>(w.tokens.size()) - w.first_scored;
      if (max_tokens > 0 && tokens + scored > max_tokens)  // the last window scores only what is left
        w.tokens.resize(static_cast<size_t>(w.first_scored + (max_tokens - tokens)));
      tokens += static_cast<int64_t>(w.tokens.size()) - w.first_scored;
      requests.push_back(std::move(w));
      any = true;
    }
    if (!any) break;
  }
  EvalProgress progress("lens", "windows", options.progress);
  LensResult result;
  result.totals = scorer.lens(requests, progress.fn());
  result.windows = static_cast<int64_t>(requests.size());
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

namespace {
// scripts/plot_lens.py beside the build folder the l3c binary lies in (build/l3c -> scripts/plot_lens.py).
std::string plot_script() {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (fs::path dir = exe.parent_path(); !ec && !dir.empty() && dir != dir.root_path(); dir = dir.parent_path()) {
    const fs::path script = dir / "scripts" / "plot_lens.py";
    if (fs::exists(script)) return script.string();
  }
  fail("--plot: scripts/plot_lens.py not found above {} (run the l3c of a source checkout)", exe.string());
}
}  // namespace

void plot_lens(const nlohmann::ordered_json& lens, const std::string& title, const std::string& png_path) {
  const std::string script = plot_script();
  const std::string json_path = png_path + ".json";
  write_file_atomic(json_path, nlohmann::ordered_json{{"title", title}, {"lens", lens}}.dump(2) + "\n");
  auto quote = [](const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
  };
  // The first Python 3 that has matplotlib: the one on PATH, else Debian's (apt-get install python3-matplotlib).
  const std::string command = "for p in python3 /usr/bin/python3; do if $p -c 'import matplotlib' 2>/dev/null; then "
                              "exec $p " + quote(script) + " " + quote(json_path) + " " + quote(png_path) +
                              " 2>&1; fi; done; echo 'no python3 with matplotlib found'; exit 3";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) fail("--plot: cannot run python3");
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  const int status = ::pclose(pipe);
  if (status != 0)
    fail("--plot: {} failed (it needs python3 with matplotlib: apt-get install python3-matplotlib):\n{}", script, output);
}

}  // namespace l3c
