// Evaluation progress bar.
#include "eval/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <spdlog/spdlog.h>

namespace l3c {

EvalProgress::EvalProgress(std::string label, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), enabled_(enabled), tty_(::isatty(2) == 1),
      start_(std::chrono::steady_clock::now()), last_(start_) {}

void EvalProgress::operator()(int64_t done, int64_t total) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const bool final = done >= total;
  if (!final && std::chrono::duration<double>(now - last_).count() < (tty_ ? 0.1 : 15.0)) return;
  last_ = now;
  const double elapsed = std::max(std::chrono::duration<double>(now - start_).count(), 1e-9);
  const double fraction = total > 0 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 1.0;
  const double rate = static_cast<double>(done) / elapsed;
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %5.1f%% %lld/%lld %s | %.1f %s/s", label_.c_str(),
                 std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(kWidth - filled), '.').c_str(), 100.0 * fraction,
                 static_cast<long long>(done), static_cast<long long>(total), unit_.c_str(), rate, unit_.c_str());
    if (final) std::fputc('\n', stderr);
    std::fflush(stderr);
  } else if (!final) {
    spdlog::info("{}: {:.1f}% ({} of {} {}, {:.1f}/s)", label_, 100.0 * fraction, done, total, unit_, rate);
  }
}

}  // namespace l3c
