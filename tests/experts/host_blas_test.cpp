// exec/host_blas.hpp: the CBLAS path (C in tiles of blas_m_block rows; the inner dimension whole
// with OpenBLAS, else in blocks of 256) against the plain loops, for every transpose combination
// and sizes around the block sizes.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
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

// double: blocks only reorder sums of k ≤ 1500 terms of size ≤ 1, so 1e-12 relative to k.
BOOST_AUTO_TEST_CASE(blocked_cblas_gemm_matches_loops) {
  const index_t n = 5;
  for (index_t m : {index_t{7}, sy::detail::blas_m_block, 2 * sy::detail::blas_m_block + 3})
    for (index_t k : {index_t{1}, index_t{256}, index_t{257}, index_t{600}, index_t{1500}})
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

// row_major_gemms: a batch of GEMMs (the experts of a grouped GEMM) gives, bit for bit, what each
// GEMM gives alone, on any number of threads, through CBLAS and through the loops; empty products
// leave C alone and k = 0 scales C by beta.
BOOST_AUTO_TEST_CASE(a_batch_of_gemms_gives_each_gemms_own_bits) {
  using call = sy::detail::gemm_call<float>;
  struct shape {
    index_t m, n, k;
    bool ta, tb;
  };
  const std::vector<shape> shapes = {
      {24, 512, 300, false, true},
      {0, 8, 5, false, true},
      {300, 1030, 7, true, false},
      {5, 3, 0, false, false},
      {1, 1, 1, true, true},
      {257, 9, 513, false, false},
      {6, 0, 4, true, false},
      // past a tile's rows and columns (1024 × 2048): 2 × 2 tiles
      {sy::detail::blas_m_block + 76, sy::detail::blas_n_block + 52, 9, false, true}};
  const auto saved = sy::exec::min_parallel_work;
  for (const bool blas : {true, false})
    for (const std::int64_t threshold : {std::int64_t{1}, saved}) {
      sy::exec::min_parallel_work = threshold;
      std::vector<std::vector<float>> as, bs, alone, batched;
      std::vector<call> calls;
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const shape& s = shapes[i];
        const auto a64 =
            pattern(static_cast<std::size_t>(s.m * s.k), 11 + static_cast<unsigned>(i));
        const auto b64 =
            pattern(static_cast<std::size_t>(s.k * s.n), 21 + static_cast<unsigned>(i));
        const auto c64 =
            pattern(static_cast<std::size_t>(s.m * s.n), 31 + static_cast<unsigned>(i));
        as.emplace_back(a64.begin(), a64.end());
        bs.emplace_back(b64.begin(), b64.end());
        alone.emplace_back(c64.begin(), c64.end());
        batched.emplace_back(c64.begin(), c64.end());
      }
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const shape& s = shapes[i];
        const index_t lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n;
        const float beta = i % 2 ? 0.0f : 0.75f;
        sy::detail::row_major_gemm<float>(blas, s.ta, s.tb, s.m, s.n, s.k, 1.5f, as[i].data(), lda,
                                          bs[i].data(), ldb, beta, alone[i].data(), s.n);
        calls.push_back(call{s.ta, s.tb, s.m, s.n, s.k, 1.5f, as[i].data(), lda, bs[i].data(), ldb,
                             beta, batched[i].data(), s.n});
      }
      sy::detail::row_major_gemms<float>(blas, calls);
      for (std::size_t i = 0; i < shapes.size(); ++i)
        BOOST_TEST_CONTEXT("gemm " << i << (blas ? " cblas" : " loops") << " threshold "
                                   << threshold) {
          BOOST_TEST((alone[i].empty() || std::memcmp(alone[i].data(), batched[i].data(),
                                                      sizeof(float) * alone[i].size()) == 0));
        }
      // k = 0: C = beta·C (gemm 3 has beta 0: zeros).
      BOOST_TEST(std::all_of(batched[3].begin(), batched[3].end(), [](float v) { return v == 0; }));
    }
  sy::exec::min_parallel_work = saved;
}
