#define BOOST_TEST_MODULE experts
#include <boost/test/unit_test.hpp>

#include <cmath>

#include "switchyard/experts/activations.hpp"
#include "switchyard/experts/expert_policy.hpp"

namespace sy = switchyard;

using activations = std::tuple<sy::GeLU, sy::GeLUTanh, sy::ReLU, sy::SiLU>;

// Values from torch 2.x in double: gelu(1), gelu(1, approximate='tanh'), silu(1), and at -2.
BOOST_AUTO_TEST_CASE(activation_values_match_torch) {
  BOOST_TEST(sy::GeLU::value(1.0) == 0.8413447460685429, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(sy::GeLU::value(-2.0) == -0.04550026389635842, boost::test_tools::tolerance(1e-14));
  BOOST_TEST(sy::GeLUTanh::value(1.0) == 0.8411919906082768, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(sy::GeLUTanh::value(-2.0) == -0.04540230591222494,
             boost::test_tools::tolerance(1e-14));
  BOOST_TEST(sy::SiLU::value(1.0) == 0.7310585786300049, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(sy::SiLU::value(-2.0) == -0.2384058440442351, boost::test_tools::tolerance(1e-15));
  BOOST_TEST(sy::ReLU::value(-2.0) == 0.0);
  BOOST_TEST(sy::ReLU::value(1.5) == 1.5);
  BOOST_TEST(sy::ReLU::derivative(0.0) == 0.0);  // torch's convention at the kink
  BOOST_TEST(sy::GeLU::value(1.0f) == 0.8413447f, boost::test_tools::tolerance(1e-6f));
}

// Central differences in double: error O(h²) + O(ε/h) ≈ 1e-10 for h = 1e-5, far below 1e-6.
BOOST_AUTO_TEST_CASE_TEMPLATE(derivative_matches_finite_differences, A, activations) {
  const double h = 1e-5;
  for (double x = -4.0; x <= 4.0; x += 0.173) {
    if (std::abs(x) < 1e-3) continue;  // ReLU's kink
    const double fd = (A::value(x + h) - A::value(x - h)) / (2 * h);
    BOOST_TEST(A::derivative(x) == fd, boost::test_tools::tolerance(1e-6));
  }
}

// value_and_derivative (SiLU's shares σ(x); the others call both) gives the bits of value() and
// derivative(), in float and double, over a range that reaches exp's overflow.
BOOST_AUTO_TEST_CASE_TEMPLATE(value_and_derivative_give_the_same_bits, A, activations) {
  for (double x = -120.0; x <= 120.0; x += 0.0371) {
    double v = 0, d = 0;
    sy::value_and_derivative<A>(x, v, d);
    BOOST_TEST(v == A::value(x));
    BOOST_TEST(d == A::derivative(x));
    const auto xf = static_cast<float>(x);
    float vf = 0, df = 0;
    sy::value_and_derivative<A>(xf, vf, df);
    BOOST_TEST(vf == A::value(xf));
    BOOST_TEST(df == A::derivative(xf));
  }
}

BOOST_AUTO_TEST_CASE(large_inputs_stay_finite) {
  BOOST_TEST(sy::SiLU::value(-1000.0) == 0.0, boost::test_tools::tolerance(1e-300));
  BOOST_TEST(sy::SiLU::value(1000.0) == 1000.0);
  BOOST_TEST(std::isfinite(sy::GeLUTanh::derivative(-50.0f)));
  BOOST_TEST(std::isfinite(sy::SiLU::derivative(-200.0f)));
}

BOOST_AUTO_TEST_CASE(config_activation_and_gated_select_the_policy) {
  auto name = [](sy::Activation a, bool gated) {
    return sy::visit_expert_policy(a, gated, [](auto p) {
      using P = decltype(p);
      return std::pair{P::activation::kind, P::gated};
    });
  };
  for (auto a : {sy::Activation::gelu, sy::Activation::gelu_tanh, sy::Activation::relu,
                 sy::Activation::silu})
    for (bool g : {false, true}) {
      const auto [kind, gated] = name(a, g);
      BOOST_TEST((kind == a));
      BOOST_TEST(gated == g);
    }
  sy::Config c;
  c.activation = sy::Activation::silu;
  c.gated = true;
  BOOST_TEST(
      sy::visit_expert_policy(c, [](auto p) { return std::is_same_v<decltype(p), sy::SwiGLU>; }));
}

struct NotAnExpert {
  using activation = sy::SiLU;
  static constexpr bool gated = true;
  static constexpr sy::index_t fc1_multiplier = 2;
};
struct WrongMultiplier {
  using policy_kind = sy::expert_tag;
  using activation = sy::SiLU;
  static constexpr bool gated = true;
  static constexpr sy::index_t fc1_multiplier = 1;
};
static_assert(!sy::ExpertPolicy<NotAnExpert>, "an expert policy needs the expert_tag");
static_assert(!sy::ExpertPolicy<WrongMultiplier>, "a gated policy has 2F fc1 rows");
static_assert(!sy::ExpertPolicy<sy::SiLU>);
