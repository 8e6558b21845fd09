// Throughput accounting: the CPU's measured matrix-product peak (the denominator of MFU on the CPU),
// thread set-up, and human-readable durations.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace l3c {

// Sets the OpenMP thread count (0: all cores) and returns the count in force. A count above limits::max_threads()
// is a UserError naming `what` (OpenMP fails inside its runtime with 100000 threads).
int configure_threads(int64_t requested, std::string_view what = "train.threads");

// FLOP/s of a large single-precision matrix product on the current thread count (Eigen), the best of
// a few repetitions: the CPU "peak" against which MFU is reported. L3C_CPU_PEAK_GFLOPS=X in the
// environment gives it instead (X GFLOP/s), skipping the measurement.
double measure_cpu_peak_flops();

// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

}  // namespace l3c
