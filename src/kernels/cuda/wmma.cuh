// The warp matrix functions the tensor-core kernels use (CUDA's <mma.h>, namespace nvcuda::wmma, as `wmma`), or their
// host emulation (emulation_wmma.h, through emulation.h) in the emulated build. bf16 WMMA needs sm_80: where the
// architecture being compiled is older, L3C_WMMA_BF16_UNAVAILABLE is defined and the kernels compile to a trap (the
// host side never picks them on such a GPU: see gpu_has_bf16_tensor_cores).
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels/cuda/common.cuh"
#ifndef L3C_CUDA_EMULATION
#include <mma.h>
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define L3C_WMMA_BF16_UNAVAILABLE 1
#endif

namespace l3c::ops::cuda {
namespace wmma = nvcuda::wmma;

// Copies 8 bf16 (16 bytes) from src to dst (16-byte aligned) when src is 16-byte aligned; false, copying nothing,
// when it is not, and for f32 sources (which need rounding).
__device__ __forceinline__ bool copy16_if_aligned(bf16* dst, const bf16* src) {
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) return false;
#ifdef L3C_CUDA_EMULATION
  std::memcpy(dst, src, 16);
#else
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
  return true;
}
__device__ __forceinline__ bool copy16_if_aligned(bf16*, const float*) { return false; }

// A shared bf16 operand tile of kRows x kCols (leading dimension kLd, a multiple of 8, from a 16-byte boundary):
// element (r, c) = src[r * stride + c] for r < rows and c < cols, else 0, so a ragged tile is zero-padded and
// nothing past rows or cols is read. bf16 sources are copied 16 bytes at a time where the address allows, f32 ones
// rounded. Every thread of the block (kThreads of them) takes part.
template <int kRows, int kCols, int kLd, int kThreads, typename S>
__device__ __forceinline__ void load_bf16_tile(bf16* tile, const S* src, int64_t stride, int rows, int cols) {
  static_assert(kCols % 8 == 0 && kLd % 8 == 0 && kLd >= kCols, "rows of whole 16-byte chunks");
  constexpr int kChunksPerRow = kCols / 8;
  for (int idx = threadIdx.x; idx < kRows * kChunksPerRow; idx += kThreads) {
    const int r = idx / kChunksPerRow, c0 = idx % kChunksPerRow * 8;
    bf16* dst = tile + r * kLd + c0;
    const S* row = src + static_cast<int64_t>(r) * stride + c0;
    if (r < rows && c0 + 8 <= cols && copy16_if_aligned(dst, row)) continue;
    for (int c = 0; c < 8; ++c) dst[c] = from_float<bf16>(r < rows && c0 + c < cols ? to_float(row[c]) : 0.0f);
  }
}

}  // namespace l3c::ops::cuda
