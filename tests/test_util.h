// Test helpers shared by the test files: host tensors that own their storage, deterministic random
// fills, conversions to double, error measures and a finite-difference gradient (CPU tensors of dtype f32, f64,
// bf16 and i32); and files and processes: fresh temporary folders, whole files, running commands and the l3c binary
// of this build, its `--json` line and its errors.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/tensor.h"

namespace l3c::test {

// The source tree the tests read (golden files, configs): $L3C_TEST_SOURCE_DIR when set, for test executables
// carried to another machine (scripts/gpu_check.sh), else the tree they were built from.
inline std::string source_dir() {
  const char* dir = std::getenv("L3C_TEST_SOURCE_DIR");
  return dir != nullptr && *dir != '\0' ? std::string(dir) : std::string(L3C_SOURCE_DIR);
}

// ---- element access in double ----------------------------------------------------------------------
inline double get_value(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::F32: return static_cast<const float*>(t.data)[i];
    case DType::F64: return static_cast<const double*>(t.data)[i];
    case DType::I32: return static_cast<const int32_t*>(t.data)[i];
    case DType::BF16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(t.data)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    }
  }
  return 0.0;
}

inline void set_value(const Tensor& t, int64_t i, double v) {
  switch (t.dtype) {
    case DType::F32: static_cast<float*>(t.data)[i] = static_cast<float>(v); return;
    case DType::F64: static_cast<double*>(t.data)[i] = v; return;
    case DType::I32: static_cast<int32_t*>(t.data)[i] = static_cast<int32_t>(v); return;
    case DType::BF16: {  // round to nearest even
      const float f = static_cast<float>(v);
      uint32_t bits;
      std::memcpy(&bits, &f, sizeof bits);
      bits += 0x7FFFu + ((bits >> 16) & 1u);
      static_cast<uint16_t*>(t.data)[i] = static_cast<uint16_t>(bits >> 16);
      return;
    }
  }
}

inline std::vector<double> to_double_vector(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = get_value(t, i);
  return out;
}

inline void set_values(const Tensor& t, const std::vector<double>& values) {
  L3C_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "set_values: {} values for a tensor {}",
            values.size(), t.shape_string());
  for (int64_t i = 0; i < t.numel(); ++i) set_value(t, i, values[i]);
}

// ---- a host tensor that owns its storage ------------------------------------------------------------
// Zero-initialised. Converts to a Tensor view (the view stays valid while the TestTensor lives; copies
// get their own storage).
class TestTensor {
 public:
  TestTensor() = default;
  TestTensor(DType dtype, std::initializer_list<int64_t> shape) : tensor_(nullptr, dtype, shape) { allocate(); }
  // Same dtype and shape as `like`, zero-filled.
  static TestTensor zeros_like(const Tensor& like) {
    TestTensor t;
    t.tensor_ = like;
    t.tensor_.device = Device::CPU;
    t.allocate();
    return t;
  }
  static TestTensor from_values(DType dtype, std::initializer_list<int64_t> shape,
                                const std::vector<double>& values) {
    TestTensor t(dtype, shape);
    set_values(t.tensor(), values);
    return t;
  }
  // A copy with the same values, converted to `dtype`.
  TestTensor converted(DType dtype) const {
    TestTensor t = zeros_like(tensor_);
    t.tensor_.dtype = dtype;
    t.allocate();
    set_values(t.tensor(), to_double_vector(tensor_));
    return t;
  }

  TestTensor(const TestTensor& other) : storage_(other.storage_), tensor_(other.tensor_) { rebind(); }
  TestTensor& operator=(const TestTensor& other) {
    storage_ = other.storage_;
    tensor_ = other.tensor_;
    rebind();
    return *this;
  }
  TestTensor(TestTensor&& other) noexcept = default;  // a moved vector keeps its buffer
  TestTensor& operator=(TestTensor&& other) noexcept = default;

  const Tensor& tensor() const { return tensor_; }
  operator Tensor() const { return tensor_; }  // NOLINT: implicit by design, tests pass it to ops
  int64_t numel() const { return tensor_.numel(); }
  double operator[](int64_t i) const { return get_value(tensor_, i); }
  void set(int64_t i, double v) const { set_value(tensor_, i, v); }
  std::vector<double> values() const { return to_double_vector(tensor_); }
  template <typename T> T* ptr() const { return tensor_.ptr<T>(); }
  std::vector<std::byte> bytes() const { return storage_; }

 private:
  void allocate() {
    storage_.assign(std::max<size_t>(tensor_.bytes(), 1), std::byte{0});
    rebind();
  }
  void rebind() { tensor_.data = storage_.empty() ? nullptr : storage_.data(); }

  std::vector<std::byte> storage_;
  Tensor tensor_;
};

// ---- deterministic random numbers -----------------------------------------------------------------
// A splitmix64 stream: the same seed gives the same numbers on every platform and standard library.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {  // Box-Muller
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t state_;
};

enum class Distribution { Normal, Uniform };

// Fills t with scale * N(0, 1) (or scale * U(-1, 1)), the same values for the same seed.
inline void random_fill(const Tensor& t, uint64_t seed, double scale = 1.0,
                        Distribution dist = Distribution::Normal) {
  SplitMix64 rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i)
    set_value(t, i, scale * (dist == Distribution::Normal ? rng.normal() : 2.0 * rng.uniform() - 1.0));
}

// Fills an i32 tensor with token ids uniform in [0, vocab).
inline void random_tokens(const Tensor& t, int64_t vocab, uint64_t seed) {
  L3C_CHECK(t.dtype == DType::I32, "random_tokens: tensor must be i32, got {}", dtype_name(t.dtype));
  SplitMix64 rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i)
    static_cast<int32_t*>(t.data)[i] = static_cast<int32_t>(rng.next() % static_cast<uint64_t>(vocab));
}

// ---- comparisons ----------------------------------------------------------------------------------
inline double norm2(const std::vector<double>& a) {
  double s = 0.0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}

// ||a - b||_2 / max(||b||_2, tiny): the error relative to the reference b as a whole.
inline double norm_relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  L3C_CHECK(a.size() == b.size(), "norm_relative_error: sizes {} and {}", a.size(), b.size());
  double diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) diff += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(diff) / std::max(norm2(b), std::numeric_limits<double>::min());
}

// ||a - b|| <= tol ||b|| + floor sqrt(n): relative, with an absolute floor per element for references that are
// (nearly) zero, where only rounding noise is left to compare.
inline bool close_values(const std::vector<double>& a, const std::vector<double>& b, double tol, double floor) {
  L3C_CHECK(a.size() == b.size(), "close_values: sizes {} and {}", a.size(), b.size());
  double diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) diff += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(diff) <= tol * norm2(b) + floor * std::sqrt(static_cast<double>(b.size()));
}

// max_i |a_i - b_i| / max(|b_i|, floor): the worst elementwise relative error, where `floor` keeps
// elements of b near zero from dominating (default: 1e-3 of the largest |b_i|; never below tiny).
inline double max_relative_error(const std::vector<double>& a, const std::vector<double>& b,
                                 double floor = -1.0) {
  L3C_CHECK(a.size() == b.size(), "max_relative_error: sizes {} and {}", a.size(), b.size());
  double largest = 0.0;
  for (double x : b) largest = std::max(largest, std::abs(x));
  if (floor < 0) floor = 1e-3 * largest;
  floor = std::max(floor, std::numeric_limits<double>::min());
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(a[i] - b[i]) / std::max(std::abs(b[i]), floor));
  return worst;
}

inline double max_abs_error(const std::vector<double>& a, const std::vector<double>& b) {
  L3C_CHECK(a.size() == b.size(), "max_abs_error: sizes {} and {}", a.size(), b.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

// sum_i a_i * b_i in double: with a fixed random b, the scalar objective whose gradient wrt a is b.
inline double dot(const Tensor& a, const Tensor& b) {
  L3C_CHECK(a.numel() == b.numel(), "dot: {} and {}", a.shape_string(), b.shape_string());
  double s = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) s += get_value(a, i) * get_value(b, i);
  return s;
}

// Bitwise equality of two tensors' contents (for determinism checks).
inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.bytes() == b.bytes() && std::memcmp(a.data, b.data, a.bytes()) == 0;
}

// ---- finite differences -----------------------------------------------------------------------------
// The numerical gradient of objective() with respect to every element of `param`, by central
// differences (f(x + h) - f(x - h)) / 2h. objective() must read the current contents of param's
// buffer (it is called with one element perturbed at a time); param is restored afterwards.
// Use f64 tensors: in f32 the step is lost in rounding.
inline std::vector<double> numerical_gradient(const Tensor& param, const std::function<double()>& objective,
                                              double step = 1e-6) {
  std::vector<double> grad(static_cast<size_t>(param.numel()));
  for (int64_t i = 0; i < param.numel(); ++i) {
    const double saved = get_value(param, i);
    set_value(param, i, saved + step);
    const double plus = objective();
    set_value(param, i, saved - step);
    const double minus = objective();
    set_value(param, i, saved);
    grad[i] = (plus - minus) / (2.0 * step);
  }
  return grad;
}

// ---- files ------------------------------------------------------------------------------------------------
// An empty folder under the system's temporary folder, named after this process (CTest runs every test case in a
// process of its own) and `name`; whatever an earlier run left there is removed first.
inline std::filesystem::path fresh_dir(const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("l3c_test_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Writes `bytes` as the whole file (creating its folder).
inline void write_text(const std::filesystem::path& path, const std::string& bytes) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

// The whole file ("" when it cannot be read).
inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// ---- running commands -------------------------------------------------------------------------------
struct CommandResult {
  int exit_code = -1;  // -1 when the command did not exit normally
  std::string output;  // stdout (and stderr when the command redirects it with 2>&1)
};

// Runs a shell command and captures its output and exit code.
inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* pipe = ::popen(command.c_str(), "r");
  L3C_CHECK(pipe != nullptr, "cannot run {}", command);
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) r.output.append(buffer, n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The l3c binary of this build.
inline std::string l3c_binary() { return std::string(L3C_BINARY_DIR) + "/l3c"; }

// Runs the l3c binary with stdout and stderr together; `env` is prepended ("VAR=value ").
inline CommandResult run_l3c(const std::string& args, const std::string& env = "") {
  return run_command(env + l3c_binary() + " " + args + " 2>&1");
}

// The last line of a command's output, parsed as JSON (what `--json` prints there).
inline nlohmann::json last_json_line(const std::string& output) {
  const auto end = output.find_last_not_of('\n');
  const auto start = output.rfind('\n', end);
  return nlohmann::json::parse(output.substr(start == std::string::npos ? 0 : start + 1, end - start));
}

// Bad input: exit code 2 and one `error:` line holding `message`, never an internal error.
inline void check_user_error(const CommandResult& r, const std::string& message) {
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.output, Catch::Matchers::Contains("error: ") && Catch::Matchers::Contains(message));
  CHECK_THAT(r.output, !Catch::Matchers::Contains("internal error"));
}

// The message of the UserError that f throws; fails the test when it throws none.
inline std::string user_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  FAIL("expected a UserError");
  return "";
}

// Polls until `done` holds (true) or `seconds` pass (false).
inline bool wait_until(const std::function<bool()>& done, double seconds = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace l3c::test
