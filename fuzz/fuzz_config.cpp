// Fuzz target: the config reader. The input is a config file; a second part after a line "--set" holds one
// override per line. Accepted configs must convert back to JSON and read again to the same config.
#include "core/config.h"
#include "core/json_input.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace l3c;
  const std::string_view input = fuzz::as_text(data, size);
  const size_t split = input.find("\n--set\n");
  std::vector<std::string> overrides;
  if (split != std::string_view::npos) {
    std::string_view rest = input.substr(split + 7);
    while (!rest.empty()) {
      const size_t end = std::min(rest.find('\n'), rest.size());
      overrides.emplace_back(rest.substr(0, end));
      rest.remove_prefix(std::min(end + 1, rest.size()));
    }
  }
  const std::string path = fuzz::write_scratch("config.json", input.substr(0, split));
  fuzz::expect_accept_or_user_error([&] {
    const Config config = load_config(path, overrides);
    const Config again = config_from_json(config_to_json(config));
    if (nlohmann::json(config_to_json(again)) != nlohmann::json(config_to_json(config)))
      throw InternalError("the resolved config does not read back to itself");
  });
  return 0;
}
