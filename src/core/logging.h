// Logging: console messages through spdlog. `--json` commands keep stdout for their JSON line, so
// log lines go to stderr unless a command asks for stdout.
#pragma once
#include <spdlog/spdlog.h>

namespace l3c {

// Sets up the console logger ("HH:MM:SS message"); quiet hides info lines.
void init_logging(bool quiet = false);

}  // namespace l3c
