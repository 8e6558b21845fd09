// Command-line parsing.
#include "cli.h"

#include <cstdio>
#include <iostream>

#include "core/config.h"
#include "core/errors.h"

namespace l3c::cli {
namespace {
// The value of option --name read whole by parse(text, &characters_used) (std::stoll, std::stod); anything else,
// leading or trailing, fails with "--name: expected <what>".
template <typename T, typename Parse>
T parse_whole(const std::string& name, const std::string& text, const char* what, Parse parse) {
  size_t used = 0;
  T value = 0;
  try {
    value = parse(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) fail("--{}: expected {}, got '{}'", name, what, text);
  return value;
}
}  // namespace

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = options.find(name);
  return it == options.end() ? fallback : it->second;
}

std::string Args::require(const std::string& name) const {
  auto it = options.find(name);
  if (it == options.end()) fail("missing required option --{}", name);
  return it->second;
}

int64_t Args::get_int(const std::string& name, int64_t fallback, int64_t min_value, int64_t max_value) const {
  auto it = options.find(name);
  if (it == options.end()) return fallback;
  const int64_t value = parse_whole<int64_t>(name, it->second, "an integer",
                                             [](const std::string& text, size_t* used) { return std::stoll(text, used); });
  if (value < min_value) fail("--{}: must be >= {}, got {}", name, min_value, value);
  if (value > max_value) fail("--{}: must be <= {} (l3c's limit), got {}", name, max_value, value);
  return value;
}

double Args::get_double(const std::string& name, double fallback) const {
  auto it = options.find(name);
  if (it == options.end()) return fallback;
  return parse_whole<double>(name, it->second, "a number",
                             [](const std::string& text, size_t* used) { return std::stod(text, used); });
}

std::vector<std::string> Args::overrides() const {
  std::vector<std::string> all = sets;
  auto device = options.find("device");
  if (device != options.end()) {
    parse_choice<DeviceChoice>(device->second, "--device");  // a bad name is refused here, as --device
    all.push_back("train.device=" + device->second);
  }
  return all;
}

Args parse(const std::vector<std::string>& argv, const Spec& spec) {
  Args args;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.rfind("--", 0) == 0 && a.size() > 2) {
      std::string name = a.substr(2), value;
      const bool inline_value = name.find('=') != std::string::npos;
      if (inline_value) {
        value = name.substr(name.find('=') + 1);
        name = name.substr(0, name.find('='));
      }
      if (spec.flags.count(name) && !inline_value) {
        args.flags.insert(name);
        continue;
      }
      if (name != "set" && !spec.options.count(name)) fail("unknown option --{}\nusage: {}", name, spec.usage);
      if (!inline_value) {
        if (i + 1 >= argv.size()) fail("option --{} needs a value\nusage: {}", name, spec.usage);
        value = argv[++i];
      }
      if (name == "set") args.sets.push_back(value);
      else args.options[name] = value;
    } else {
      args.positional.push_back(a);
    }
  }
  const int n = static_cast<int>(args.positional.size());
  if (n < spec.min_positional || n > spec.max_positional)
    fail("expected {} argument{}, got {}\nusage: {}",
         spec.min_positional == spec.max_positional ? std::to_string(spec.min_positional)
                                                    : fmt::format("{} to {}", spec.min_positional, spec.max_positional),
         spec.max_positional == 1 ? "" : "s", n, spec.usage);
  return args;
}

void print_json_line(const std::string& json) {
  std::cout << json << std::endl;
}

}  // namespace l3c::cli
