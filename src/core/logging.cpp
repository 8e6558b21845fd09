// Console logger set-up.
#include "core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace l3c {

void init_logging(bool quiet) {
  auto logger = spdlog::stderr_color_mt("l3c");
  logger->set_pattern("%^%H:%M:%S%$ %v");
  logger->set_level(quiet ? spdlog::level::warn : spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace l3c
