// exec/host_blas.hpp: the CBLAS path (C in tiles of blas_m_block rows, the inner dimension in
// blocks of blas_k_block) against the plain loops, for every transpose combination and sizes
// around both block sizes.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include "switchyard/exec/host_blas.hpp"

namespace sy = switchyard;
using sy::index_t;

namespace {
std::vector<double> pattern(std::size_t n, unsigned seed) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<double>(static_cast<int>((i * 2654435761u + seed) % 1000) - 500) / 500.0;
  return v;
}
}  // namespace

// double: blocks only reorder sums of k ≤ 600 terms of size ≤ 1, so 1e-12 relative to k.
BOOST_AUTO_TEST_CASE(blocked_cblas_gemm_matches_loops) {
  const index_t n = 5;
  for (index_t m : {index_t{7}, sy::detail::blas_m_block, 2 * sy::detail::blas_m_block + 3})
    for (index_t k :
         {index_t{1}, sy::detail::blas_k_block, sy::detail::blas_k_block + 1, index_t{600}})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          const index_t lda = ta ? m : k, ldb = tb ? k : n;
          const auto a = pattern(static_cast<std::size_t>(m * k), 1);
          const auto b = pattern(static_cast<std::size_t>(k * n), 2);
          std::vector<double> c1 = pattern(static_cast<std::size_t>(m * n), 3), c2 = c1;
          sy::detail::row_major_gemm<double>(true, ta, tb, m, n, k, 0.5, a.data(), lda, b.data(),
                                             ldb, 2.0, c1.data(), n);
          sy::detail::row_major_gemm<double>(false, ta, tb, m, n, k, 0.5, a.data(), lda, b.data(),
                                             ldb, 2.0, c2.data(), n);
          BOOST_TEST_CONTEXT("m " << m << " k " << k << " trans_a " << ta << " trans_b " << tb) {
            for (std::size_t i = 0; i < c1.size(); ++i)
              BOOST_TEST(std::abs(c1[i] - c2[i]) <= 1e-12 * static_cast<double>(k));
          }
        }
}
