#define BOOST_TEST_MODULE comm
#include <boost/test/unit_test.hpp>

#include <vector>

#include "switchyard/comm/communicator.hpp"

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
