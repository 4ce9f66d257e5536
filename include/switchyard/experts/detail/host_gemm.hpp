#pragma once
/// \file Row-major GEMM on the host: CBLAS when available, plain loops otherwise.

#include <span>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/host_blas.hpp"
#include "switchyard/experts/expert_types.hpp"

namespace switchyard::detail {

/// Resolves host_gemm::automatic and checks that CBLAS is there when asked for.
inline host_gemm resolve_host_gemm(host_gemm g) {
  if (g == host_gemm::automatic) return has_cblas ? host_gemm::cblas : host_gemm::loops;
  SY_EXPECTS(g != host_gemm::cblas || has_cblas,
             "host_gemm::cblas requested, but Switchyard was built without CBLAS (link "
             "switchyard::blas, which defines SWITCHYARD_HAS_CBLAS)");
  return g;
}

/// Independent row-major GEMMs of exec/host_blas.hpp through the chosen implementation, in one
/// parallel loop (the per-expert products of a grouped GEMM).
template <class T>
void gemms(host_gemm impl, std::span<const gemm_call<T>> calls) {
  row_major_gemms<T>(resolve_host_gemm(impl) == host_gemm::cblas, calls);
}

/// The row-major GEMM of exec/host_blas.hpp through the chosen implementation.
template <class T>
void gemm(host_gemm impl, bool trans_a, bool trans_b, index_t m, index_t n, index_t k, T alpha,
          const T* a, index_t lda, const T* b, index_t ldb, T beta, T* c, index_t ldc) {
  if (m == 0 || n == 0) return;
  const bool use_cblas = k > 0 && resolve_host_gemm(impl) == host_gemm::cblas;
  row_major_gemm<T>(use_cblas, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace switchyard::detail
