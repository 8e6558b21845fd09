// L3C_HOST_DEVICE marks a function that the CPU backend and the CUDA kernels share: host and device code under
// nvcc, plain C++ elsewhere (the CPU backend, and the .cu files built against the host emulation of CUDA, where
// __CUDACC__ is not defined).
#pragma once

#ifdef __CUDACC__
#define L3C_HOST_DEVICE __host__ __device__
#else
#define L3C_HOST_DEVICE
#endif
