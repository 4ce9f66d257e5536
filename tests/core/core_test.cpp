#define BOOST_TEST_MODULE core
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/core/math.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/core/philox.hpp"

namespace sy = switchyard;

// Known-answer vectors of Random123's Philox4x32-10 (kat_vectors), also checked against
// librandom123-dev's r123::Philox4x32 by hand.
BOOST_AUTO_TEST_CASE(philox_matches_random123_known_answers) {
  const auto a = sy::philox4x32<10>({0, 0, 0, 0}, {0, 0});
  BOOST_TEST(a.c0 == 0x6627e8d5u);
  BOOST_TEST(a.c1 == 0xe169c58du);
  BOOST_TEST(a.c2 == 0xbc57ac4cu);
  BOOST_TEST(a.c3 == 0x9b00dbd8u);
  const auto b = sy::philox4x32<10>({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                                    {0xa4093822u, 0x299f31d0u});
  BOOST_TEST(b.c0 == 0xd16cfe09u);
  BOOST_TEST(b.c1 == 0x94fdccebu);
  BOOST_TEST(b.c2 == 0x5001e420u);
  BOOST_TEST(b.c3 == 0x24126ea1u);
  static_assert(sy::philox4x32<10>({0, 0, 0, 0}, {0, 0}).c0 == 0x6627e8d5u);
}

BOOST_AUTO_TEST_CASE(philox_uniform_is_in_open_closed_unit_interval_and_mean_half) {
  double sum = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const float u = sy::philox_uniform(42, 3, static_cast<std::uint32_t>(i), 7);
    BOOST_REQUIRE(u > 0.0f);
    BOOST_REQUIRE(u <= 1.0f);
    sum += u;
  }
  // Standard error of the mean of U(0,1) over 1e5 draws is 0.0009; 5 sigma.
  BOOST_TEST(std::abs(sum / n - 0.5) < 0.0046);
  BOOST_TEST(sy::philox_uniform(1, 2, 3, 4) == sy::philox_uniform(1, 2, 3, 4));
  BOOST_TEST(sy::philox_uniform(1, 2, 3, 4) != sy::philox_uniform(1, 2, 3, 5));
}

BOOST_AUTO_TEST_CASE(stable_math_does_not_overflow) {
  BOOST_TEST(sy::math::sigmoid(1000.0) == 1.0);
  BOOST_TEST(sy::math::sigmoid(-1000.0) == 0.0);
  BOOST_TEST(std::abs(sy::math::sigmoid(0.3) - 1 / (1 + std::exp(-0.3))) < 1e-15);
  BOOST_TEST(sy::math::softplus(1000.0) == 1000.0);
  BOOST_TEST(std::abs(sy::math::softplus(-3.0) - std::log1p(std::exp(-3.0))) < 1e-15);
  BOOST_TEST(std::isfinite(sy::math::softplus(-1000.0f)));
}

BOOST_AUTO_TEST_CASE(matrix_view_is_row_major_with_64_bit_extents) {
  std::vector<float> buf(12);
  sy::matrix_view<float> m(buf.data(), 3, 4);
  m(1, 2) = 5;
  BOOST_TEST(buf[6] == 5.0f);
  BOOST_TEST(m.extent(0) == 3);
  static_assert(sizeof(sy::index_t) == 8);
}

BOOST_AUTO_TEST_CASE(expects_throws_precondition_error_with_values) {
  auto f = [](int n) { SY_EXPECTS(n > 0, sy::detail::concat("n must be positive, got ", n)); };
  BOOST_CHECK_EXCEPTION(f(-3), sy::precondition_error, [](const sy::precondition_error& e) {
    return std::string(e.what()).find("got -3") != std::string::npos;
  });
  BOOST_CHECK_NO_THROW(f(1));
}
