#pragma once
/// \file Row-major GEMMs through cuBLAS (column-major) with fp32 accumulation, and the storage
/// types of the CUDA experts. nvcc only.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <type_traits>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/cublas.cuh"
#include "switchyard/experts/detail/colmajor.hpp"

namespace switchyard::detail {

/// Storage types the CUDA experts accept; they all compute in fp32.
template <class T>
inline constexpr bool is_cuda_storage_v =
    std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

template <class T>
constexpr cudaDataType_t cuda_data_type() {
  static_assert(is_cuda_storage_v<T>, "CUDA experts store float, __nv_bfloat16 or __half");
  if constexpr (std::is_same_v<T, float>)
    return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return CUDA_R_16BF;
  else
    return CUDA_R_16F;
}

__device__ inline float to_float(float x) {
  return x;
}
__device__ inline float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ inline float to_float(__half x) {
  return __half2float(x);
}

template <class T>
__device__ inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(x);
  else
    return __float2half_rn(x);
}

/// One operand of a row-major GEMM: pointer, element type, row stride, batch stride.
struct gemm_operand {
  const void* ptr;
  cudaDataType_t type;
  index_t ld;
  index_t stride = 0;  // elements between batches (strided-batched only)
};

inline int to_int(index_t v, const char* what) {
  SY_EXPECTS(v >= 0 && v <= INT_MAX, concat("cuBLAS takes 32-bit sizes; ", what, " = ", v));
  return static_cast<int>(v);
}

/// Row-major C[m,n] = op(A)[m,k]·op(B)[k,n] + beta·C with fp32 accumulation
/// (CUBLAS_COMPUTE_32F: no TF32), as the column-major product Cᵀ = op(B)ᵀ·op(A)ᵀ.
/// batch > 1 uses cublasGemmStridedBatchedEx with the operands' strides.
inline void gemm_rm(cublasHandle_t h, bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                    gemm_operand a, gemm_operand b, float beta, void* c, cudaDataType_t c_type,
                    index_t ldc, index_t c_stride = 0, index_t batch = 1) {
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0 && beta == 1.0f) return;  // nothing to add
  const float alpha = 1.0f;
  const colmajor_gemm g = to_colmajor(trans_a, trans_b, m, n, k, a.ld, b.ld, ldc);
  const cublasOperation_t op_1 = g.trans_1 ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_2 = g.trans_2 ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (batch == 1) {
    SY_CUBLAS_TRY(cublasGemmEx(h, op_1, op_2, to_int(g.m, "n"), to_int(g.n, "m"), to_int(g.k, "k"),
                               &alpha, b.ptr, b.type, to_int(g.ld_1, "ldb"), a.ptr, a.type,
                               to_int(g.ld_2, "lda"), &beta, c, c_type, to_int(g.ldc, "ldc"),
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    SY_CUBLAS_TRY(cublasGemmStridedBatchedEx(
        h, op_1, op_2, to_int(g.m, "n"), to_int(g.n, "m"), to_int(g.k, "k"), &alpha, b.ptr, b.type,
        to_int(g.ld_1, "ldb"), b.stride, a.ptr, a.type, to_int(g.ld_2, "lda"), a.stride, &beta, c,
        c_type, to_int(g.ldc, "ldc"), c_stride, to_int(batch, "batch"), CUBLAS_COMPUTE_32F,
        CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace switchyard::detail
