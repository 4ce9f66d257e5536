// TopK<K, Score>: golden values of REFERENCE §7 and properties over random seeds.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <tuple>

#include "routing_fixtures.hpp"

namespace sy = switchyard;
using namespace sy_test;

namespace {

using float_types = std::tuple<float, double>;

// Golden values are printed to 6 decimals: 1e-6 absolute covers their rounding (5e-7) plus fp32
// evaluation error (~1e-7 for values below 1).
constexpr double golden_tol = 1e-6;

template <class T, class Router>
std::vector<T> dense_golden(const Router& r) {
  const auto g = golden<T>();
  return r.forward(sy::exec::Host{}, cview(g, golden_T, golden_E)).dense_probs();
}

void check_dense(const auto& got, const std::vector<double>& want) {
  BOOST_REQUIRE_EQUAL(got.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i)
    BOOST_TEST(std::abs(static_cast<double>(got[i]) - want[i]) <= golden_tol,
               "entry " << i << ": " << got[i] << " vs " << want[i]);
}

sy::RouterParams params(sy::index_t E) {
  sy::RouterParams p;
  p.num_experts = E;
  return p;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(top_k)

BOOST_AUTO_TEST_CASE_TEMPLATE(softmax_topk_first_matches_golden, T, float_types) {
  check_dense(dense_golden<T>(sy::TopK<2, sy::Softmax>(params(4))),
              {.268941, 0, 0, .731059, 0, .689974, .310026, 0, 0, 0, .622459, .377541,
               .75026,  0, 0, .24974,  0, 0,       .425557, .574443, .524979, .475021, 0, 0});
}

BOOST_AUTO_TEST_CASE_TEMPLATE(pre_softmax_matches_golden, T, float_types) {
  check_dense(dense_golden<T>(sy::TopK<2, sy::PreSoftmax>(params(4))),
              {.217517, 0, 0, .591272, 0, .574823, .258285, 0, 0, 0, .478375, .290149,
               .641445, 0, 0, .213519, 0, 0,       .274764, .370892, .460913, .417052, 0, 0});
}

BOOST_AUTO_TEST_CASE_TEMPLATE(sigmoid_with_bias_matches_golden, T, float_types) {
  auto p = params(4);
  p.expert_bias = {0, 0, 0.5, 0};
  check_dense(dense_golden<T>(sy::TopK<2, sy::Sigmoid>(p)),
              {0, 0, .32576, .67424, 0, .543234, .456766, 0, 0, 0, .532477, .467523,
               .600592, 0, .399408, 0, 0, 0, .475935, .524065, .504751, .495249, 0, 0});
}

// REFERENCE §7 has no sqrtsoftplus table: the expected weights come straight from the formula
// s = sqrt(log1p(exp(z))), top-2 of s, p = s / Σ_selected s, written out independently here.
BOOST_AUTO_TEST_CASE_TEMPLATE(sqrtsoftplus_matches_formula_on_golden_logits, T, float_types) {
  const auto got = dense_golden<T>(sy::TopK<2, sy::SqrtSoftplus>(params(4)));
  std::vector<double> want(24, 0.0);
  for (int t = 0; t < 6; ++t) {
    double s[4];
    for (int e = 0; e < 4; ++e) s[e] = std::sqrt(std::log1p(std::exp(golden_logits[t * 4 + e])));
    int a = 0;
    for (int e = 1; e < 4; ++e) a = s[e] > s[a] ? e : a;
    int b = a == 0 ? 1 : 0;
    for (int e = 0; e < 4; ++e) b = (e != a && s[e] > s[b]) ? e : b;
    want[t * 4 + a] = s[a] / (s[a] + s[b]);
    want[t * 4 + b] = s[b] / (s[a] + s[b]);
  }
  check_dense(got, want);
}

BOOST_AUTO_TEST_CASE(scaling_factor_multiplies_the_weights) {
  auto p = params(4);
  p.topk_scaling_factor = 2.5;
  const auto scaled = dense_golden<double>(sy::TopK<2, sy::Softmax>(p));
  const auto plain = dense_golden<double>(sy::TopK<2, sy::Softmax>(params(4)));
  for (std::size_t i = 0; i < plain.size(); ++i)
    BOOST_TEST(scaled[i] == 2.5 * plain[i], boost::test_tools::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE_TEMPLATE(weights_sum_to_one_or_the_scaling_factor, T, float_types) {
  // Sums of k ≤ 8 terms ≤ 1: a few ulps (float 1e-6, double 1e-14).
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    const sy::index_t Tn = 33, E = 16;
    const auto z = random_logits<T>(seed, Tn * E);
    auto p = params(E);
    const double gamma = 1.0 + static_cast<double>(seed % 3);
    p.topk_scaling_factor = gamma;
    const auto check_sum = [&](const auto& r, double want) {
      const auto out = r.forward(sy::exec::Host{}, cview(z, Tn, E));
      for (sy::index_t t = 0; t < Tn; ++t) {
        double s = 0;
        for (int j = 0; j < out.k; ++j) s += out.topk_probs[t * out.k + j];
        BOOST_TEST(std::abs(s - want) <= tol * want, "seed " << seed << " token " << t << ": " << s);
      }
    };
    check_sum(sy::TopK<4, sy::Softmax>(p), gamma);
    check_sum(sy::TopK<8, sy::Sigmoid>(p), gamma);
    check_sum(sy::TopK<2, sy::SqrtSoftplus>(p), gamma);
    // Pre-softmax weights are not renormalised: a part of 1 (times γ).
    const auto pre = sy::TopK<6, sy::PreSoftmax>(p).forward(sy::exec::Host{}, cview(z, Tn, E));
    for (sy::index_t t = 0; t < Tn; ++t) {
      double s = 0;
      for (int j = 0; j < 6; ++j) s += pre.topk_probs[t * 6 + j];
      BOOST_TEST((s > 0 && s < gamma));
    }
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(indices_are_distinct_and_in_descending_score_order, T, float_types) {
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    const sy::index_t Tn = 17, E = 12;
    const auto z = random_logits<T>(seed, Tn * E);
    const auto out = sy::TopK<6, sy::Softmax>(params(E)).forward(sy::exec::Host{}, cview(z, Tn, E));
    for (sy::index_t t = 0; t < Tn; ++t) {
      std::set<int> s(out.topk_indices.begin() + t * 6, out.topk_indices.begin() + t * 6 + 6);
      BOOST_TEST(s.size() == 6u);
      for (int j = 1; j < 6; ++j)
        BOOST_TEST(z[t * E + out.topk_indices[t * 6 + j - 1]] >= z[t * E + out.topk_indices[t * 6 + j]]);
      // Every unselected logit is ≤ the smallest selected one.
      for (sy::index_t e = 0; e < E; ++e)
        if (!s.count(static_cast<int>(e))) BOOST_TEST(z[t * E + e] <= z[t * E + out.topk_indices[t * 6 + 5]]);
    }
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(ties_go_to_the_lower_index, T, float_types) {
  // Row 0: all equal; row 1: experts 1, 3, 5 tie for the top.
  const std::vector<T> z = {0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 2};
  const auto soft = sy::TopK<2, sy::Softmax>(params(6)).forward(sy::exec::Host{}, cview(z, 2, 6));
  BOOST_TEST(soft.topk_indices == (std::vector<std::int32_t>{0, 1, 1, 3}),
             boost::test_tools::per_element());
  const auto sig = sy::TopK<3, sy::Sigmoid>(params(6)).forward(sy::exec::Host{}, cview(z, 2, 6));
  BOOST_TEST(sig.topk_indices == (std::vector<std::int32_t>{0, 1, 2, 1, 3, 5}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE_TEMPLATE(expert_bias_changes_selection_not_weights, T, float_types) {
  for (std::uint64_t seed = 1; seed <= 10; ++seed) {
    const sy::index_t Tn = 40, E = 8;
    const auto z = random_logits<T>(seed, Tn * E);
    auto p = params(E);
    p.expert_bias.assign(E, 0.0);
    p.expert_bias[5] = 10.0;  // σ ≤ 1, so expert 5 always wins the selection
    const auto out = sy::TopK<2, sy::Sigmoid>(p).forward(sy::exec::Host{}, cview(z, Tn, E));
    for (sy::index_t t = 0; t < Tn; ++t) {
      BOOST_TEST(out.topk_indices[t * 2] == 5);
      const int other = out.topk_indices[t * 2 + 1];
      const double s5 = 1 / (1 + std::exp(-double(z[t * E + 5])));
      const double so = 1 / (1 + std::exp(-double(z[t * E + other])));
      const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
      BOOST_TEST(std::abs(out.topk_probs[t * 2] - s5 / (s5 + so)) <= tol);
    }
  }
}

BOOST_AUTO_TEST_CASE(expert_bias_update_follows_the_sign_rule) {
  sy::TopK<2, sy::Sigmoid> r(params(4));
  const std::vector<std::int64_t> counts = {5, 3, 4, 4};  // mean 4
  r.update_expert_bias(counts);
  r.update_expert_bias(counts);
  const std::vector<double> want = {-2e-3, 2e-3, 0, 0};
  for (std::size_t e = 0; e < 4; ++e) BOOST_TEST(std::abs(r.expert_bias()[e] - want[e]) <= 1e-15);
  // The updated bias steers selection toward the under-loaded expert 1.
  const std::vector<double> z = {0.1, 0.099, -1, -1};
  const auto out = r.forward(sy::exec::Host{}, cview(z, 1, 4));
  BOOST_TEST(out.topk_indices[0] == 1);
}

BOOST_AUTO_TEST_CASE(group_limited_routing_keeps_the_best_groups) {
  // 8 experts in 4 groups of 2; k = 2, group_topk = 2 -> group score = best 1 of each group.
  // Token: the two largest logits are in group 0 (0: 5, 1: 4.9); group 2 has 3, group 3 has 2.
  const std::vector<double> z = {5, 4.9, 0, 0, 3, 0, 2, 0};
  auto p = params(8);
  p.num_groups = 4;
  p.group_topk = 2;
  const auto out = sy::TopK<2, sy::Softmax>(p).forward(sy::exec::Host{}, cview(z, 1, 8));
  BOOST_TEST(out.topk_indices == (std::vector<std::int32_t>{0, 1}), boost::test_tools::per_element());
  // k = 4, group_topk 2: a group scores its best 2 logits; {2: 3, 3: 2.9} (5.9) and {0: 5, 1: 0}
  // (5) beat the groups of -1s, and the top-4 of experts 0..3 follows in descending order.
  const std::vector<double> z2 = {5, 0, 3, 2.9, -1, -1, -1, -1};
  auto p2 = params(8);
  p2.num_groups = 4;
  p2.group_topk = 2;
  const auto out2 = sy::TopK<4, sy::Softmax>(p2).forward(sy::exec::Host{}, cview(z2, 1, 8));
  BOOST_TEST(out2.topk_indices == (std::vector<std::int32_t>{0, 2, 3, 1}),
             boost::test_tools::per_element());
  auto p3 = params(8);
  p3.num_groups = 2;
  p3.group_topk = 1;
  const std::vector<double> z3 = {5, 0, -3, -3, 3, 2.9, 1, 1};
  const auto out3 = sy::TopK<2, sy::Softmax>(p3).forward(sy::exec::Host{}, cview(z3, 1, 8));
  // groups {0..3} score 5 + 0 = 5, {4..7} score 3 + 2.9 = 5.9: the second group wins.
  BOOST_TEST(out3.topk_indices == (std::vector<std::int32_t>{4, 5}), boost::test_tools::per_element());
}

namespace {

/// Routes Tn random tokens (logits N(0, 4), or on a grid of 0.5 with a bias on a grid of 0.25
/// when `ties`, so equal scores and equal group scores are frequent) with TopK<K, Score>::forward
/// (blocks of lane_width tokens in SIMD lanes, then the tail per token) and with
/// detail::route_token per token; returns the tokens whose indices or weights differ in any bit.
template <int K, class Score, class T>
int tokens_routed_differently(sy::index_t E, int G, int Gk, bool bias, sy::index_t Tn,
                              unsigned seed, bool ties) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, 2.0);
  std::vector<T> z(static_cast<std::size_t>(Tn * E));
  for (T& v : z) v = ties ? static_cast<T>(std::round(d(gen) * 2) / 2) : static_cast<T>(d(gen));
  sy::RouterParams p = params(E);
  if (G > 1) {
    p.num_groups = G;
    p.group_topk = Gk;
  }
  if (bias) {
    p.expert_bias.resize(static_cast<std::size_t>(E));
    for (double& b : p.expert_bias) b = ties ? 0.25 * static_cast<double>(gen() % 3) : 0.1 * d(gen);
  }
  p.topk_scaling_factor = 2.5;
  const sy::TopK<K, Score> router(p);
  const auto out = router.forward(sy::exec::Host{}, cview(z, Tn, E));
  std::vector<T> converted_bias;
  const auto a = router.template args<T>(converted_bias);
  int differ = 0;
  for (sy::index_t t = 0; t < Tn; ++t) {
    std::int32_t idx[K];
    T prob[K];
    sy::detail::route_token<K, Score>(&z[static_cast<std::size_t>(t * E)], a, idx, prob);
    differ +=
        std::memcmp(idx, &out.topk_indices[static_cast<std::size_t>(t * K)], sizeof idx) != 0 ||
        std::memcmp(prob, &out.topk_probs[static_cast<std::size_t>(t * K)], sizeof prob) != 0;
  }
  return differ;
}

}  // namespace

BOOST_AUTO_TEST_CASE_TEMPLATE(routing_in_lanes_is_bit_identical_to_routing_per_token, T,
                              float_types) {
  // Also on threads over the blocks (when OpenMP is linked).
  const auto saved = sy::exec::min_parallel_work;
  sy::exec::min_parallel_work = 1;
  for (unsigned seed = 0; seed < 12; ++seed)
    for (const bool ties : {false, true}) {
      BOOST_TEST_CONTEXT("seed " << seed << (ties ? ", ties" : "")) {
        // DeepSeek-V3-like: sigmoid, 8 groups choose 4, bias; and the bench's 64 / 8 / 3 / k 6.
        BOOST_TEST(
            (tokens_routed_differently<8, sy::Sigmoid, T>(256, 8, 4, true, 29, seed, ties)) == 0);
        BOOST_TEST((tokens_routed_differently<6, sy::Sigmoid, T>(64, 8, 3, true, 37, seed, ties)) ==
                   0);
        BOOST_TEST((tokens_routed_differently<2, sy::Softmax, T>(8, 1, 1, false, 43, seed, ties)) ==
                   0);
        BOOST_TEST((tokens_routed_differently<4, sy::PreSoftmax, T>(16, 4, 2, false, 21, seed,
                                                                    ties)) == 0);
        BOOST_TEST((tokens_routed_differently<3, sy::SqrtSoftplus, T>(12, 1, 1, true, 16, seed,
                                                                      ties)) == 0);
        BOOST_TEST((tokens_routed_differently<1, sy::Sigmoid, T>(5, 1, 1, false, 17, seed, ties)) ==
                   0);
        BOOST_TEST((tokens_routed_differently<2, sy::Softmax, T>(6, 3, 1, false, 7, seed, ties)) ==
                   0);
        // More experts than the lanes buffer: per token only.
        BOOST_TEST(
            (tokens_routed_differently<2, sy::Sigmoid, T>(300, 1, 1, false, 9, seed, ties)) == 0);
      }
    }
  sy::exec::min_parallel_work = saved;
}

BOOST_AUTO_TEST_CASE_TEMPLATE(non_finite_logits_in_a_block_name_their_token, T, float_types) {
  std::vector<T> z(40 * 8, T(0.5));
  sy::TopK<2, sy::Softmax> r(params(8));
  for (const T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                      -std::numeric_limits<T>::infinity()}) {
    z[19 * 8 + 5] = bad;
    BOOST_CHECK_EXCEPTION(r.forward(sy::exec::Host{}, cview(z, 40, 8)), sy::numeric_error,
                          [](const sy::numeric_error& e) {
                            return std::string(e.what()).find(
                                       "token 19 are not finite (expert 5") != std::string::npos;
                          });
    z[19 * 8 + 5] = T(0.5);
  }
  BOOST_CHECK_NO_THROW(r.forward(sy::exec::Host{}, cview(z, 40, 8)));
}

BOOST_AUTO_TEST_CASE(nan_logits_throw_numeric_error_naming_the_token) {
  auto z = golden<double>();
  z[3 * 4 + 2] = std::nan("");
  sy::TopK<2, sy::Softmax> r(params(4));
  BOOST_CHECK_EXCEPTION(r.forward(sy::exec::Host{}, cview(z, 6, 4)), sy::numeric_error,
                        [](const sy::numeric_error& e) {
                          return std::string(e.what()).find("token 3") != std::string::npos;
                        });
  z[3 * 4 + 2] = 0;
  z[5 * 4] = INFINITY;
  BOOST_CHECK_THROW(r.forward(sy::exec::Host{}, cview(z, 6, 4)), sy::numeric_error);
}

BOOST_AUTO_TEST_CASE(bad_parameters_are_precondition_errors) {
  auto p = params(4);
  BOOST_CHECK_THROW((sy::TopK<8, sy::Softmax>(p)), sy::precondition_error);
  p.expert_bias = {0, 0, 0};
  BOOST_CHECK_THROW((sy::TopK<2, sy::Sigmoid>(p)), sy::precondition_error);
  p.expert_bias = {0, 0, 0, 0};
  BOOST_CHECK_THROW((sy::TopK<2, sy::Softmax>(p)), sy::precondition_error);
  auto g = params(6);
  g.num_groups = 4;
  g.group_topk = 1;
  BOOST_CHECK_THROW((sy::TopK<2, sy::Softmax>(g)), sy::precondition_error);
}

BOOST_AUTO_TEST_CASE(with_router_picks_the_policy_of_the_config) {
  sy::Config c;
  c.num_experts = 4;
  c.num_experts_per_token = 2;
  c.score_function = sy::ScoreFunction::sigmoid;
  c.enable_expert_bias = true;
  c.expert_bias = {0, 0, 0.5, 0};
  const auto g = golden<double>();
  const auto dense = sy::with_router(c, [&](const auto& r) {
    return r.forward(sy::exec::Host{}, cview(g, 6, 4)).dense_probs();
  });
  BOOST_TEST(std::abs(dense[2] - .32576) <= golden_tol);
  c.num_experts_per_token = 9;
  BOOST_CHECK_THROW(sy::with_router(c, [](const auto&) { return 0; }), sy::config_error);
}

BOOST_AUTO_TEST_SUITE_END()
