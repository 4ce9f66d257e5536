// CUDA against the host backend on the same inputs. Exits 77 (CTest: skipped) without a GPU.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_MODULE cuda
#include <boost/test/unit_test.hpp>

#include <cstdio>

#include "device_kernels.hpp"
#include "switchyard/core/philox.hpp"

namespace sy = switchyard;

BOOST_AUTO_TEST_CASE(philox_draws_the_same_numbers_on_host_and_device) {
  const std::uint32_t n = 1 << 16;
  const auto dev = sy::test::device_philox_uniform(1234, 7, 3, n);
  for (std::uint32_t i = 0; i < n; ++i)
    BOOST_REQUIRE_EQUAL(dev[i], sy::philox_uniform(1234, 7, i, 3));  // bit-identical
}

int main(int argc, char** argv) {
  if (sy::test::device_count() == 0) {
    std::printf("cuda_test: skipped: no CUDA device is visible on this machine\n");
    return 77;
  }
  std::printf("cuda_test: running on %s\n", sy::test::device_name().c_str());
  return boost::unit_test::unit_test_main([] { return true; }, argc, argv);
}
