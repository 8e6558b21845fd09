// A progress bar for evaluation on stderr: one redrawn line when stderr is a terminal, otherwise a log line
// every 15 seconds (and none when disabled, e.g. during training).
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace l3c {

// progress(done, total) after each unit of work.
using EvalProgressFn = std::function<void(int64_t done, int64_t total)>;

class EvalProgress {
 public:
  // label: what is measured ("arc_easy"); unit: what done counts ("examples").
  EvalProgress(std::string label, std::string unit, bool enabled = true);
  void operator()(int64_t done, int64_t total);
  EvalProgressFn fn() { return [this](int64_t done, int64_t total) { (*this)(done, total); }; }

 private:
  std::string label_, unit_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace l3c
