// Sinkhorn<K> (REFERENCE §3): golden plan and iteration count of §7, weights, evaluation mode.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "routing_fixtures.hpp"

namespace sy = switchyard;
using namespace sy_test;

BOOST_AUTO_TEST_SUITE(sinkhorn)

BOOST_AUTO_TEST_CASE(plan_and_iterations_match_golden) {
  const auto z = golden<double>();
  std::vector<double> p(24);
  const int it = sy::sinkhorn(sy::exec::Host{}, cview(z, 6, 4), mview(p, 6, 4));
  BOOST_TEST(it == 6);
  const std::vector<double> want = {
      .032708, .023438, .013996, .096521, .017036, .090203, .053864, .00557,
      .011004, .021435, .094576, .039663, .098453, .007073, .025552, .035578,
      .020511, .032711, .05868,  .054769, .070288, .07514,  .003333, .017899};
  // Six printed decimals: 1e-6 absolute.
  for (std::size_t i = 0; i < want.size(); ++i)
    BOOST_TEST(std::abs(p[i] - want[i]) <= 1e-6, "entry " << i << ": " << p[i]);
  // Rows of P sum to 1/T, columns to 1/E at convergence (tolerance 1e-4 of the stopping rule).
  for (int t = 0; t < 6; ++t) {
    double s = 0;
    for (int e = 0; e < 4; ++e) s += p[t * 4 + e];
    BOOST_TEST(std::abs(s - 1.0 / 6) <= 1e-4);
  }
}

BOOST_AUTO_TEST_CASE(float_plan_matches_double_plan) {
  const auto z = golden<float>();
  std::vector<float> p(24);
  BOOST_TEST(sy::sinkhorn(sy::exec::Host{}, cview(z, 6, 4), mview(p, 6, 4)) == 6);
  BOOST_TEST(std::abs(p[3] - .096521f) <= 1e-6f);
}

BOOST_AUTO_TEST_CASE(large_logits_do_not_overflow) {
  // exp(200) overflows even in double-free fp32; the row max is subtracted first (REFERENCE §3).
  std::vector<float> z = golden<float>();
  for (auto& v : z) v += 200.0f;
  std::vector<float> p(24);
  sy::sinkhorn(sy::exec::Host{}, cview(z, 6, 4), mview(p, 6, 4));
  for (float v : p) BOOST_TEST(std::isfinite(v));
  BOOST_TEST(std::abs(p[3] - .096521f) <= 1e-5f);
}

BOOST_AUTO_TEST_CASE(iteration_cap_stops_the_loop) {
  const auto z = golden<double>();
  std::vector<double> p(24);
  BOOST_TEST(sy::sinkhorn(sy::exec::Host{}, cview(z, 6, 4), mview(p, 6, 4), {1e-4, 2}) == 2);
}

BOOST_AUTO_TEST_CASE(router_selects_by_plan_and_weights_by_scores) {
  const auto z = golden<double>();
  std::vector<double> p(24);
  sy::sinkhorn(sy::exec::Host{}, cview(z, 6, 4), mview(p, 6, 4));
  const auto out2 = sy::Sinkhorn<2>(4).forward(sy::exec::Host{}, cview(z, 6, 4));
  BOOST_TEST(out2.sinkhorn_iterations == 6);
  for (int t = 0; t < 6; ++t) {
    // Selection: top-2 of the plan row.
    int a = 0;
    for (int e = 1; e < 4; ++e) a = p[t * 4 + e] > p[t * 4 + a] ? e : a;
    int b = a == 0 ? 1 : 0;
    for (int e = 0; e < 4; ++e) b = (e != a && p[t * 4 + e] > p[t * 4 + b]) ? e : b;
    BOOST_TEST(out2.topk_indices[t * 2] == a);
    BOOST_TEST(out2.topk_indices[t * 2 + 1] == b);
    // Weights: softmax over all E, not renormalised.
    double s = 0;
    for (int e = 0; e < 4; ++e) s += std::exp(z[t * 4 + e]);
    BOOST_TEST(out2.topk_probs[t * 2] == std::exp(z[t * 4 + a]) / s,
               boost::test_tools::tolerance(1e-14));
  }
  const auto out1 = sy::Sinkhorn<1>(4).forward(sy::exec::Host{}, cview(z, 6, 4));
  BOOST_TEST(out1.topk_indices[1] == 1);  // row 1's plan maximum .090203 at expert 1
  BOOST_TEST(out1.topk_probs[1] == 1 / (1 + std::exp(-1.7)), boost::test_tools::tolerance(1e-14));
  BOOST_TEST(out1.topk_indices[4] == 2);  // row 4's plan maximum .05868 at expert 2
}

BOOST_AUTO_TEST_CASE(evaluation_selects_by_the_weights) {
  const auto z = golden<double>();
  sy::RouteContext eval;
  eval.training = false;
  const auto out = sy::Sinkhorn<1>(4).forward(sy::exec::Host{}, cview(z, 6, 4), eval);
  BOOST_TEST(out.sinkhorn_iterations == 0);
  // Token 4, logits [0, .3, .6, .9]: training picks expert 2 by the plan (see above); evaluation
  // picks expert 3, the largest weight σ(.9).
  BOOST_TEST(out.topk_indices[4] == 3);
}

BOOST_AUTO_TEST_CASE(aux_loss_is_rejected) {
  sy::LossParams l;
  l.balance.push_back({sy::LoadBalancingType::aux_loss, 0.01});
  BOOST_CHECK_THROW(sy::Sinkhorn<2>(4, l), sy::precondition_error);
}

BOOST_AUTO_TEST_SUITE_END()
