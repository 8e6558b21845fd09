// Settings of the GPU path that are checked without a GPU: bf16 training refused on a GPU without bf16 tensor
// cores (the check takes the compute capability), and the values L3C_CUDA_SYNC accepts.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <optional>
#include <string>

#include "core/errors.h"
#include "kernels/device.h"
#include "runtime/device.h"

using Catch::Matchers::Contains;

namespace {
// Sets an environment variable for the scope of a test and restores what was there.
class EnvironmentScope {
 public:
  EnvironmentScope(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) saved_ = old;
    setenv(name, value, 1);
  }
  ~EnvironmentScope() {
    if (saved_) setenv(name_, saved_->c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};
}  // namespace

TEST_CASE("train.precision bf16 needs compute capability 8.0 or newer, with one clear error below", "[device]") {
  CHECK_NOTHROW(l3c::require_bf16_capable(8, 0, "NVIDIA A100"));
  CHECK_NOTHROW(l3c::require_bf16_capable(8, 9, "NVIDIA L40S"));
  CHECK_NOTHROW(l3c::require_bf16_capable(9, 0, "NVIDIA H200"));
  CHECK_NOTHROW(l3c::require_bf16_capable(10, 0, "NVIDIA B200"));
  for (auto [major, minor] : {std::pair{7, 5}, std::pair{7, 0}, std::pair{6, 1}}) {
    INFO("sm_" << major << minor);
    REQUIRE_THROWS_AS(l3c::require_bf16_capable(major, minor, "Tesla T4"), l3c::UserError);
    REQUIRE_THROWS_WITH(l3c::require_bf16_capable(major, minor, "Tesla T4"),
                        Contains("train.precision \"bf16\"") && Contains("Tesla T4") &&
                            Contains(std::to_string(major) + "." + std::to_string(minor)) && Contains("8.0") &&
                            Contains("train.precision \"fp32\""));
  }
}

TEST_CASE("L3C_CUDA_SYNC accepts unset, 0 and 1, and refuses anything else with one clear error", "[device]") {
  {
    EnvironmentScope unset("L3C_CUDA_SYNC", "");
    unsetenv("L3C_CUDA_SYNC");
    CHECK_FALSE(l3c::cuda_sync_after_launch());
  }
  {
    EnvironmentScope off("L3C_CUDA_SYNC", "0");
    CHECK_FALSE(l3c::cuda_sync_after_launch());
  }
  {
    EnvironmentScope on("L3C_CUDA_SYNC", "1");
    CHECK(l3c::cuda_sync_after_launch());
  }
  for (const char* bad : {"yes", "2", "", "1 ", "true"}) {
    INFO("L3C_CUDA_SYNC='" << bad << "'");
    EnvironmentScope scope("L3C_CUDA_SYNC", bad);
    REQUIRE_THROWS_AS(l3c::cuda_sync_after_launch(), l3c::UserError);
    REQUIRE_THROWS_WITH(l3c::cuda_sync_after_launch(),
                        Contains("L3C_CUDA_SYNC must be 0 or 1") && Contains("\"" + std::string(bad) + "\""));
  }
}
