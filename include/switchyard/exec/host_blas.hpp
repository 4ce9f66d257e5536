#pragma once
/// \file Row-major GEMM on the host: CBLAS when available (the switchyard::blas target defines
/// SWITCHYARD_HAS_CBLAS), plain loops otherwise. Used by the router linear and the experts.

#include <algorithm>
#include <climits>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

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

/// One row-major GEMM: C[m,n] = alpha·op(A)·op(B) + beta·C with row strides lda, ldb, ldc; op(A)
/// is [m,k], op(B) is [k,n]. beta = 0 overwrites C (NaNs in C do not propagate).
template <class T>
struct gemm_call {
  bool trans_a = false, trans_b = false;
  index_t m = 0, n = 0, k = 0;
  T alpha = T(1);
  const T* a = nullptr;
  index_t lda = 0;
  const T* b = nullptr;
  index_t ldb = 0;
  T beta = T(0);
  T* c = nullptr;
  index_t ldc = 0;
};

/// Row i of a GEMM by plain loops: every element keeps the same order of additions whichever
/// thread computes the row.
template <class T>
void gemm_loops_row(const gemm_call<T>& g, index_t i) {
  const index_t n = g.n, k = g.k, lda = g.lda, ldb = g.ldb;
  const T *a = g.a, *b = g.b;
  T* ci = g.c + i * g.ldc;
  for (index_t j = 0; j < n; ++j) ci[j] = g.beta == T(0) ? T(0) : g.beta * ci[j];
  if (!g.trans_a && g.trans_b) {
    // A·Bᵀ: both operands are read along contiguous rows, so a dot product per element.
    for (index_t j = 0; j < n; ++j) {
      T s = T(0);
      for (index_t p = 0; p < k; ++p) s += a[i * lda + p] * b[j * ldb + p];
      ci[j] += g.alpha * s;
    }
    return;
  }
  // Otherwise a rank-1 update per p, reading rows of op(B) and C contiguously.
  for (index_t p = 0; p < k; ++p) {
    const T av = g.alpha * (g.trans_a ? a[p * lda + i] : a[i * lda + p]);
    if (av == T(0)) continue;
    if (!g.trans_b) {
      const T* bp = b + p * ldb;
      for (index_t j = 0; j < n; ++j) ci[j] += av * bp[j];
    } else {
      for (index_t j = 0; j < n; ++j) ci[j] += av * b[j * ldb + p];
    }
  }
}

/// C = alpha·op(A)·op(B) + beta·C by plain loops, one row of C per item (any thread count gives
/// the same bits).
template <class T>
void gemm_loops(bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha, const T* a,
                index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  const gemm_call<T> g{trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc};
  exec::parallel_for(m, n * k, [&](index_t i) { gemm_loops_row(g, i); });
}

/// Largest inner dimension of one CBLAS call, and rows of C per call. A BLAS result depends on
/// how the product is cut: OpenBLAS 0.3.21 gives other bits for a row of C when the same product
/// is computed as a call of other m (its edge kernels sum in another order; measured on its Zen
/// kernels, single-threaded), and with another thread count, which splits m, n (and, threaded,
/// blocks k > 384 differently on Haswell kernels). So C is computed in fixed tiles of at most
/// blas_m_block rows × blas_n_block columns, each tile one single-threaded call, the tiles on
/// switchyard's own threads: the cut depends only on the shapes, and the result is the same for
/// any OMP_NUM_THREADS and OPENBLAS_NUM_THREADS. With OpenBLAS, whose calls run on the calling
/// thread (blas_single_thread), a tile takes the whole inner dimension in one call; with another
/// CBLAS, whose threading is its own, the inner dimension goes in blocks of 256 accumulated in
/// order (beta = 1 after the first), so that no library splits k by its thread count. Whole-k
/// calls pack each operand once instead of once per block and do not re-read C per block:
/// SwiGLU experts forward+backward at T 4096 were 5-7 % faster on one thread (bench_experts,
/// 2026-12-01). Tiles of 1024 × 2048 instead of 256 × 1024 (2026-12-08): OpenBLAS packs each
/// operand once per call, so small tiles re-pack the shared one; at the mixtral bench shape
/// (1024 rows per expert, H 1024, F 3584) the six expert GEMMs took 519 ms per expert in tiles
/// of 1024 × 2048 and 595 ms in 256 × 1024 (one thread, Intel Xeon, OpenBLAS 0.3.21). The tiles
/// of a batch run in a dynamic schedule: the experts' GEMMs differ in size.
#if defined(SWITCHYARD_HAS_CBLAS) && defined(OPENBLAS_VERSION)
inline constexpr index_t blas_k_block = index_t{1} << 40;
#else
inline constexpr index_t blas_k_block = 256;
#endif
inline constexpr index_t blas_m_block = 1024;
inline constexpr index_t blas_n_block = 2048;

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

#if defined(SWITCHYARD_HAS_CBLAS)
/// Tile `tile` of C (row-block major, blas_m_block × blas_n_block) of one GEMM through CBLAS, one
/// call per block of the inner dimension accumulated in block order (beta = 1 after the first),
/// on the calling thread (inside blas_single_thread).
template <class T>
void cblas_tile(const gemm_call<T>& g, index_t tile) {
  const exec::chunking rows{g.m, blas_m_block}, cols{g.n, blas_n_block};
  const index_t i0 = rows.begin(tile / cols.count()), j0 = cols.begin(tile % cols.count());
  const auto M = static_cast<int>(rows.end(tile / cols.count()) - i0);
  const auto N = static_cast<int>(cols.end(tile % cols.count()) - j0);
  const auto ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = g.trans_b ? CblasTrans : CblasNoTrans;
  const auto lda = static_cast<int>(g.lda), ldb = static_cast<int>(g.ldb),
             ldc = static_cast<int>(g.ldc);
  T* ct = g.c + i0 * g.ldc + j0;
  for (index_t p0 = 0; p0 < g.k; p0 += blas_k_block) {
    const auto kb = static_cast<int>(g.k - p0 < blas_k_block ? g.k - p0 : blas_k_block);
    const T* ap = g.trans_a ? g.a + p0 * g.lda + i0 : g.a + i0 * g.lda + p0;
    const T* bp = g.trans_b ? g.b + j0 * g.ldb + p0 : g.b + p0 * g.ldb + j0;
    const T bt = p0 == 0 ? g.beta : T(1);
    if constexpr (std::is_same_v<T, float>) {
      cblas_sgemm(CblasRowMajor, ta, tb, M, N, kb, g.alpha, ap, lda, bp, ldb, bt, ct, ldc);
    } else {
      static_assert(std::is_same_v<T, double>, "the host backend computes in float or double");
      cblas_dgemm(CblasRowMajor, ta, tb, M, N, kb, g.alpha, ap, lda, bp, ldb, bt, ct, ldc);
    }
  }
}
#endif

/// Several independent GEMMs (their C must not overlap, nor any C overlap another call's A or B)
/// in one parallel loop: through CBLAS when `use_cblas` (and this build has it) as fixed tiles
/// (see blas_m_block), else by gemm_loops rows. The items of every call share the threads, so
/// the many small GEMMs of a grouped GEMM (one per expert, often one tile each) run side by side;
/// each item is computed as when its call runs alone, so the bits do not depend on the batching
/// or the thread count. Empty products are handled here (CBLAS rejects leading dimensions of 0).
/// Not reentrant with other OpenBLAS callers of the process while it runs (it sets OpenBLAS's
/// thread count, see blas_single_thread).
template <class T>
void row_major_gemms(bool use_cblas, std::span<const gemm_call<T>> calls) {
  // Per call: tiles through CBLAS, or rows through the loops; items numbered call after call.
  std::vector<index_t> first(calls.size() + 1, 0);
  std::vector<char> blas(calls.size(), 0);
  double flops = 0;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const gemm_call<T>& g = calls[i];
    index_t items = 0;
    if (g.m > 0 && g.n > 0) {
      blas[i] = has_cblas && use_cblas && g.k > 0;
      if (blas[i]) {
        SY_EXPECTS(g.m <= INT_MAX && g.n <= INT_MAX && g.k <= INT_MAX && g.lda <= INT_MAX &&
                       g.ldb <= INT_MAX && g.ldc <= INT_MAX,
                   concat("CBLAS takes 32-bit sizes; got m=", g.m, " n=", g.n, " k=", g.k));
        items =
            exec::chunking{g.m, blas_m_block}.count() * exec::chunking{g.n, blas_n_block}.count();
      } else {
        items = g.m;
      }
    }
    first[i + 1] = first[i] + items;
    flops += static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k + 1);
  }
  const index_t total = first.back();
  if (total == 0) return;
  [[maybe_unused]] const blas_single_thread one_thread;
  const auto cost = static_cast<std::int64_t>(flops / static_cast<double>(total)) + 1;
  exec::parallel_for_dynamic(total, cost, [&](index_t item) {
    const auto i = static_cast<std::size_t>(std::upper_bound(first.begin(), first.end(), item) -
                                            first.begin() - 1);
    if (blas[i]) {
#if defined(SWITCHYARD_HAS_CBLAS)
      cblas_tile(calls[i], item - first[i]);
#endif
    } else {
      gemm_loops_row(calls[i], item - first[i]);
    }
  });
}

/// One GEMM through row_major_gemms: C[m,n] = alpha·op(A)·op(B) + beta·C.
template <class T>
void row_major_gemm(bool use_cblas, bool trans_a, bool trans_b, index_t m, index_t n, index_t k,
                    T alpha, const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c,
                    index_t ldc) {
  const gemm_call<T> g{trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc};
  row_major_gemms<T>(use_cblas, std::span<const gemm_call<T>>(&g, 1));
}

}  // namespace switchyard::detail
