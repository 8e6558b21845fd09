// The message of a name that is none of a choice's.
#include "core/choice.h"

#include <nlohmann/json.hpp>

#include "core/errors.h"

namespace l3c {

void fail_unknown_choice(std::string_view what, const std::string& names, std::string_view text) {
  // The text as a JSON string: quoted, and readable even when it is not valid UTF-8.
  const std::string shown =
      nlohmann::json(std::string(text)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  fail("{}: must be one of {}; got {}", what, names, shown);
}

}  // namespace l3c
