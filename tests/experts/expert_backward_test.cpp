// Finite-difference gradient checks of the host expert backward, in double.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include "expert_test_util.hpp"

namespace sy = switchyard;
using namespace sy_test;

namespace {

/// L = Σ dy·y for the problem as it is now.
template <class P>
double loss(const expert_problem<double>& p, const sy::expert_options& opt) {
  std::vector<std::byte> ws;
  const auto y = run_forward<P>(p, ws, opt);
  double s = 0;
  for (std::size_t i = 0; i < y.size(); ++i) s += p.dy[i] * y[i];
  return s;
}

/// ‖fd − analytic‖ / ‖analytic‖ over every element of `param`, with central differences.
template <class P>
double fd_rel_error(expert_problem<double>& p, std::vector<double>& param,
                    const std::vector<double>& analytic, const sy::expert_options& opt) {
  const double h = 1e-6;
  double num = 0, den = 0;
  for (std::size_t i = 0; i < param.size(); ++i) {
    const double keep = param[i];
    param[i] = keep + h;
    const double lp = loss<P>(p, opt);
    param[i] = keep - h;
    const double lm = loss<P>(p, opt);
    param[i] = keep;
    const double fd = (lp - lm) / (2 * h);
    num += (fd - analytic[i]) * (fd - analytic[i]);
    den += analytic[i] * analytic[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

template <class P>
void check_gradients(bool bias, const sy::expert_options& opt) {
  // E = 4 with experts 0 and 2 empty: their weight gradients must stay exactly zero.
  expert_problem<double> p(P{}, 4, 5, 4, bias, {0, 3, 0, 4}, 11);
  std::vector<std::byte> ws;
  run_forward<P>(p, ws, opt);
  expert_grad_buffers<double> g(p.shape, p.f1);
  std::vector<double> dx(p.x.size(), -3.0);
  sy::expert_backward(P{}, sy::exec::Host{}, p.shape, p.weights(), p.xv(), p.offsets, p.dyv(),
                      sy::matrix_view<double>(dx.data(), p.rows, p.shape.hidden), g.views(), ws,
                      opt);
  // Central differences with h = 1e-6 on a smooth loss: truncation ~1e-12 and cancellation
  // ~1e-10 relative, so 1e-6 is a tight bound (CONVENTIONS: 1e-6 for finite differences).
  BOOST_TEST(fd_rel_error<P>(p, p.x, dx, opt) < 1e-6);
  BOOST_TEST(fd_rel_error<P>(p, p.fc1, g.fc1, opt) < 1e-6);
  BOOST_TEST(fd_rel_error<P>(p, p.fc2, g.fc2, opt) < 1e-6);
  if (bias) {
    BOOST_TEST(fd_rel_error<P>(p, p.b1, g.b1, opt) < 1e-6);
    BOOST_TEST(fd_rel_error<P>(p, p.b2, g.b2, opt) < 1e-6);
  }
  for (index_t e : {0, 2}) {
    for (index_t i = 0; i < p.f1 * p.shape.hidden; ++i)
      BOOST_REQUIRE(g.fc1[e * p.f1 * p.shape.hidden + i] == 0.0);
    for (index_t i = 0; i < p.shape.hidden * p.shape.ffn_hidden; ++i)
      BOOST_REQUIRE(g.fc2[e * p.shape.hidden * p.shape.ffn_hidden + i] == 0.0);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE_TEMPLATE(gradients_match_finite_differences_without_bias, P, all_policies) {
  check_gradients<P>(false, {});
}

BOOST_AUTO_TEST_CASE_TEMPLATE(gradients_match_finite_differences_with_bias, P, all_policies) {
  check_gradients<P>(true, {});
}

BOOST_AUTO_TEST_CASE_TEMPLATE(gradients_match_finite_differences_with_dropout, P, all_policies) {
  check_gradients<P>(true, {.dropout = {.p = 0.3, .seed = 99, .step = 4, .training = true},
                            .gemm = sy::host_gemm::automatic});
}

BOOST_AUTO_TEST_CASE(fallback_loops_give_the_same_gradients_as_cblas) {
  using P = sy::GLU<sy::GeLUTanh>;
  expert_problem<double> p(P{}, 3, 24, 20, true, {9, 0, 14}, 21);
  auto grads = [&](sy::host_gemm impl) {
    std::vector<std::byte> ws;
    run_forward<P>(p, ws, {.dropout = {}, .gemm = impl});
    expert_grad_buffers<double> g(p.shape, p.f1);
    std::vector<double> dx(p.x.size());
    sy::expert_backward(P{}, sy::exec::Host{}, p.shape, p.weights(), p.xv(), p.offsets, p.dyv(),
                        sy::matrix_view<double>(dx.data(), p.rows, p.shape.hidden), g.views(), ws,
                        {.dropout = {}, .gemm = impl});
    std::vector<double> all = dx;
    for (auto* v : {&g.fc1, &g.fc2, &g.b1, &g.b2}) all.insert(all.end(), v->begin(), v->end());
    return all;
  };
  BOOST_TEST(max_rel_diff(grads(sy::host_gemm::automatic), grads(sy::host_gemm::loops)) < 1e-12);
}

BOOST_AUTO_TEST_CASE(weight_gradients_accumulate_across_calls) {
  using P = sy::FFN<sy::SiLU>;
  expert_problem<float> p(P{}, 2, 8, 6, true, {5, 3}, 8);
  expert_grad_buffers<float> g(p.shape, p.f1);
  std::vector<float> dx(p.x.size());
  std::vector<float> first;
  for (int call = 0; call < 2; ++call) {
    std::vector<std::byte> ws;
    run_forward<P>(p, ws);
    sy::expert_backward(P{}, sy::exec::Host{}, p.shape, p.weights(), p.xv(), p.offsets, p.dyv(),
                        sy::matrix_view<float>(dx.data(), p.rows, p.shape.hidden), g.views(), ws);
    if (call == 0) {
      first = g.fc1;
      first.insert(first.end(), g.b2.begin(), g.b2.end());
    }
  }
  std::vector<float> second = g.fc1;
  second.insert(second.end(), g.b2.begin(), g.b2.end());
  for (std::size_t i = 0; i < first.size(); ++i)
    BOOST_TEST(second[i] == 2 * first[i], boost::test_tools::tolerance(1e-6f));
}
