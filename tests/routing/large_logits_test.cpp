// Very large logits (|z| up to 1e4, issue 11): softmax, z-loss (logsumexp) and Sinkhorn stay
// finite and exact, in float and double.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <tuple>
#include <vector>

#include "routing_fixtures.hpp"
#include "switchyard/routing.hpp"

namespace sy = switchyard;
using namespace sy_test;
using float_types = std::tuple<float, double>;

BOOST_AUTO_TEST_CASE_TEMPLATE(logits_of_ten_thousand_route_and_lose_exactly, T, float_types) {
  // Token 0: two logits far above the rest; token 1: all of order -1e4.
  const std::vector<T> z = {T(1e4), T(9999), T(-1e4), T(0), T(-1e4), T(-9999), T(-9998), T(-1e4)};
  sy::LossParams lp;
  lp.balance.push_back({sy::LoadBalancingType::aux_loss, 0.01});
  lp.z_loss_coeff = 1e-3;
  sy::RouterParams rp;
  rp.num_experts = 4;
  rp.losses = lp;
  const auto r = sy::TopK<2, sy::Softmax>(rp).forward(sy::exec::Host{}, cview(z, 2, 4));
  // Top-2 softmax of (1e4, 9999): weights σ(1) and σ(-1), computed after the max is removed.
  BOOST_TEST(r.topk_indices[0] == 0);
  BOOST_TEST(r.topk_indices[1] == 1);
  const double s1 = 1.0 / (1.0 + std::exp(-1.0));
  // float: the weights are O(1) numbers computed from differences of 1e4-sized logits that are
  // exact in float (integers); 1e-6 relative covers the float exp.
  BOOST_TEST(std::abs(static_cast<double>(r.topk_probs[0]) - s1) < 1e-6);
  BOOST_TEST(std::abs(static_cast<double>(r.topk_probs[1]) - (1 - s1)) < 1e-6);
  BOOST_TEST(r.topk_indices[2] == 2);
  BOOST_TEST(r.topk_indices[3] == 1);
  // z-loss: lse_0 = 1e4 + log(1 + e^-1 + ...), lse_1 = -9998 + log(1 + e^-1 + 2e^-2).
  const double lse0 = 1e4 + std::log(1 + std::exp(-1.0));
  const double lse1 = -9998 + std::log(1 + std::exp(-1.0) + 2 * std::exp(-2.0));
  const double expect = 1e-3 * (lse0 * lse0 + lse1 * lse1) / 2;
  BOOST_TEST(std::isfinite(r.z_loss.value()));
  BOOST_TEST(std::abs(r.z_loss.value() - expect) <= 1e-6 * expect);
  BOOST_TEST(std::isfinite(r.aux_loss.value()));
  // Gradients stay finite.
  std::vector<T> dprob(4, T(1)), dz(8);
  sy::TopK<2, sy::Softmax>(rp).backward(sy::exec::Host{}, r, cview(dprob, 2, 2), mview(dz, 2, 4));
  for (T v : dz) BOOST_TEST(std::isfinite(static_cast<double>(v)));
}

BOOST_AUTO_TEST_CASE(sinkhorn_with_logits_of_ten_thousand_converges) {
  std::vector<double> z = golden<double>();
  for (std::size_t i = 0; i < z.size(); ++i) z[i] = z[i] * 1e4 / 3;  // |z| up to ~7.3e3
  std::vector<double> p(24);
  const int it = sy::sinkhorn(sy::exec::Host{}, cview(z, 6, 4), mview(p, 6, 4));
  BOOST_TEST(it < 1000);
  for (double v : p) BOOST_TEST(std::isfinite(v));
  // With logits this sharp K = exp(z - rowmax) is nearly a 0/1 pattern and the 1e-8 guards of
  // the updates dominate, so the plan is not doubly stochastic; what must hold is that nothing
  // overflows or turns NaN, the loop stops, and the router still routes every token.
  for (double v : p) BOOST_TEST(v >= 0.0);
  const auto r = sy::Sinkhorn<1>(4).forward(sy::exec::Host{}, cview(z, 6, 4));
  for (int t = 0; t < 6; ++t) {
    BOOST_TEST(r.topk_indices[t] >= 0);
    BOOST_TEST(std::isfinite(r.topk_probs[t]));
  }
}
