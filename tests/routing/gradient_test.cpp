// Finite-difference checks in double of every backward (REFERENCE §8): the relative error of the
// analytic d logits against central differences must stay below 1e-6.
#include <boost/test/unit_test.hpp>

#include <tuple>

#include "routing_fixtures.hpp"

namespace sy = switchyard;
using namespace sy_test;

namespace {

constexpr double fd_tol = 1e-6;

sy::RouterParams base(sy::index_t E) {
  sy::RouterParams p;
  p.num_experts = E;
  return p;
}

template <class Router>
void check_router(const Router& r, sy::index_t Tn, std::uint64_t seed) {
  const auto z = random_logits<double>(seed, Tn * r.num_experts());
  const double err = fd_relative_error(r, z, Tn, seed);
  BOOST_TEST(err < fd_tol, "seed " << seed << ": relative error " << err);
}

using scores = std::tuple<sy::Softmax, sy::PreSoftmax, sy::Sigmoid, sy::SqrtSoftplus>;
using scores_k1 = std::tuple<sy::PreSoftmax, sy::Sigmoid, sy::SqrtSoftplus>;
using biased_scores = std::tuple<sy::Sigmoid, sy::SqrtSoftplus>;

}  // namespace

BOOST_AUTO_TEST_SUITE(gradients)

BOOST_AUTO_TEST_CASE_TEMPLATE(every_score_function_k2_k4, Score, scores) {
  for (std::uint64_t seed = 1; seed <= 3; ++seed) {
    check_router(sy::TopK<2, Score>(base(8)), 5, seed);
    check_router(sy::TopK<4, Score>(base(8)), 5, seed);
  }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(k1_for_scores_with_a_gradient, Score, scores_k1) {
  check_router(sy::TopK<1, Score>(base(6)), 7, 4);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(scaling_factor, Score, scores) {
  auto p = base(8);
  p.topk_scaling_factor = 2.5;
  check_router(sy::TopK<2, Score>(p), 6, 5);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(group_limited_routing, Score, scores) {
  auto p = base(16);
  p.num_groups = 4;
  p.group_topk = 2;
  check_router(sy::TopK<4, Score>(p), 6, 6);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(expert_bias, Score, biased_scores) {
  auto p = base(8);
  p.expert_bias = {0.3, -0.2, 0.1, 0.5, 0, -0.4, 0.2, 0};
  p.topk_scaling_factor = 1.5;
  check_router(sy::TopK<2, Score>(p), 6, 7);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(aux_and_z_loss, Score, scores) {
  auto p = base(8);
  p.losses.balance = {{sy::LoadBalancingType::aux_loss, 0.05}};
  p.losses.z_loss_coeff = 0.01;
  check_router(sy::TopK<2, Score>(p), 6, 8);
}

BOOST_AUTO_TEST_CASE(sequence_aux_loss_in_both_layouts) {
  for (auto layout : {sy::TokenLayout::seq_batch, sy::TokenLayout::batch_seq}) {
    auto p = base(8);
    p.losses.balance = {{sy::LoadBalancingType::seq_aux_loss, 0.2}};
    p.losses.sequence_length = 3;
    p.losses.token_layout = layout;
    check_router(sy::TopK<2, sy::Softmax>(p), 6, 9);
    check_router(sy::TopK<2, sy::Sigmoid>(p), 6, 9);
  }
}

BOOST_AUTO_TEST_CASE(several_losses_at_once) {
  auto p = base(8);
  p.losses.balance = {{sy::LoadBalancingType::aux_loss, 0.05},
                      {sy::LoadBalancingType::seq_aux_loss, 0.1}};
  p.losses.sequence_length = 2;
  p.losses.z_loss_coeff = 0.02;
  p.num_groups = 2;
  p.group_topk = 1;
  p.topk_scaling_factor = 0.7;
  check_router(sy::TopK<2, sy::SqrtSoftplus>(p), 6, 10);
}

BOOST_AUTO_TEST_CASE(global_aux_loss) {
  // The accumulator changes with each forward, so the objective restores it before each call.
  const sy::index_t E = 6, Tn = 5;
  auto p = base(E);
  p.losses.balance = {{sy::LoadBalancingType::global_aux_loss, 0.1}};
  const sy::TopK<2, sy::Softmax> r(p);
  sy::GlobalAuxLoss seeded;
  seeded.accumulate({3, 1, 0, 2, 2, 2});
  const auto z = random_logits<double>(12, Tn * E);
  const auto g = random_logits<double>(13, Tn * 2, 1.0);
  const auto run = [&](const std::vector<double>& zz, sy::Routing<double>* keep) {
    sy::GlobalAuxLoss acc = seeded;
    sy::RouteContext ctx;
    ctx.global_aux = &acc;
    auto out = r.forward(sy::exec::Host{}, cview(zz, Tn, E), ctx);
    double L = *out.aux_loss;
    for (std::size_t i = 0; i < g.size(); ++i) L += g[i] * out.topk_probs[i];
    if (keep) *keep = std::move(out);
    return L;
  };
  sy::Routing<double> out;
  run(z, &out);
  std::vector<double> dz(Tn * E);
  r.backward(sy::exec::Host{}, out, cview(g, Tn, 2), mview(dz, Tn, E));
  double err = 0, ref = 0;
  for (std::size_t i = 0; i < z.size(); ++i) {
    auto zp = z, zm = z;
    zp[i] += 1e-6;
    zm[i] -= 1e-6;
    const double fd = (run(zp, nullptr) - run(zm, nullptr)) / 2e-6;
    err = std::max(err, std::abs(fd - dz[i]));
    ref = std::max(ref, std::abs(dz[i]));
  }
  BOOST_TEST(err / ref < fd_tol);
}

BOOST_AUTO_TEST_CASE(sinkhorn_weights_and_z_loss) {
  sy::LossParams l;
  l.z_loss_coeff = 0.01;
  check_router(sy::Sinkhorn<1>(8, l), 6, 14);
  check_router(sy::Sinkhorn<2>(8, l), 6, 15);
}

BOOST_AUTO_TEST_SUITE_END()
