// Command-line parsing shared by the `l3c` subcommands: positional arguments, `--name value` options,
// `--flag` switches and repeated `--set key=value` overrides. Anything unknown is a UserError.
#pragma once
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace l3c::cli {

struct Spec {
  std::set<std::string> options;  // take a value: "--data X"
  std::set<std::string> flags;    // no value: "--json"
  int min_positional = 0;
  int max_positional = 0;
  std::string usage;
};

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  std::set<std::string> flags;
  std::vector<std::string> sets;  // "--set a.b=c", in order

  bool flag(const std::string& name) const { return flags.count(name) != 0; }
  bool has(const std::string& name) const { return options.count(name) != 0; }
  std::string get(const std::string& name, const std::string& fallback) const;
  std::string require(const std::string& name) const;
  // An integer option in [min_value, max_value] (the upper bound: a limit of src/core/limits.h, so that a value from
  // the command line cannot size an allocation or overflow a product); UserError naming the option otherwise.
  int64_t get_int(const std::string& name, int64_t fallback, int64_t min_value,
                  int64_t max_value = std::numeric_limits<int64_t>::max()) const;
  double get_double(const std::string& name, double fallback) const;
  // The config overrides: every --set, then --device D as train.device=D (when the command takes --device).
  std::vector<std::string> overrides() const;
};

// argv excludes the program and subcommand names. "--set" is always accepted.
Args parse(const std::vector<std::string>& argv, const Spec& spec);

// Prints one JSON object as the last line of stdout (for `--json`).
void print_json_line(const std::string& json);

}  // namespace l3c::cli
