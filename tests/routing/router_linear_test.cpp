// Router linear layer z = x·W_rᵀ + b (REFERENCE §1, §8) and input jitter.
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "routing_fixtures.hpp"

namespace sy = switchyard;
using namespace sy_test;

BOOST_AUTO_TEST_SUITE(router_linear)

BOOST_AUTO_TEST_CASE(forward_is_x_times_w_transposed_plus_bias) {
  const std::vector<double> x = {1, 2, 3, -1, 0, 2};     // [2][3]
  const std::vector<double> w = {1, 0, 1, 0.5, -1, 2};   // [2][3]
  const std::vector<double> b = {0.25, -0.5};
  std::vector<double> z(4);
  sy::router_linear_forward(sy::exec::Host{}, cview(x, 2, 3), cview(w, 2, 3),
                            sy::vector_view<const double>(b.data(), 2), mview(z, 2, 2));
  BOOST_TEST(z == (std::vector<double>{4.25, 4.0, 1.25, 3.0}), boost::test_tools::per_element());
}

// The whole router chain x -> z -> TopK with aux and z-loss -> L = Σ g·p + losses, checked by
// central differences on x, W and b (relative error below 1e-6 in double).
BOOST_AUTO_TEST_CASE(backward_through_router_and_losses_matches_finite_differences) {
  const sy::index_t Tn = 5, H = 4, E = 6;
  sy::RouterParams p;
  p.num_experts = E;
  p.losses.balance = {{sy::LoadBalancingType::aux_loss, 0.05}};
  p.losses.z_loss_coeff = 0.01;
  const sy::TopK<2, sy::Sigmoid> router(p);
  const auto x = random_logits<double>(31, Tn * H);
  const auto w = random_logits<double>(32, E * H);
  const auto b = random_logits<double>(33, E);
  const auto g = random_logits<double>(34, Tn * 2, 1.0);
  const auto loss = [&](const std::vector<double>& xx, const std::vector<double>& ww,
                        const std::vector<double>& bb) {
    std::vector<double> z(Tn * E);
    sy::router_linear_forward(sy::exec::Host{}, cview(xx, Tn, H), cview(ww, E, H),
                              sy::vector_view<const double>(bb.data(), E), mview(z, Tn, E));
    bool same = true;
    return objective(router, z, Tn, g, nullptr, &same);
  };
  std::vector<double> z(Tn * E), dz(Tn * E), dx(Tn * H), dw(E * H), db(E);
  sy::router_linear_forward(sy::exec::Host{}, cview(x, Tn, H), cview(w, E, H),
                            sy::vector_view<const double>(b.data(), E), mview(z, Tn, E));
  const auto out = router.forward(sy::exec::Host{}, cview(z, Tn, E));
  router.backward(sy::exec::Host{}, out, cview(g, Tn, 2), mview(dz, Tn, E));
  sy::router_linear_backward(sy::exec::Host{}, cview(x, Tn, H), cview(w, E, H), cview(dz, Tn, E),
                             mview(dx, Tn, H), mview(dw, E, H),
                             sy::vector_view<double>(db.data(), E));
  const double h = 1e-6;
  const auto check = [&](const char* what, std::vector<double> v, const std::vector<double>& grad,
                         auto eval) {
    double err = 0, ref = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const double keep = v[i];
      v[i] = keep + h;
      const double lp = eval(v);
      v[i] = keep - h;
      const double lm = eval(v);
      v[i] = keep;
      err = std::max(err, std::abs((lp - lm) / (2 * h) - grad[i]));
      ref = std::max(ref, std::abs(grad[i]));
    }
    BOOST_TEST(err / ref < 1e-6, what << ": relative error " << err / ref);
  };
  check("dx", x, dx, [&](const std::vector<double>& v) { return loss(v, w, b); });
  check("dW", w, dw, [&](const std::vector<double>& v) { return loss(x, v, b); });
  check("db", b, db, [&](const std::vector<double>& v) { return loss(x, w, v); });
}

BOOST_AUTO_TEST_CASE(jitter_draws_from_philox_within_one_plus_minus_eps) {
  std::vector<double> x(8 * 16, 1.0);
  sy::JitterParams j{0.1, 42, 3, 100};
  sy::apply_input_jitter(sy::exec::Host{}, mview(x, 8, 16), j);
  for (sy::index_t t = 0; t < 8; ++t)
    for (sy::index_t h = 0; h < 16; ++h) {
      const double u = sy::philox_uniform(42, 3, static_cast<std::uint32_t>(100 + t),
                                          static_cast<std::uint32_t>(h));
      BOOST_TEST(x[t * 16 + h] == double(float(0.9) + 0.2f * float(u)),
                 boost::test_tools::tolerance(1e-7));
      BOOST_TEST((x[t * 16 + h] >= 0.9 && x[t * 16 + h] <= 1.1));
    }
  // Another step draws other numbers; eps 0 leaves x alone.
  std::vector<double> y(8 * 16, 1.0);
  sy::apply_input_jitter(sy::exec::Host{}, mview(y, 8, 16), sy::JitterParams{0.1, 42, 4, 100});
  BOOST_TEST(x != y);
  std::vector<double> ones(4, 1.0);
  sy::apply_input_jitter(sy::exec::Host{}, mview(ones, 2, 2), sy::JitterParams{});
  BOOST_TEST(ones == std::vector<double>(4, 1.0));
}

BOOST_AUTO_TEST_SUITE_END()
