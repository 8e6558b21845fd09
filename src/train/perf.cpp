// CPU peak measurement and thread configuration.
#include "train/perf.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>

// GCC 12 reports false "may be used uninitialized" warnings inside Eigen's AVX-512 kernels (as in matmul.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Dense>
#include <fmt/format.h>

#include "core/limits.h"

namespace l3c {

int configure_threads(int64_t requested, std::string_view what) {
  if (limits::checked_threads(requested, what) > 0) omp_set_num_threads(static_cast<int>(requested));
  return omp_get_max_threads();
}

double measure_cpu_peak_flops() {
  // A peak given in the environment (GFLOP/s) saves the measurement: for machines whose peak is known, and
  // for tests that start many short runs.
  if (const char* given = std::getenv("L3C_CPU_PEAK_GFLOPS")) {
    char* end = nullptr;
    const double gflops = std::strtod(given, &end);
    if (end != given && *end == '\0' && gflops > 0) return gflops * 1e9;
  }
  // Best of several 1024^3 products (~2 GFLOP each): the best repetition is the one least disturbed by
  // other processes, which matters on shared machines.
  const int n = 1024;
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Matrix a = Matrix::Constant(n, n, 0.5f), b = Matrix::Constant(n, n, 0.25f), c(n, n);
  double best = 0.0;
  for (int rep = 0; rep < 10; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    c.noalias() = a * b;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, 2.0 * n * n * n / seconds);
  }
  return best;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(std::llround(std::max(seconds, 0.0)));
  if (s >= 3600) return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

}  // namespace l3c
