#include <boost/test/unit_test.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "switchyard/dispatch/permute.hpp"
#include "switchyard/dispatch/plan.hpp"

namespace sy = switchyard;

namespace {

struct fixture_data {
  std::int64_t T, H, k, E;
  std::vector<std::int32_t> expert;
  std::vector<double> prob, x;
  sy::DispatchPlan plan;
};

fixture_data make(std::uint32_t seed, std::int64_t T, std::int64_t H, std::int64_t E,
                  std::int64_t k, std::optional<std::int64_t> C, bool pad = false) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  fixture_data d{T, H, k, E, {}, {}, {}, {}};
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(E));
    for (std::int64_t e = 0; e < E; ++e) ids[static_cast<std::size_t>(e)] = static_cast<std::int32_t>(e);
    std::shuffle(ids.begin(), ids.end(), gen);
    for (std::int64_t j = 0; j < k; ++j) {
      d.expert.push_back(ids[static_cast<std::size_t>(j)]);
      d.prob.push_back(0.5 + 0.5 * u(gen));
    }
  }
  for (std::int64_t i = 0; i < T * H; ++i) d.x.push_back(u(gen));
  sy::DispatchOptions o;
  o.num_experts = E;
  o.capacity = C;
  o.pad_to_capacity = pad;
  d.plan = sy::build_plan(sy::exec::Host{}, o, sy::matrix_view<const std::int32_t>(d.expert.data(), T, k),
                          sy::matrix_view<const double>(d.prob.data(), T, k));
  return d;
}

// f(x, prob) = Σ_t <w_t, unpermute(A · permute(x), prob)_t> with a fixed per-row scale A,
// so that gradients flow through both ops.
double objective(const fixture_data& d, const std::vector<double>& x, const std::vector<double>& p,
                 const std::vector<double>& w, const std::vector<double>& a) {
  const auto R = d.plan.rows();
  std::vector<double> rows(static_cast<std::size_t>(R * d.H)), y(static_cast<std::size_t>(d.T * d.H));
  sy::permute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(x.data(), d.T, d.H),
              sy::matrix_view<double>(rows.data(), R, d.H));
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t h = 0; h < d.H; ++h) rows[static_cast<std::size_t>(r * d.H + h)] *= a[static_cast<std::size_t>(r)];
  sy::unpermute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(rows.data(), R, d.H),
                sy::matrix_view<const double>(p.data(), d.T, d.k), sy::matrix_view<double>(y.data(), d.T, d.H));
  double f = 0;
  for (std::size_t i = 0; i < y.size(); ++i) f += w[i] * y[i];
  return f;
}

}  // namespace

BOOST_AUTO_TEST_CASE(permute_then_unpermute_with_weights_one_over_k_gives_back_the_input) {
  for (std::int64_t k : {1, 2, 4, 8}) {
    auto d = make(11, 37, 5, 16, k, std::nullopt);
    std::vector<double> p(d.prob.size(), 1.0 / static_cast<double>(k));
    const auto R = d.plan.rows();
    std::vector<double> rows(static_cast<std::size_t>(R * d.H)), y(d.x.size());
    sy::permute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(d.x.data(), d.T, d.H),
                sy::matrix_view<double>(rows.data(), R, d.H));
    sy::unpermute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(rows.data(), R, d.H),
                  sy::matrix_view<const double>(p.data(), d.T, k), sy::matrix_view<double>(y.data(), d.T, d.H));
    // k additions of x/k: exact up to rounding of the sum (a few ulps), 1e-15 relative.
    for (std::size_t i = 0; i < y.size(); ++i) BOOST_TEST(std::abs(y[i] - d.x[i]) <= 1e-15 * (1 + std::abs(d.x[i])));
  }
}

BOOST_AUTO_TEST_CASE(dropped_routes_contribute_zero_and_padding_rows_are_zero) {
  auto d = make(5, 50, 3, 4, 2, 6, true);
  BOOST_REQUIRE(d.plan.dropped > 0);
  const auto R = d.plan.rows();
  std::vector<double> rows(static_cast<std::size_t>(R * d.H), 99.0), y(d.x.size());
  sy::permute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(d.x.data(), d.T, d.H),
              sy::matrix_view<double>(rows.data(), R, d.H));
  for (std::int64_t r = 0; r < R; ++r)
    if (d.plan.row_route[static_cast<std::size_t>(r)] < 0)
      for (std::int64_t h = 0; h < d.H; ++h) BOOST_TEST(rows[static_cast<std::size_t>(r * d.H + h)] == 0.0);
  sy::unpermute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(rows.data(), R, d.H),
                sy::matrix_view<const double>(d.prob.data(), d.T, d.k), sy::matrix_view<double>(y.data(), d.T, d.H));
  for (std::int64_t t = 0; t < d.T; ++t)
    for (std::int64_t h = 0; h < d.H; ++h) {
      double expect = 0;
      for (std::int64_t j = 0; j < d.k; ++j)
        if (d.plan.route_row[static_cast<std::size_t>(t * d.k + j)] >= 0)
          expect += d.prob[static_cast<std::size_t>(t * d.k + j)] * d.x[static_cast<std::size_t>(t * d.H + h)];
      BOOST_TEST(std::abs(y[static_cast<std::size_t>(t * d.H + h)] - expect) < 1e-15);
    }
}

// Finite differences in double: central differences with step 1e-6 on a bilinear objective are
// exact up to rounding, so the relative error bound is 1e-6 with a wide margin.
BOOST_AUTO_TEST_CASE(finite_difference_gradients_of_permute_and_unpermute) {
  for (bool capacity : {false, true}) {
    auto d = make(21, 13, 4, 4, 2, capacity ? std::optional<std::int64_t>(5) : std::nullopt, capacity);
    std::mt19937 gen(7);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    const auto R = d.plan.rows();
    std::vector<double> w(d.x.size()), a(static_cast<std::size_t>(R));
    for (auto& v : w) v = u(gen);
    for (auto& v : a) v = u(gen);
    // Analytic: dy = w; d(rows after scaling) via unpermute_backward; chain through A and permute.
    std::vector<double> rows(static_cast<std::size_t>(R * d.H)), d_rows(rows.size()), d_prob(d.prob.size()), dx(d.x.size());
    sy::permute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(d.x.data(), d.T, d.H),
                sy::matrix_view<double>(rows.data(), R, d.H));
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t h = 0; h < d.H; ++h) rows[static_cast<std::size_t>(r * d.H + h)] *= a[static_cast<std::size_t>(r)];
    sy::unpermute_backward(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(rows.data(), R, d.H),
                           sy::matrix_view<const double>(d.prob.data(), d.T, d.k),
                           sy::matrix_view<const double>(w.data(), d.T, d.H), sy::matrix_view<double>(d_rows.data(), R, d.H),
                           sy::matrix_view<double>(d_prob.data(), d.T, d.k));
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t h = 0; h < d.H; ++h) d_rows[static_cast<std::size_t>(r * d.H + h)] *= a[static_cast<std::size_t>(r)];
    sy::permute_backward(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(d_rows.data(), R, d.H),
                         sy::matrix_view<double>(dx.data(), d.T, d.H));
    const double eps = 1e-6;
    for (std::size_t i = 0; i < d.x.size(); ++i) {
      auto xp = d.x, xm = d.x;
      xp[i] += eps;
      xm[i] -= eps;
      const double fd = (objective(d, xp, d.prob, w, a) - objective(d, xm, d.prob, w, a)) / (2 * eps);
      BOOST_TEST(std::abs(fd - dx[i]) <= 1e-6 * std::max(1.0, std::abs(fd)));
    }
    for (std::size_t i = 0; i < d.prob.size(); ++i) {
      auto pp = d.prob, pm = d.prob;
      pp[i] += eps;
      pm[i] -= eps;
      const double fd = (objective(d, d.x, pp, w, a) - objective(d, d.x, pm, w, a)) / (2 * eps);
      BOOST_TEST(std::abs(fd - d_prob[i]) <= 1e-6 * std::max(1.0, std::abs(fd)));
      if (d.plan.route_row[i] < 0) BOOST_TEST(d_prob[i] == 0.0);
    }
  }
}

BOOST_AUTO_TEST_CASE(shape_mismatches_are_precondition_errors) {
  auto d = make(1, 4, 3, 4, 2, std::nullopt);
  std::vector<double> rows(100), y(12);
  BOOST_CHECK_THROW(sy::permute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(d.x.data(), d.T, d.H),
                                sy::matrix_view<double>(rows.data(), 5, d.H)),
                    sy::precondition_error);
  BOOST_CHECK_THROW(sy::unpermute(sy::exec::Host{}, d.plan, sy::matrix_view<const double>(rows.data(), d.plan.rows(), d.H),
                                  sy::matrix_view<const double>(d.prob.data(), 3, d.k), sy::matrix_view<double>(y.data(), d.T, d.H)),
                    sy::precondition_error);
}
