// CUDA runtime queries: how many GPUs, and what they are.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

namespace l3c::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error: no driver or no device means no GPU
    return 0;
  }
  return count;
}

std::string device_description(int index) {
  cudaDeviceProp prop{};
  char text[512];
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) {
    std::snprintf(text, sizeof text, "device %d: unavailable", index);
  } else {
    std::snprintf(text, sizeof text, "%s, %.1f GiB, sm_%d%d", prop.name, prop.totalGlobalMem / 1073741824.0, prop.major,
                  prop.minor);
  }
  return text;
}

}  // namespace l3c::cuda
