#pragma once
/// \file Grouped GEMM on the host: one GEMM per expert over its rows of an expert-major matrix.
/// Rows of expert e are [offsets[e], offsets[e+1]); experts with zero rows are skipped.

#include <span>
#include <type_traits>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/experts/detail/host_gemm.hpp"
#include "switchyard/experts/expert_types.hpp"

namespace switchyard {

/// Checks offsets [E+1]: starts at 0, non-decreasing, ends at `rows`.
inline void check_expert_offsets(std::span<const index_t> offsets, index_t num_experts,
                                 index_t rows) {
  SY_EXPECTS(static_cast<index_t>(offsets.size()) == num_experts + 1,
             detail::concat("offsets must hold E_local + 1 = ", num_experts + 1, " entries; got ",
                            offsets.size()));
  SY_EXPECTS(offsets[0] == 0, detail::concat("offsets[0] must be 0; got ", offsets[0]));
  for (index_t e = 0; e < num_experts; ++e)
    SY_EXPECTS(offsets[e + 1] >= offsets[e],
               detail::concat("offsets must be non-decreasing; offsets[", e, "] = ", offsets[e],
                              " > offsets[", e + 1, "] = ", offsets[e + 1]));
  SY_EXPECTS(offsets[num_experts] == rows,
             detail::concat("offsets[E_local] = ", offsets[num_experts],
                            " must equal the row count ", rows));
}

/// Runs body(e, r0, n) for every expert e with n > 0 rows starting at row r0 of offsets [E+1].
/// Serial over experts: each GEMM threads inside BLAS, which measured faster than threads over
/// experts (uneven row counts leave threads idle; see docs/building.md, OpenMP).
template <class F>
void for_each_expert_rows(std::span<const index_t> offsets, F&& body) {
  for (index_t e = 0; e + 1 < static_cast<index_t>(offsets.size()); ++e) {
    const index_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n > 0) body(e, r0, n);
  }
}

/// c[rows of e] = a[rows of e] · b[e]ᵀ + beta · c[rows of e] for every expert e.
/// a [R][K], b [E][N][K] (a weight in the fc1/fc2 layout), c [R][N], offsets [E+1].
template <class T>
void grouped_gemm(exec::Host, std::span<const index_t> offsets,
                  std::type_identity_t<matrix_view<const T>> a,
                  std::type_identity_t<tensor3_view<const T>> b, matrix_view<T> c, T beta = T(0),
                  host_gemm impl = host_gemm::automatic) {
  const index_t E = b.extent(0), N = b.extent(1), K = b.extent(2);
  check_expert_offsets(offsets, E, a.extent(0));
  SY_EXPECTS(a.extent(1) == K && c.extent(0) == a.extent(0) && c.extent(1) == N,
             detail::concat("grouped_gemm: a is [", a.extent(0), "][", a.extent(1), "], b is [", E,
                            "][", N, "][", K, "], c is [", c.extent(0), "][", c.extent(1),
                            "]; want a [R][K], c [R][N]"));
  std::vector<detail::gemm_call<T>> calls;
  for_each_expert_rows(offsets, [&](index_t e, index_t r0, index_t n) {
    calls.push_back({false, true, n, N, K, T(1), a.data_handle() + r0 * K, K,
                     b.data_handle() + e * N * K, K, beta, c.data_handle() + r0 * N, N});
  });
  detail::gemms<T>(impl, calls);
}

}  // namespace switchyard
