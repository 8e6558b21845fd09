// Shared by the fuzz targets: the bytes libFuzzer gives, as a file or a folder that the readers open by path, and
// the rule every target checks: a reader either accepts its input or throws a UserError (bad input, exit 2).
// Anything else (a crash, a sanitizer report, another exception, such as an InternalError from a broken check) is a
// finding: the exception escapes and libFuzzer stops with the input that caused it.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

#include "core/errors.h"

namespace l3c::fuzz {

// A folder of this process (libFuzzer runs one input at a time per process).
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    spdlog::set_level(spdlog::level::off);  // the readers' log lines would drown libFuzzer's
    // Memory-backed when the machine has /dev/shm: every input is written to a file, and that is most of the time.
    const std::filesystem::path base =
        std::filesystem::is_directory("/dev/shm") ? std::filesystem::path("/dev/shm") : std::filesystem::temp_directory_path();
    const auto path = base / ("l3c_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    return path;
  }();
  return dir;
}

// Writes bytes to scratch_dir()/name and returns its path.
inline std::string write_scratch(const std::string& name, std::string_view bytes) {
  const std::filesystem::path path = scratch_dir() / name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path.string();
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

// Runs f; a UserError is the accepted way to refuse an input.
template <typename F>
void expect_accept_or_user_error(F&& f) {
  try {
    f();
  } catch (const UserError&) {
  }
}

}  // namespace l3c::fuzz
