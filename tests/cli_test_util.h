// Helpers for the tests that run the l3c binary (test_cli.cpp, test_paper_configs.cpp): running it with its
// output captured, and reading the JSON object that `--json` prints as the last line of stdout.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace l3c::test {

// Runs the l3c binary of this build with stdout and stderr together.
inline CommandResult run_l3c(const std::string& args) {
  return run_command(std::string(L3C_BINARY_DIR) + "/l3c " + args + " 2>&1");
}

// The last line of a command's output, parsed as JSON (what `--json` prints there).
inline nlohmann::json last_json_line(const std::string& output) {
  const auto end = output.find_last_not_of('\n');
  const auto start = output.rfind('\n', end);
  return nlohmann::json::parse(output.substr(start == std::string::npos ? 0 : start + 1, end - start));
}

}  // namespace l3c::test
