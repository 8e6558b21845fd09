// The warp matrix functions the tensor-core kernels use (CUDA's <mma.h>, namespace nvcuda::wmma, as `wmma`), or their
// host emulation (emulation_wmma.h, through emulation.h) in the emulated build. bf16 WMMA needs sm_80: where the
// architecture being compiled is older, L3C_WMMA_BF16_UNAVAILABLE is defined and the kernels compile to a trap (the
// host side never picks them on such a GPU: see gpu_has_bf16_tensor_cores).
#pragma once
#include "kernels/cuda/common.cuh"
#ifndef L3C_CUDA_EMULATION
#include <mma.h>
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define L3C_WMMA_BF16_UNAVAILABLE 1
#endif

namespace l3c::ops::cuda {
namespace wmma = nvcuda::wmma;
}  // namespace l3c::ops::cuda
