// A one-rank NCCL communicator gives what LocalComm gives.
#include <boost/test/unit_test.hpp>

#include <vector>

#include "comm_device.hpp"
#include "switchyard/comm/communicator.hpp"

namespace sy = switchyard;

BOOST_AUTO_TEST_CASE(one_rank_nccl_matches_the_local_communicator,
                     *boost::unit_test::precondition([](boost::unit_test::test_unit_id) {
                       return boost::test_tools::assertion_result(sy::test::nccl_available());
                     })) {
  std::vector<double> data(1000);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = 0.5 * static_cast<double>(i) - 7.25;
  sy::LocalComm local;
  std::vector<double> a(data.size()), b(data.size());
  const std::vector<std::int64_t> counts{static_cast<std::int64_t>(data.size())};
  local.all_to_all_v(data.data(), counts, a.data(), counts);
  local.all_reduce(a.data(), static_cast<std::int64_t>(a.size()), sy::ReduceOp::sum);
  local.all_gather(a.data(), static_cast<std::int64_t>(a.size()), b.data());
  BOOST_TEST(sy::test::nccl_one_rank_roundtrip(data) == b, boost::test_tools::per_element());
}
