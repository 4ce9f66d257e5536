// Losses (REFERENCE §5): golden values of §7, perfect balance, sequence and global variants.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <tuple>

#include "routing_fixtures.hpp"

namespace sy = switchyard;
using namespace sy_test;

namespace {

using float_types = std::tuple<float, double>;

sy::RouterParams with_losses(sy::index_t E, std::vector<sy::BalanceLoss> balance, double z = 0,
                             sy::index_t seq = 0,
                             sy::TokenLayout layout = sy::TokenLayout::seq_batch) {
  sy::RouterParams p;
  p.num_experts = E;
  p.losses.balance = std::move(balance);
  p.losses.z_loss_coeff = z;
  p.losses.sequence_length = seq;
  p.losses.token_layout = layout;
  return p;
}

// The Switch aux loss written out from REFERENCE §5 for a softmax router, independently of the
// library: α·E/(k·T²)·Σ_e (Σ_t q_te)·c_e over the given token rows.
double switch_aux(const std::vector<double>& z, const std::vector<sy::index_t>& rows,
                  sy::index_t E, int k, double alpha) {
  std::vector<double> qsum(E, 0.0), c(E, 0.0);
  for (auto t : rows) {
    std::vector<double> q(E);
    double m = z[t * E], s = 0;
    for (sy::index_t e = 0; e < E; ++e) m = std::max(m, z[t * E + e]);
    for (sy::index_t e = 0; e < E; ++e) s += q[e] = std::exp(z[t * E + e] - m);
    std::vector<int> order(E);
    for (sy::index_t e = 0; e < E; ++e) {
      q[e] /= s;
      qsum[e] += q[e];
      order[e] = static_cast<int>(e);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return q[a] > q[b]; });
    for (int j = 0; j < k; ++j) c[order[j]] += 1;
  }
  const double Tn = static_cast<double>(rows.size());
  double L = 0;
  for (sy::index_t e = 0; e < E; ++e) L += qsum[e] * c[e];
  return alpha * static_cast<double>(E) / (k * Tn * Tn) * L;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(losses)

// Golden values to 9 significant digits: 1e-9 absolute in double, 1e-7 in float (fp32 sums of
// six rows of four terms).
BOOST_AUTO_TEST_CASE_TEMPLATE(aux_and_z_loss_match_golden, T, float_types) {
  const double tol = std::is_same_v<T, float> ? 1e-7 : 1e-9;
  const auto z = golden<T>();
  const sy::TopK<2, sy::Softmax> r(
      with_losses(4, {{sy::LoadBalancingType::aux_loss, 1e-2}}, 1e-3));
  const auto out = r.forward(sy::exec::Host{}, cview(z, 6, 4));
  BOOST_REQUIRE(out.aux_loss.has_value());
  BOOST_REQUIRE(out.z_loss.has_value());
  BOOST_TEST(std::abs(*out.aux_loss - 0.010056741) <= tol);
  BOOST_TEST(std::abs(*out.z_loss - 0.005225256) <= tol);
}

BOOST_AUTO_TEST_CASE(no_losses_report_nothing) {
  const auto z = golden<double>();
  const auto out = sy::TopK<2, sy::Softmax>(with_losses(4, {})).forward(sy::exec::Host{},
                                                                        cview(z, 6, 4));
  BOOST_TEST(!out.aux_loss.has_value());
  BOOST_TEST(!out.z_loss.has_value());
}

BOOST_AUTO_TEST_CASE(aux_loss_equals_its_coefficient_at_perfect_balance) {
  // Cyclic rows: token t has the logits of token 0 rotated by t, so Σ_t q_te = T/E and each
  // expert is in k of the E rotations' top-k: perfect balance, L_aux / α = 1 (REFERENCE §5).
  for (std::uint64_t seed = 1; seed <= 10; ++seed) {
    const sy::index_t E = 8, Tn = 16;
    const auto base = random_logits<double>(seed, E);
    std::vector<double> z(Tn * E);
    for (sy::index_t t = 0; t < Tn; ++t)
      for (sy::index_t e = 0; e < E; ++e) z[t * E + e] = base[(e + t) % E];
    const double alpha = 0.01 * static_cast<double>(seed);
    const auto check = [&](const auto& r) {
      const auto out = r.forward(sy::exec::Host{}, cview(z, Tn, E));
      BOOST_TEST(*out.aux_loss == alpha, boost::test_tools::tolerance(1e-12));
    };
    check(sy::TopK<2, sy::Softmax>(with_losses(E, {{sy::LoadBalancingType::aux_loss, alpha}})));
    check(sy::TopK<3, sy::Sigmoid>(with_losses(E, {{sy::LoadBalancingType::aux_loss, alpha}})));
    check(sy::TopK<1, sy::PreSoftmax>(
        with_losses(E, {{sy::LoadBalancingType::aux_loss, alpha}})));
  }
}

BOOST_AUTO_TEST_CASE(sequence_aux_loss_is_the_mean_over_sequences_in_either_layout) {
  const sy::index_t S = 5, B = 3, E = 6, Tn = S * B;
  const auto z = random_logits<double>(7, Tn * E);
  for (auto layout : {sy::TokenLayout::seq_batch, sy::TokenLayout::batch_seq}) {
    const sy::TopK<2, sy::Softmax> r(
        with_losses(E, {{sy::LoadBalancingType::seq_aux_loss, 0.1}}, 0, S, layout));
    const double got = *r.forward(sy::exec::Host{}, cview(z, Tn, E)).aux_loss;
    double want = 0;
    for (sy::index_t b = 0; b < B; ++b) {
      std::vector<sy::index_t> rows;
      for (sy::index_t s = 0; s < S; ++s)
        rows.push_back(layout == sy::TokenLayout::seq_batch ? s * B + b : b * S + s);
      want += switch_aux(z, rows, E, 2, 0.1) / B;
    }
    BOOST_TEST(got == want, boost::test_tools::tolerance(1e-12));
  }
  // A token count that is not a whole number of sequences is a caller error.
  const sy::TopK<2, sy::Softmax> bad(
      with_losses(E, {{sy::LoadBalancingType::seq_aux_loss, 0.1}}, 0, 4));
  BOOST_CHECK_THROW(bad.forward(sy::exec::Host{}, cview(z, Tn, E)), sy::precondition_error);
}

BOOST_AUTO_TEST_CASE(global_aux_loss_uses_the_running_mean_of_counts_and_resets) {
  const sy::index_t E = 4, Tn = 6;
  const auto z1 = random_logits<double>(11, Tn * E);
  const auto z2 = random_logits<double>(12, Tn * E);
  const sy::TopK<2, sy::Softmax> global(
      with_losses(E, {{sy::LoadBalancingType::global_aux_loss, 0.1}}));
  const sy::TopK<2, sy::Softmax> plain(with_losses(E, {{sy::LoadBalancingType::aux_loss, 0.1}}));
  sy::GlobalAuxLoss acc;
  sy::RouteContext ctx;
  ctx.global_aux = &acc;
  // First micro-batch: the running mean is its own counts, so it equals the Switch loss.
  const double first = *global.forward(sy::exec::Host{}, cview(z1, Tn, E), ctx).aux_loss;
  BOOST_TEST(first == *plain.forward(sy::exec::Host{}, cview(z1, Tn, E)).aux_loss,
             boost::test_tools::tolerance(1e-14));
  // Second: Σ_t q of micro-batch 2 against the mean counts of both.
  const double second = *global.forward(sy::exec::Host{}, cview(z2, Tn, E), ctx).aux_loss;
  const auto c1 = plain.forward(sy::exec::Host{}, cview(z1, Tn, E)).tokens_per_expert;
  const auto c2 = plain.forward(sy::exec::Host{}, cview(z2, Tn, E)).tokens_per_expert;
  double want = 0;
  for (sy::index_t e = 0; e < E; ++e) {
    double qsum = 0;
    for (sy::index_t t = 0; t < Tn; ++t) {
      double s = 0;
      for (sy::index_t f = 0; f < E; ++f) s += std::exp(z2[t * E + f]);
      qsum += std::exp(z2[t * E + e]) / s;
    }
    want += qsum * 0.5 * static_cast<double>(c1[e] + c2[e]);
  }
  want *= 0.1 * E / (2.0 * Tn * Tn);
  BOOST_TEST(second == want, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(acc.micro_batches() == 2);
  acc.reset();
  const double again = *global.forward(sy::exec::Host{}, cview(z2, Tn, E), ctx).aux_loss;
  BOOST_TEST(again == *plain.forward(sy::exec::Host{}, cview(z2, Tn, E)).aux_loss,
             boost::test_tools::tolerance(1e-14));
  BOOST_CHECK_THROW(global.forward(sy::exec::Host{}, cview(z2, Tn, E)), sy::precondition_error);
}

BOOST_AUTO_TEST_CASE(several_losses_add_up_with_their_own_coefficients) {
  const sy::index_t S = 4, B = 2, E = 8, Tn = S * B;
  const auto z = random_logits<double>(21, Tn * E);
  const sy::TopK<2, sy::Softmax> both(with_losses(
      E, {{sy::LoadBalancingType::aux_loss, 0.01}, {sy::LoadBalancingType::seq_aux_loss, 0.3}},
      0.002, S));
  const auto out = both.forward(sy::exec::Host{}, cview(z, Tn, E));
  const double a = *sy::TopK<2, sy::Softmax>(with_losses(E, {{sy::LoadBalancingType::aux_loss, 0.01}}))
                        .forward(sy::exec::Host{}, cview(z, Tn, E)).aux_loss;
  const double s = *sy::TopK<2, sy::Softmax>(
                        with_losses(E, {{sy::LoadBalancingType::seq_aux_loss, 0.3}}, 0, S))
                        .forward(sy::exec::Host{}, cview(z, Tn, E)).aux_loss;
  BOOST_REQUIRE_EQUAL(out.balance_losses.size(), 2u);
  BOOST_TEST(out.balance_losses[0] == a, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(out.balance_losses[1] == s, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(*out.aux_loss == a + s, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(out.z_loss.has_value());
}

BOOST_AUTO_TEST_CASE(group_sum_uses_the_counts_and_tokens_of_the_group) {
  // Two identical ranks: the group has twice the counts and twice the tokens, so each rank's
  // share is half the single-rank loss and the group total equals it (REFERENCE §5).
  const sy::index_t E = 8, Tn = 12;
  const auto z = random_logits<double>(41, Tn * E);
  for (auto type : {sy::LoadBalancingType::aux_loss, sy::LoadBalancingType::seq_aux_loss,
                    sy::LoadBalancingType::global_aux_loss}) {
    const sy::TopK<2, sy::Softmax> r(with_losses(E, {{type, 0.1}}, 0, 4));
    sy::GlobalAuxLoss a1, a2;
    sy::RouteContext alone, pair;
    alone.global_aux = &a1;
    pair.global_aux = &a2;
    int calls = 0;
    pair.group_sum = [&calls](std::span<double> v) {
      ++calls;
      for (double& x : v) x *= 2;
    };
    const double single = *r.forward(sy::exec::Host{}, cview(z, Tn, E), alone).aux_loss;
    const auto shared = r.forward(sy::exec::Host{}, cview(z, Tn, E), pair);
    BOOST_TEST(calls == 1);
    BOOST_TEST(*shared.aux_loss == 0.5 * single, boost::test_tools::tolerance(1e-14));
  }
}

// The host layer's fault handling replays the group sums a failed rank missed from
// group_sum_lengths: it must list exactly the calls compute_losses makes, for every loss mix,
// with TopK and Sinkhorn, with tokens and without.
BOOST_AUTO_TEST_CASE(group_sum_lengths_are_the_calls_the_losses_make) {
  const sy::index_t E = 8;
  using LBT = sy::LoadBalancingType;
  const std::vector<std::vector<sy::BalanceLoss>> mixes = {
      {},
      {{LBT::aux_loss, 0.1}},
      {{LBT::seq_aux_loss, 0.1}},
      {{LBT::global_aux_loss, 0.1}},
      {{LBT::aux_loss, 0.1}, {LBT::seq_aux_loss, 0.2}, {LBT::global_aux_loss, 0.3}}};
  for (const auto& mix : mixes)
    for (const double z_coeff : {0.0, 1e-3})
      for (const sy::index_t Tn : {sy::index_t{0}, sy::index_t{12}}) {
        const sy::RouterParams p = with_losses(E, mix, z_coeff, 4);
        const auto z = random_logits<double>(43, Tn * E);
        std::vector<std::size_t> seen;
        sy::GlobalAuxLoss acc;
        sy::RouteContext ctx;
        ctx.global_aux = &acc;
        ctx.group_sum = [&seen](std::span<double> v) { seen.push_back(v.size()); };
        const auto expected = sy::group_sum_lengths(p.losses, E);
        BOOST_TEST_CONTEXT(mix.size() << " balance losses, z " << z_coeff << ", T " << Tn) {
          (void)sy::TopK<2, sy::Softmax>(p).forward(sy::exec::Host{}, cview(z, Tn, E), ctx);
          BOOST_TEST(seen == expected, boost::test_tools::per_element());
          if (mix.empty()) {  // Sinkhorn takes the z-loss only
            seen.clear();
            (void)sy::Sinkhorn<2>(E, p.losses).forward(sy::exec::Host{}, cview(z, Tn, E), ctx);
            BOOST_TEST(seen == expected, boost::test_tools::per_element());
          }
        }
      }
}

BOOST_AUTO_TEST_SUITE_END()
