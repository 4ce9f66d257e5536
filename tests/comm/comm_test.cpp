#define BOOST_TEST_MODULE comm
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "switchyard/comm/communicator.hpp"
#include "switchyard/comm/compression.hpp"

namespace sy = switchyard;

BOOST_AUTO_TEST_CASE(local_communicator_is_one_rank_that_copies) {
  sy::LocalComm c;
  BOOST_TEST(c.rank() == 0);
  BOOST_TEST(c.size() == 1);
  std::vector<double> a{1, 2, 3}, b(3);
  const std::vector<std::int64_t> n{3};
  c.all_to_all_v(a.data(), n, b.data(), n);
  BOOST_TEST(a == b, boost::test_tools::per_element());
  c.all_reduce(b.data(), 3, sy::ReduceOp::sum);
  BOOST_TEST(a == b, boost::test_tools::per_element());
  std::vector<double> g(3);
  c.all_gather(a.data(), 3, g.data());
  BOOST_TEST(a == g, boost::test_tools::per_element());
  const std::vector<std::int64_t> two{2};
  BOOST_CHECK_THROW(c.all_to_all_v(a.data(), n, b.data(), two), sy::precondition_error);
  BOOST_TEST((sy::exchange_counts(c, std::vector<std::int64_t>{5}) == std::vector<std::int64_t>{5}));
  BOOST_CHECK_NO_THROW(sy::require_agreement(c, 123, "config"));
}

BOOST_AUTO_TEST_CASE(fnv1a_is_the_reference_hash) {
  BOOST_TEST(sy::fnv1a64("") == 0xcbf29ce484222325ull);
  BOOST_TEST(sy::fnv1a64("a") == 0xaf63dc4c8601ec8cull);
}

// bfloat16 rounding (gradient_compression): to nearest, ties to even, through the float bits.
BOOST_AUTO_TEST_CASE(bfloat16_rounds_to_nearest_even) {
  using sy::detail::from_bf16_bits;
  using sy::detail::to_bf16_bits;
  BOOST_TEST(to_bf16_bits(1.0f) == 0x3f80);
  BOOST_TEST(to_bf16_bits(-2.0f) == 0xc000);
  BOOST_TEST(to_bf16_bits(-0.0f) == 0x8000);
  // The step at 1 is 2^-7: 1 + 2^-8 is a tie and goes to the even 1; 1 + 3·2^-8 to 1 + 2^-6.
  BOOST_TEST(to_bf16_bits(1.00390625f) == 0x3f80);
  BOOST_TEST(from_bf16_bits(to_bf16_bits(1.01171875f)) == 1.015625f);
  BOOST_TEST(from_bf16_bits(to_bf16_bits(1.0050000f)) == 1.0078125f);  // nearer the upper one
  BOOST_TEST(to_bf16_bits(std::numeric_limits<float>::infinity()) == 0x7f80);
  BOOST_TEST(to_bf16_bits(std::numeric_limits<float>::max()) == 0x7f80);  // rounds past bf16's max
  BOOST_TEST(std::isnan(from_bf16_bits(to_bf16_bits(std::nanf("")))));
  BOOST_TEST(std::isnan(from_bf16_bits(to_bf16_bits(-std::nanf("")))));
  // Every bfloat16 value survives the round trip; widening is exact.
  for (std::uint32_t b = 0; b < 0x10000; ++b)
    if (!std::isnan(from_bf16_bits(static_cast<std::uint16_t>(b))))
      BOOST_REQUIRE(to_bf16_bits(from_bf16_bits(static_cast<std::uint16_t>(b))) == b);
  // A double goes through float: 1 + 2^-8 + 2^-30 is above the tie in double, a tie in float.
  BOOST_TEST(sy::detail::round_to_bf16(1.0 + 0x1p-8 + 0x1p-30) == 1.0);
}

// On one rank the bfloat16 sum only rounds (a loop written on one rank gets the numbers it gets
// on many), and a communicator without bfloat16 sums cannot compress.
BOOST_AUTO_TEST_CASE(a_bfloat16_sum_on_one_rank_rounds) {
  sy::LocalComm one;
  std::vector<double> v{1.01171875, -3.0, 1e-3};
  sy::all_reduce_bf16(one, v.data(), 3);
  BOOST_TEST(v[0] == 1.015625);
  BOOST_TEST(v[1] == -3.0);
  BOOST_TEST(v[2] == sy::detail::round_to_bf16(1e-3));
  BOOST_TEST(v[2] != 1e-3);
  std::vector<float> w{1.01171875f};
  sy::sum_gradients(one, w.data(), 1, /*compress=*/false);
  BOOST_TEST(w[0] == 1.01171875f);
  sy::sum_gradients(one, w.data(), 1, /*compress=*/true);
  BOOST_TEST(w[0] == 1.015625f);
  static_assert(sy::BfloatCommunicator<sy::LocalComm>);
}
