// CUDA matrix products in the nn.Linear layout, through cuBLAS (cublasGemmEx, fp32 accumulation: no TF32 for
// f32, tensor cores for bf16). cuBLAS is column-major: a row-major (R, C) matrix is its C x R transpose, so
//   out (N, M) = x (N, K) w (M, K)^T   is  out^T = w^T^T x^T:  gemm(T, N, m=M, n=N, k=K, A=w, B=x)
//   dx (N, K)  = dout (N, M) w (M, K)  is  dx^T = w^T dout^T:  gemm(N, N, m=K, n=N, k=M, A=w, B=dout)
//   dw (M, K) += dout^T x              is  dw^T += x^T dout:   gemm(N, T, m=K, n=M, k=N, A=x, B=dout)
// For a fixed problem cuBLAS picks the same kernel every time on one GPU model, so results are reproducible.
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/internal.cuh"

namespace l3c::ops::cuda {
namespace {

cudaDataType data_type(DType dtype) {
  if (dtype == DType::F32) return CUDA_R_32F;
  if (dtype == DType::BF16) return CUDA_R_16BF;
  unsupported_dtype("matmul", dtype);
}

int as_int(int64_t v, const char* what) {
  L3C_CHECK(v >= 0 && v <= INT_MAX, "ops::matmul: {} = {} does not fit cuBLAS's int", what, v);
  return static_cast<int>(v);
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a, DType a_type,
          int64_t lda, const void* b, DType b_type, int64_t ldb, float beta, void* c, DType c_type, int64_t ldc) {
  if (m == 0 || n == 0) return;
  L3C_RECORD_QUEUED("gemm", trans_a, trans_b, m, n, k, alpha, a, a_type, lda, b, b_type, ldb, beta, c, c_type, ldc);
  L3C_CUBLAS_CHECK(cublasGemmEx(cublas(), trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                as_int(m, "m"), as_int(n, "n"), as_int(k, "k"), &alpha, a, data_type(a_type),
                                as_int(lda, "lda"), b, data_type(b_type), as_int(ldb, "ldb"), &beta, c,
                                data_type(c_type), as_int(ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void linear_forward(void* out, DType out_type, const void* x, const void* w, DType in_type, int64_t n, int64_t k,
                    int64_t m, bool accumulate) {
  // out (n, m) = x (n, k) w (m, k)^T
  gemm(true, false, m, n, k, 1.0f, w, in_type, k, x, in_type, k, accumulate ? 1.0f : 0.0f, out, out_type, m);
}

void linear_backward_dx(void* dx, const void* dout, const void* w, DType type, int64_t n, int64_t k, int64_t m,
                        bool accumulate) {
  // dx (n, k) = dout (n, m) w (m, k)
  gemm(false, false, k, n, m, 1.0f, w, type, k, dout, type, m, accumulate ? 1.0f : 0.0f, dx, type, k);
}

void linear_backward_dw(void* dw, DType dw_type, const void* dout, const void* x, DType type, int64_t n, int64_t k,
                        int64_t m) {
  // dw (m, k) += dout (n, m)^T x (n, k)
  gemm(false, true, k, m, n, 1.0f, x, type, k, dout, type, m, 1.0f, dw, dw_type, k);
}

void matmul_forward(Tensor out, Tensor x, Tensor w, bool accumulate) {
  const int64_t m = w.dim(0), k = w.dim(1), n = x.numel() / k;
  linear_forward(out.data, out.dtype, x.data, w.data, x.dtype, n, k, m, accumulate);
}

void matmul_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, bool accumulate_dx) {
  const int64_t m = w.dim(0), k = w.dim(1), n = x.numel() / k;
  if (!dx.empty()) linear_backward_dx(dx.data, dout.data, w.data, x.dtype, n, k, m, accumulate_dx);
  if (!dw.empty()) linear_backward_dw(dw.data, dw.dtype, dout.data, x.data, x.dtype, n, k, m);
}

}  // namespace l3c::ops::cuda
