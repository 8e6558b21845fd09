// Helpers one CUDA kernel file offers the others (device pointers, no checks).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace l3c::ops::cuda {

// The stable counting sort of grouping.cu on raw device pointers: order (n), offsets (groups + 1), keys (n).
// Returns the number of keys inside [0, groups) (read back from the device; n when all are valid).
int64_t group_by_key_device(int32_t* order, int32_t* offsets, const int32_t* keys, int64_t n, int64_t groups);
// The same sort, only queued: keys outside [0, groups) are left out of order and offsets, and nothing is read back.
void launch_group_by_key(int32_t* order, int32_t* offsets, const int32_t* keys, int64_t n, int64_t groups);

// Every place where the host waits for the device (a blocking copy in either direction, a read-back, a
// synchronisation, a free) calls this first; host_synchronizations() (cuda_ops.h) counts them.
void count_host_synchronization();

// cuBLAS GEMM (matmul.cu), column-major: C (m x n, ldc) = alpha op(A) op(B) + beta C, fp32 accumulation; the
// types are F32 or BF16 (A and B alike).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a, DType a_type,
          int64_t lda, const void* b, DType b_type, int64_t ldb, float beta, void* c, DType c_type, int64_t ldc);
// Row-major nn.Linear products: out (n, m) = x (n, k) w (m, k)^T (+= when accumulate; out may be F32 for BF16
// inputs); dx (n, k) = dout (n, m) w (m, k) (+= when accumulate); dw (m, k) += dout^T x.
void linear_forward(void* out, DType out_type, const void* x, const void* w, DType in_type, int64_t n, int64_t k,
                    int64_t m, bool accumulate);
void linear_backward_dx(void* dx, const void* dout, const void* w, DType type, int64_t n, int64_t k, int64_t m,
                        bool accumulate);
void linear_backward_dw(void* dw, DType dw_type, const void* dout, const void* x, DType type, int64_t n, int64_t k,
                        int64_t m);

// The tensor-core attention kernels (attention_flash.cu) behind attention_forward / attention_backward
// (attention.cu chooses): bf16, head_dim 64 or 128, 16-byte aligned tensors.
void attention_forward_tensor_cores(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v);
void attention_backward_tensor_cores(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                     Tensor out, Tensor lse);

}  // namespace l3c::ops::cuda
