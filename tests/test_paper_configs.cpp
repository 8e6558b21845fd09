// The shipped configs of the paper's models (configs/paper) and of its ablations (configs/ablations): every one
// resolves with `l3c inspect`, every paper model has the paper's active and total parameter counts within 2%,
// and every iso-sparse MoE matches its L3 model within 2% (`l3c inspect --match`).
#include <catch2/catch.hpp>

#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
using l3c::test::last_json_line;
using l3c::test::run_l3c;

namespace {

constexpr double kTolerance = 0.02;  // the paper gives its counts to two or three significant figures

// The paper's table (arXiv 2601.21461): active and total parameters of each model. An iso-sparse MoE has the
// counts of the L3 model it is matched with. The trailing comments are what `l3c inspect` gives today.
struct PaperCounts {
  double active;
  double total;
};
const std::map<std::string, PaperCounts>& paper_counts() {
  static const std::map<std::string, PaperCounts> counts = {
      {"dense_800m.json", {809e6, 809e6}},     // 806.5M (-0.3%)
      {"l3_800m.json", {803e6, 3.1e9}},        // 814.9M (+1.5%), 3046.8M (-1.7%)
      {"moe_800m.json", {803e6, 3.1e9}},       // 802.8M (-0.0%), 3077.6M (-0.7%)
      {"l3x3_800m.json", {818e6, 5.2e9}},      // 830.1M (+1.5%), 5293.9M (+1.8%)
      {"moe_x3_800m.json", {818e6, 5.2e9}},    // 822.7M (+0.6%), 5258.2M (+1.1%)
      {"dense_1.5b.json", {1.5e9, 1.5e9}},     // 1501.8M (+0.1%)
      {"l3_1.5b.json", {1.5e9, 4.6e9}},        // 1499.3M (-0.0%), 4568.1M (-0.7%)
      {"moe_1.5b.json", {1.5e9, 4.6e9}},       // 1476.2M (-1.6%), 4590.4M (-0.2%)
      {"dense_2.6b.json", {2.6e9, 2.6e9}},     // 2594.4M (-0.2%)
      {"l3_2.6b.json", {2.6e9, 7e9}},          // 2596.5M (-0.1%), 7060.3M (+0.9%)
      {"moe_2.6b.json", {2.6e9, 7e9}},         // 2594.8M (-0.2%), 7058.5M (+0.8%)
  };
  return counts;
}

fs::path source_dir() { return fs::path(L3C_SOURCE_DIR); }

// The .json files under `folder` (recursively), sorted.
std::vector<fs::path> configs_under(const fs::path& folder) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(folder))
    if (entry.is_regular_file() && entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

double relative_difference(double value, double reference) { return value / reference - 1.0; }

}  // namespace

TEST_CASE("the paper's models have the paper's active and total parameter counts within 2%", "[cli][paper]") {
  const std::vector<fs::path> configs = configs_under(source_dir() / "configs" / "paper");
  // every model of the paper's table has its config, and every config in configs/paper is in the table
  std::vector<std::string> names;
  for (const fs::path& config : configs) names.push_back(config.filename().string());
  for (const auto& [name, counts] : paper_counts()) {
    INFO(name);
    CHECK(std::find(names.begin(), names.end(), name) != names.end());
  }
  for (const fs::path& config : configs) {
    const std::string name = config.filename().string();
    INFO(name);
    const auto paper = paper_counts().find(name);
    if (paper == paper_counts().end()) {
      FAIL_CHECK(name << " is not in the table: add the paper's counts for it to paper_counts()");
      continue;
    }
    const l3c::test::CommandResult r = run_l3c("inspect " + config.string() + " --json");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    const nlohmann::json counts = last_json_line(r.output);
    const double active = counts["active_params"].get<double>();
    const double total = counts["total_params"].get<double>();
    INFO("active " << active << " vs the paper's " << paper->second.active << ", total " << total
                   << " vs the paper's " << paper->second.total);
    CHECK(std::abs(relative_difference(active, paper->second.active)) < kTolerance);
    CHECK(std::abs(relative_difference(total, paper->second.total)) < kTolerance);
    CHECK(active <= total);
  }
}

TEST_CASE("each paper MoE is iso-sparse with its L3 model within 2% (inspect --match)", "[cli][paper][moe]") {
  const fs::path paper = source_dir() / "configs" / "paper";
  const std::vector<std::pair<std::string, std::string>> pairs = {{"moe_800m.json", "l3_800m.json"},
                                                                   {"moe_x3_800m.json", "l3x3_800m.json"},
                                                                   {"moe_1.5b.json", "l3_1.5b.json"},
                                                                   {"moe_2.6b.json", "l3_2.6b.json"}};
  for (const auto& [moe, l3] : pairs) {
    INFO(moe << " --match " << l3);
    const l3c::test::CommandResult r =
        run_l3c("inspect " + (paper / moe).string() + " --match " + (paper / l3).string() + " --json");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    const nlohmann::json match = last_json_line(r.output)["match"];
    CHECK(std::abs(match["active_diff_percent"].get<double>()) < 100 * kTolerance);
    CHECK(std::abs(match["total_diff_percent"].get<double>()) < 100 * kTolerance);
  }
}

TEST_CASE("every config under configs/paper and configs/ablations resolves and says what it is", "[cli][paper]") {
  std::vector<fs::path> configs = configs_under(source_dir() / "configs" / "paper");
  const std::vector<fs::path> ablations = configs_under(source_dir() / "configs" / "ablations");
  CHECK(ablations.size() >= 11);
  configs.insert(configs.end(), ablations.begin(), ablations.end());
  for (const fs::path& config : configs) {
    INFO(config.string());
    const nlohmann::json file = nlohmann::json::parse(std::ifstream(config));
    CHECK(file.contains("description"));
    CHECK(file.value("description", std::string()).size() > 40);
    const l3c::test::CommandResult r = run_l3c("inspect " + config.string() + " --json");
    INFO(r.output);
    CHECK(r.exit_code == 0);
    if (r.exit_code == 0) CHECK(last_json_line(r.output)["total_params"].get<double>() > 0);
  }
}
