#pragma once
/// \file Row-major GEMM on the host: CBLAS when available (the switchyard::blas target defines
/// SWITCHYARD_HAS_CBLAS), plain loops otherwise. Used by the router linear and the experts.

#include <climits>
#include <cstdint>
#include <type_traits>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/parallel.hpp"

#if defined(SWITCHYARD_HAS_CBLAS)
#include <cblas.h>
#endif

namespace switchyard::detail {

/// Whether this build can call CBLAS.
inline constexpr bool has_cblas =
#if defined(SWITCHYARD_HAS_CBLAS)
    true;
#else
    false;
#endif

/// C[m,n] = alpha·op(A)·op(B) + beta·C, row-major with row strides lda, ldb, ldc; op(A) is
/// [m,k], op(B) is [k,n]. beta = 0 overwrites C (NaNs in C do not propagate).
template <class T>
void gemm_loops(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
                index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  // One row of C per item: every element keeps the same order of additions on any thread count.
  exec::parallel_for(m, n * k, [&](index_t i) {
    T* ci = c + i * ldc;
    for (index_t j = 0; j < n; ++j) ci[j] = beta == T(0) ? T(0) : beta * ci[j];
    if (!trans_a && trans_b) {
      // A·Bᵀ: both operands are read along contiguous rows, so a dot product per element.
      for (index_t j = 0; j < n; ++j) {
        T s = T(0);
        for (index_t p = 0; p < k; ++p) s += a[i * lda + p] * b[j * ldb + p];
        ci[j] += alpha * s;
      }
      return;
    }
    // Otherwise a rank-1 update per p, reading rows of op(B) and C contiguously.
    for (index_t p = 0; p < k; ++p) {
      const T av = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);
      if (av == T(0)) continue;
      if (!trans_b) {
        const T* bp = b + p * ldb;
        for (index_t j = 0; j < n; ++j) ci[j] += av * bp[j];
      } else {
        for (index_t j = 0; j < n; ++j) ci[j] += av * b[j * ldb + p];
      }
    }
  });
}

/// C[m,n] = alpha·op(A)·op(B) + beta·C through CBLAS when `use_cblas` (and this build has it),
/// else through gemm_loops; empty products are handled here (CBLAS rejects leading dimensions
/// of 0).
template <class T>
void row_major_gemm(bool use_cblas, bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                    T alpha, const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c,
                    index_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0 || !has_cblas || !use_cblas) {
    gemm_loops<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
#if defined(SWITCHYARD_HAS_CBLAS)
  SY_EXPECTS(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX &&
                 ldc <= INT_MAX,
             concat("CBLAS takes 32-bit sizes; got m=", m, " n=", n, " k=", k));
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  const auto M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, static_cast<int>(lda), b,
                static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  } else {
    static_assert(std::is_same_v<T, double>, "the host backend computes in float or double");
    cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, static_cast<int>(lda), b,
                static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  }
#endif
}

}  // namespace switchyard::detail
