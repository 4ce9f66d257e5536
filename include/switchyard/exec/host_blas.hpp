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

/// Largest inner dimension of one CBLAS call, and rows of C per call. A BLAS result depends on
/// how the product is cut: OpenBLAS 0.3.21 gives other bits for a row of C when the same product
/// is computed as a call of other m (its edge kernels sum in another order; measured on its Zen
/// kernels, single-threaded), with another inner-dimension blocking (k > 384 on Haswell kernels)
/// and with another thread count, which splits m and n between its threads. So C is computed in
/// fixed tiles of at most blas_m_block rows × blas_n_block columns × blas_k_block of k, each tile
/// one single-threaded
/// call, the tiles on switchyard's own threads: the cut depends only on the shapes, and the
/// result is the same for any OMP_NUM_THREADS and OPENBLAS_NUM_THREADS.
inline constexpr index_t blas_k_block = 256;
inline constexpr index_t blas_m_block = 256;
inline constexpr index_t blas_n_block = 1024;

#if defined(SWITCHYARD_HAS_CBLAS) && defined(OPENBLAS_VERSION)
/// While alive, OpenBLAS computes each call on the calling thread; the previous thread count is
/// restored after. (Other BLAS libraries: their own threading is left alone.)
class blas_single_thread {
 public:
  blas_single_thread() : before_(openblas_get_num_threads()) {
    if (before_ != 1) openblas_set_num_threads(1);
  }
  blas_single_thread(const blas_single_thread&) = delete;
  blas_single_thread& operator=(const blas_single_thread&) = delete;
  ~blas_single_thread() {
    if (before_ != 1) openblas_set_num_threads(before_);
  }

 private:
  int before_;
};
#else
struct blas_single_thread {};
#endif

/// C[m,n] = alpha·op(A)·op(B) + beta·C through CBLAS when `use_cblas` (and this build has it),
/// else through gemm_loops; empty products are handled here (CBLAS rejects leading dimensions
/// of 0). Not reentrant with other OpenBLAS callers of the process while it runs (it sets
/// OpenBLAS's thread count, see blas_single_thread).
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
  const auto LDA = static_cast<int>(lda), LDB = static_cast<int>(ldb), LDC = static_cast<int>(ldc);
  const blas_single_thread one_thread;
  const exec::chunking rows{m, blas_m_block}, cols{n, blas_n_block};
  // One tile of C per item; inside it one call per block of the inner dimension, accumulated in
  // block order (beta = 1 after the first).
  exec::parallel_for(
      rows.count() * cols.count(), blas_m_block * blas_n_block * k, [&](index_t tile) {
        const index_t i0 = rows.begin(tile / cols.count()), j0 = cols.begin(tile % cols.count());
        const auto M = static_cast<int>(rows.end(tile / cols.count()) - i0);
        const auto N = static_cast<int>(cols.end(tile % cols.count()) - j0);
        T* ct = c + i0 * ldc + j0;
        for (index_t p0 = 0; p0 < k; p0 += blas_k_block) {
          const auto kb = static_cast<int>(k - p0 < blas_k_block ? k - p0 : blas_k_block);
          const T* ap = trans_a ? a + p0 * lda + i0 : a + i0 * lda + p0;
          const T* bp = trans_b ? b + j0 * ldb + p0 : b + p0 * ldb + j0;
          const T bt = p0 == 0 ? beta : T(1);
          if constexpr (std::is_same_v<T, float>) {
            cblas_sgemm(CblasRowMajor, ta, tb, M, N, kb, alpha, ap, LDA, bp, LDB, bt, ct, LDC);
          } else {
            static_assert(std::is_same_v<T, double>,
                          "the host backend computes in float or double");
            cblas_dgemm(CblasRowMajor, ta, tb, M, N, kb, alpha, ap, LDA, bp, LDB, bt, ct, LDC);
          }
        }
      });
#endif
}

}  // namespace switchyard::detail
