// Accelerator discovery; the CUDA runtime is only touched when the CUDA backend is built.
#include "kernels/device.h"

#ifdef L3C_WITH_CUDA
namespace l3c::cuda {
int device_count();
std::string device_description(int index);
}  // namespace l3c::cuda
#endif

namespace l3c {

bool built_with_cuda() {
#ifdef L3C_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef L3C_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::string cuda_device_description(int index) {
#ifdef L3C_WITH_CUDA
  return cuda::device_description(index);
#else
  (void)index;
  return "CUDA backend not built";
#endif
}

}  // namespace l3c
