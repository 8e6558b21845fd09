// Errors: the two kinds the trainer raises, and how their messages show sizes.
//  - UserError: bad input (config, data, checkpoint, command line). One clear message, exit code 2.
//  - InternalError (via L3C_CHECK): a broken invariant inside the trainer, with file and line, exit code 1.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace l3c {

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct InternalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws a UserError with a formatted message: fail("data.seq_len: must be >= 1, got {}", n).
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw UserError(fmt::format(format, std::forward<Args>(args)...));
}

// A byte count as messages and logs show it: "1.50 GiB", "12.00 MiB", "512 B".
inline std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024.0 && unit < 4) {
    bytes /= 1024.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[unit]);
}

}  // namespace l3c

// An invariant check that names the file and line; for conditions bad input cannot cause.
#define L3C_CHECK(cond, ...)                                                                      \
  do {                                                                                            \
    if (!(cond))                                                                                  \
      throw ::l3c::InternalError(fmt::format("{}:{}: check failed: {}: {}", __FILE__, __LINE__,  \
                                             #cond, fmt::format(__VA_ARGS__)));                   \
  } while (0)
