// The row-major → column-major mapping the CUDA grouped GEMM hands to cuBLAS, checked on the host
// against a column-major GEMM written from the BLAS definition, for every transpose and for the
// strided-batched calls of the expert forward and backward.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <vector>

#include "switchyard/experts/detail/colmajor.hpp"

namespace sy = switchyard;
using sy::index_t;

namespace {

/// Column-major C = op1(X1)·op2(X2) + beta·C as BLAS defines it (element (i, j) at i + j·ld).
void blas_colmajor(const sy::detail::colmajor_gemm& g, const double* x1, const double* x2,
                   double beta, double* c) {
  for (index_t j = 0; j < g.n; ++j)
    for (index_t i = 0; i < g.m; ++i) {
      double s = 0;
      for (index_t p = 0; p < g.k; ++p)
        s += (g.trans_1 ? x1[p + i * g.ld_1] : x1[i + p * g.ld_1]) *
             (g.trans_2 ? x2[j + p * g.ld_2] : x2[p + j * g.ld_2]);
      c[i + j * g.ldc] = s + beta * c[i + j * g.ldc];
    }
}

/// What detail::gemm_rm does, with the column-major GEMM above in place of cuBLAS.
void gemm_rm_emulated(bool ta, bool tb, index_t m, index_t n, index_t k, const double* a,
                      index_t lda, index_t sa, const double* b, index_t ldb, index_t sb,
                      double beta, double* c, index_t ldc, index_t sc, index_t batch) {
  const auto g = sy::detail::to_colmajor(ta, tb, m, n, k, lda, ldb, ldc);
  for (index_t i = 0; i < batch; ++i) blas_colmajor(g, b + i * sb, a + i * sa, beta, c + i * sc);
}

std::vector<double> seq(index_t n, double f) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) v[i] = std::sin(f * double(i + 1));
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(row_major_products_map_to_column_major_for_every_transpose) {
  const index_t m = 4, n = 6, k = 5;
  const auto a = seq(m * k, 0.37), b = seq(k * n, 0.91);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      std::vector<double> c(m * n, 1.0);
      gemm_rm_emulated(ta, tb, m, n, k, a.data(), ta ? m : k, 0, b.data(), tb ? k : n, 0, 0.5,
                       c.data(), n, 0, 1);
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < n; ++j) {
          double s = 0.5;
          for (index_t p = 0; p < k; ++p)
            s += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
          BOOST_TEST(c[i * n + j] == s, boost::test_tools::tolerance(1e-13));
        }
    }
}

// The three strided-batched shapes of detail::expert_*_cuda with E experts of nu rows each.
BOOST_AUTO_TEST_CASE(strided_batched_expert_calls_compute_the_per_expert_products) {
  const index_t E = 3, nu = 4, K = 5, N = 6;
  const auto x = seq(E * nu * K, 0.23), w = seq(E * N * K, 0.71), dy = seq(E * nu * N, 0.53);
  // Forward: out[rows of e] = x[rows of e]·W_eᵀ, W [E][N][K].
  std::vector<double> out(E * nu * N, 0.0);
  gemm_rm_emulated(false, true, nu, N, K, x.data(), K, nu * K, w.data(), K, N * K, 0.0, out.data(),
                   N, nu * N, E);
  // Weight gradient: gw_e[N][K] += dy_eᵀ·x_e.
  std::vector<double> gw(E * N * K, 1.0);
  gemm_rm_emulated(true, false, N, K, nu, dy.data(), N, nu * N, x.data(), K, nu * K, 1.0, gw.data(),
                   K, N * K, E);
  // Input gradient: dx[rows of e] = dy_e·W_e.
  std::vector<double> dx(E * nu * K, 0.0);
  gemm_rm_emulated(false, false, nu, K, N, dy.data(), N, nu * N, w.data(), K, N * K, 0.0, dx.data(),
                   K, nu * K, E);
  for (index_t e = 0; e < E; ++e) {
    for (index_t r = e * nu; r < (e + 1) * nu; ++r) {
      for (index_t j = 0; j < N; ++j) {
        double s = 0;
        for (index_t p = 0; p < K; ++p) s += x[r * K + p] * w[(e * N + j) * K + p];
        BOOST_TEST(out[r * N + j] == s, boost::test_tools::tolerance(1e-13));
      }
      for (index_t p = 0; p < K; ++p) {
        double s = 0;
        for (index_t j = 0; j < N; ++j) s += dy[r * N + j] * w[(e * N + j) * K + p];
        BOOST_TEST(dx[r * K + p] == s, boost::test_tools::tolerance(1e-13));
      }
    }
    for (index_t j = 0; j < N; ++j)
      for (index_t p = 0; p < K; ++p) {
        double s = 1.0;
        for (index_t r = e * nu; r < (e + 1) * nu; ++r) s += dy[r * N + j] * x[r * K + p];
        BOOST_TEST(gw[(e * N + j) * K + p] == s, boost::test_tools::tolerance(1e-13));
      }
  }
}

BOOST_AUTO_TEST_CASE(uniform_rows_detects_pad_to_capacity) {
  const std::vector<index_t> equal = {0, 8, 16, 24}, uneven = {0, 8, 8, 24}, none = {0};
  const std::vector<index_t> empty = {0, 0, 0};
  BOOST_TEST(sy::detail::uniform_rows(equal) == 8);
  BOOST_TEST(sy::detail::uniform_rows(uneven) == -1);
  BOOST_TEST(sy::detail::uniform_rows(none) == 0);
  BOOST_TEST(sy::detail::uniform_rows(empty) == 0);
}
