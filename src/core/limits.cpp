// Limits on input: the thread-count check (the constants are in limits.h).
#include "core/limits.h"

#include <algorithm>
#include <thread>

#include "core/errors.h"

namespace l3c::limits {

int max_threads() {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return cores * kThreadsPerCore;
}

int checked_threads(int64_t requested, std::string_view what) {
  if (requested < 0) fail("{}: must be >= 0 (0: all cores), got {}", what, requested);
  if (requested > max_threads())
    fail("{}: {} threads is more than {} ({} cores x {}); use 0 for all cores", what, requested, max_threads(),
         max_threads() / kThreadsPerCore, kThreadsPerCore);
  return static_cast<int>(requested);
}

}  // namespace l3c::limits
