#pragma once
/// \file Host-testable pieces of the CUDA grouped GEMM: how a row-major product is handed to a
/// column-major BLAS (cuBLAS), and when the strided-batched path applies.

#include <span>

#include "switchyard/core/mdspan.hpp"

namespace switchyard::detail {

/// Arguments of a column-major GEMM C' = op1(X1)·op2(X2) (cuBLAS's order) computing the
/// row-major C[m,n] = op(A)·op(B): a row-major matrix is its transpose in column-major, so
/// Cᵀ = op(B)ᵀ·op(A)ᵀ, i.e. X1 = B with B's transpose flag, X2 = A with A's, and m, n swapped.
struct colmajor_gemm {
  bool trans_1, trans_2;  ///< op of X1 (= B) and X2 (= A)
  index_t m, n, k;        ///< column-major sizes: m = n_rowmajor, n = m_rowmajor
  index_t ld_1, ld_2, ldc;
};

constexpr colmajor_gemm to_colmajor(bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                                    index_t lda, index_t ldb, index_t ldc) {
  return {trans_b, trans_a, n, m, k, ldb, lda, ldc};
}

/// The row count every expert shares (pad to capacity), or -1 when they differ; the
/// strided-batched path needs it. No experts or all-empty experts give 0.
inline index_t uniform_rows(std::span<const index_t> offsets) {
  const index_t E = static_cast<index_t>(offsets.size()) - 1;
  if (E <= 0) return 0;
  const index_t n = offsets[1] - offsets[0];
  for (index_t e = 1; e < E; ++e)
    if (offsets[e + 1] - offsets[e] != n) return -1;
  return n;
}

}  // namespace switchyard::detail
