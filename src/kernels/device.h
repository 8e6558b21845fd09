// Which accelerators this build can use. Without the CUDA backend (L3C_CUDA=OFF) or without a GPU,
// cuda_device_count() is 0.
#pragma once
#include <string>

namespace l3c {

bool built_with_cuda();
int cuda_device_count();
// "NVIDIA H100 80GB HBM3, 79.1 GiB, sm_90" for device `index`.
std::string cuda_device_description(int index);

}  // namespace l3c
