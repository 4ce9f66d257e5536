// Host expert forward against the naive per-row reference; CBLAS against the plain loops.
#include <boost/test/unit_test.hpp>

#include <cstddef>
#include <vector>

#include "expert_test_util.hpp"

namespace sy = switchyard;
using namespace sy_test;

namespace {
// Uneven rows with empty experts first, in the middle and last.
const std::vector<index_t> uneven_counts = {0, 5, 1, 0, 9, 3, 0};
}  // namespace

// double: the GEMMs only reorder sums of ~H terms, so 1e-12 relative.
BOOST_AUTO_TEST_CASE_TEMPLATE(forward_matches_naive_reference_in_double, P, all_policies) {
  for (bool bias : {false, true})
    for (auto gemm : {sy::host_gemm::automatic, sy::host_gemm::loops}) {
      expert_problem<double> p(P{}, 7, 12, 10, bias, uneven_counts, 42);
      std::vector<std::byte> ws;
      const auto y = run_forward<P>(p, ws, {.dropout = {}, .gemm = gemm});
      BOOST_TEST(max_rel_diff(y, reference_forward<P>(p)) < 1e-12);
    }
}

// float: sums of ~16 products of O(1) values, rounding 2⁻²⁴ each: 1e-5 relative is ample.
BOOST_AUTO_TEST_CASE_TEMPLATE(forward_matches_naive_reference_in_float, P, all_policies) {
  for (bool bias : {false, true}) {
    expert_problem<float> p(P{}, 7, 16, 12, bias, uneven_counts, 7);
    std::vector<std::byte> ws;
    const auto y = run_forward<P>(p, ws);
    BOOST_TEST(max_rel_diff(y, reference_forward<P>(p)) < 1e-5);
  }
}

BOOST_AUTO_TEST_CASE(cblas_and_loops_agree) {
  using P = sy::SwiGLU;
  expert_problem<double> p(P{}, 5, 64, 48, true, {17, 0, 33, 1, 12}, 3);
  std::vector<std::byte> ws1, ws2;
  const auto a = run_forward<P>(p, ws1, {.dropout = {}, .gemm = sy::host_gemm::automatic});
  const auto b = run_forward<P>(p, ws2, {.dropout = {}, .gemm = sy::host_gemm::loops});
  BOOST_TEST(max_rel_diff(a, b) < 1e-12);
  if (sy::detail::has_cblas) {
    const auto c = run_forward<P>(p, ws1, {.dropout = {}, .gemm = sy::host_gemm::cblas});
    BOOST_TEST(max_rel_diff(c, b) < 1e-12);
  } else {
    BOOST_CHECK_THROW(run_forward<P>(p, ws1, {.dropout = {}, .gemm = sy::host_gemm::cblas}),
                      sy::precondition_error);
  }
}

using float_types = std::tuple<float, double>;
BOOST_AUTO_TEST_CASE_TEMPLATE(gemm_loops_match_a_naive_product_for_every_transpose, T,
                              float_types) {
  const index_t m = 5, n = 7, k = 3;
  std::vector<T> a(m * k), b(k * n);
  for (index_t i = 0; i < m * k; ++i) a[i] = T(0.25) * T(i % 7) - T(0.5);
  for (index_t i = 0; i < k * n; ++i) b[i] = T(0.125) * T(i % 5) + T(0.3);
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (auto impl : {sy::host_gemm::automatic, sy::host_gemm::loops}) {
        std::vector<T> c(m * n, T(1));
        // op(A)[i][p] and op(B)[p][j] read from row-major storage of A [m][k] or [k][m], etc.
        sy::detail::gemm<T>(impl, ta, tb, m, n, k, T(2), a.data(), ta ? m : k, b.data(), tb ? k : n,
                            T(0.5), c.data(), n);
        for (index_t i = 0; i < m; ++i)
          for (index_t j = 0; j < n; ++j) {
            double s = 0;
            for (index_t q = 0; q < k; ++q)
              s += double(ta ? a[q * m + i] : a[i * k + q]) *
                   double(tb ? b[j * k + q] : b[q * n + j]);
            BOOST_TEST(double(c[i * n + j]) == 2 * s + 0.5, boost::test_tools::tolerance(1e-5));
          }
      }
}

BOOST_AUTO_TEST_CASE(grouped_gemm_multiplies_each_experts_rows_by_its_weight) {
  const index_t E = 4, N = 6, K = 5;
  const std::vector<index_t> off = {0, 3, 3, 8, 9};
  std::vector<double> a(9 * K), b(E * N * K), c(9 * N, 2.0);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::sin(double(i));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::cos(double(i));
  sy::grouped_gemm(sy::exec::Host{}, std::span<const index_t>(off),
                   sy::matrix_view<const double>(a.data(), 9, K),
                   sy::tensor3_view<const double>(b.data(), E, N, K),
                   sy::matrix_view<double>(c.data(), 9, N), 1.0);
  for (index_t e = 0; e < E; ++e)
    for (index_t r = off[e]; r < off[e + 1]; ++r)
      for (index_t j = 0; j < N; ++j) {
        double s = 2.0;
        for (index_t q = 0; q < K; ++q) s += a[r * K + q] * b[(e * N + j) * K + q];
        BOOST_TEST(c[r * N + j] == s, boost::test_tools::tolerance(1e-12));
      }
}

BOOST_AUTO_TEST_CASE(all_rows_on_one_expert_and_no_rows_at_all) {
  using P = sy::FFN<sy::GeLU>;
  expert_problem<double> one(P{}, 3, 8, 6, true, {0, 0, 11}, 5);
  std::vector<std::byte> ws;
  BOOST_TEST(max_rel_diff(run_forward<P>(one, ws), reference_forward<P>(one)) < 1e-12);
  expert_problem<double> none(P{}, 3, 8, 6, true, {0, 0, 0}, 5);
  BOOST_TEST(run_forward<P>(none, ws).empty());
  BOOST_TEST(sy::expert_workspace_bytes<double>(P{}, none.shape, 0) == 0u);
}

BOOST_AUTO_TEST_CASE(workspace_bytes_cover_both_saved_activations) {
  const sy::expert_shape s{8, 1024, 3584, false};
  // GLU: h [R][2F] and a [R][F] in bf16-sized (2-byte) elements, each 256-aligned.
  BOOST_TEST(sy::expert_workspace_bytes<std::uint16_t>(sy::SwiGLU{}, s, 4096) ==
             std::size_t(4096) * 3584 * 3 * 2);
  BOOST_TEST(sy::expert_workspace_bytes<float>(sy::FFN<sy::ReLU>{}, s, 3) ==
             2 * sy::detail::align_up(3 * 3584 * 4, 256));
}

BOOST_AUTO_TEST_CASE(bad_offsets_shapes_and_workspace_are_rejected) {
  using P = sy::FFN<sy::ReLU>;
  expert_problem<double> p(P{}, 3, 4, 5, false, {2, 0, 3}, 1);
  std::vector<double> y(static_cast<std::size_t>(p.rows * 4));
  std::vector<std::byte> ws(sy::expert_workspace_bytes<double>(P{}, p.shape, p.rows));
  const sy::matrix_view<double> yv(y.data(), p.rows, 4);
  auto run = [&](std::vector<index_t> off, std::size_t ws_bytes) {
    sy::expert_forward(P{}, sy::exec::Host{}, p.shape, p.weights(), p.xv(), off, yv,
                       std::span<std::byte>(ws.data(), ws_bytes));
  };
  BOOST_CHECK_NO_THROW(run(p.offsets, ws.size()));
  BOOST_CHECK_THROW(run({0, 2, 2, 4}, ws.size()), sy::precondition_error);   // ends short
  BOOST_CHECK_THROW(run({0, 3, 2, 5}, ws.size()), sy::precondition_error);   // decreasing
  BOOST_CHECK_THROW(run({0, 2, 5}, ws.size()), sy::precondition_error);      // E entries
  BOOST_CHECK_THROW(run(p.offsets, ws.size() - 1), sy::precondition_error);  // workspace
  sy::expert_shape with_bias = p.shape;
  with_bias.bias = true;  // the weights carry no bias views
  BOOST_CHECK_THROW(
      sy::expert_forward(P{}, sy::exec::Host{}, with_bias, p.weights(), p.xv(), p.offsets, yv, ws),
      sy::precondition_error);
}

BOOST_AUTO_TEST_CASE(mutable_row_views_convert_to_the_const_inputs) {
  using P = sy::FFN<sy::ReLU>;
  expert_problem<double> p(P{}, 2, 4, 3, false, {2, 1}, 6);
  std::vector<double> x = p.x, y(x.size()), dx(x.size()), dy = p.dy;
  std::vector<std::byte> ws(sy::expert_workspace_bytes<double>(P{}, p.shape, p.rows));
  const sy::matrix_view<double> xv(x.data(), p.rows, 4), dyv(dy.data(), p.rows, 4);
  expert_grad_buffers<double> g(p.shape, p.f1);
  // x and dy are passed as mutable views: they are not deduction contexts, so they convert.
  sy::expert_forward(P{}, sy::exec::Host{}, p.shape, p.weights(), xv, p.offsets,
                     sy::matrix_view<double>(y.data(), p.rows, 4), ws);
  sy::expert_backward(P{}, sy::exec::Host{}, p.shape, p.weights(), xv, p.offsets, dyv,
                      sy::matrix_view<double>(dx.data(), p.rows, 4), g.views(), ws);
  BOOST_TEST(max_rel_diff(y, reference_forward<P>(p)) < 1e-12);
}
