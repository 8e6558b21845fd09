// The CUDA seam: a build with the CUDA backend finds and describes the GPU. Without a GPU (or without
// the backend) the test exits with code 4, which CTest reports as skipped.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>

#include "kernels/device.h"

TEST_CASE("a CUDA build sees and describes its GPU", "[cuda]") {
  if (l3c::cuda_device_count() == 0) {
    std::printf("skipped: no CUDA device (%s)\n", l3c::built_with_cuda() ? "none present" : "backend not built");
    std::exit(4);
  }
  const std::string description = l3c::cuda_device_description(0);
  INFO(description);
  CHECK(description.find("sm_") != std::string::npos);
  CHECK(description.find("GiB") != std::string::npos);
}
