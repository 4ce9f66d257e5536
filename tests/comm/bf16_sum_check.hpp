#pragma once
// A check of gradient_compression's bfloat16 sum over an MPI group (comm/compression.hpp), for
// Boost.Test programs under mpirun: every rank of `group` holds the same result bits, each a
// bfloat16 value, within bfloat16's rounding of the exact sum of the ranks' `mine` (bfloat16 has
// 8 significant bits: each rounding moves a value by at most 2^-8 of it; one per rank's value,
// of at most the sum of magnitudes M together, and one per addition, of a partial sum of at most
// about M: under (size + 1)·2^-8·M); with `exact_pair` (one sum over two ranks) exactly
// bf16(bf16(a) + bf16(b)).
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "switchyard/comm/mpi.hpp"

namespace sy_test {

// Returns how many elements the sum rounded away from the exact one.
template <class T>
int check_bf16_sum(switchyard::MpiComm& group, const std::vector<T>& mine,
                   const std::vector<T>& reduced, bool exact_pair, const std::string& what) {
  using switchyard::detail::round_to_bf16;
  const auto n = static_cast<std::int64_t>(mine.size());
  const int size = group.size();
  BOOST_REQUIRE_EQUAL(reduced.size(), mine.size());
  std::vector<T> all_mine(static_cast<std::size_t>(n * size)), all_reduced(all_mine.size());
  group.all_gather(mine.data(), n, all_mine.data());
  group.all_gather(reduced.data(), n, all_reduced.data());
  int rounded_away = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const T r = reduced[static_cast<std::size_t>(i)];
    double exact = 0, magnitude = 0;
    for (int p = 0; p < size; ++p) {
      const auto at = static_cast<std::size_t>(p * n + i);
      BOOST_REQUIRE_MESSAGE(all_reduced[at] == r, what << "[" << i << "] differs on rank " << p);
      exact += static_cast<double>(all_mine[at]);
      magnitude += std::abs(static_cast<double>(all_mine[at]));
    }
    BOOST_REQUIRE_MESSAGE(round_to_bf16(r) == r, what << "[" << i << "] is not bfloat16");
    BOOST_REQUIRE_MESSAGE(
        std::abs(static_cast<double>(r) - exact) <= (size + 1) * 0x1p-8 * magnitude,
        what << "[" << i << "]: " << r << ", exact " << exact);
    if (static_cast<double>(r) != exact) ++rounded_away;
    if (exact_pair) {
      BOOST_REQUIRE_EQUAL(size, 2);
      const float a = round_to_bf16(static_cast<float>(all_mine[static_cast<std::size_t>(i)]));
      const float b = round_to_bf16(static_cast<float>(all_mine[static_cast<std::size_t>(n + i)]));
      BOOST_REQUIRE_MESSAGE(static_cast<float>(r) == round_to_bf16(a + b),
                            what << "[" << i << "] is not bf16(bf16(a) + bf16(b))");
    }
  }
  return rounded_away;
}

}  // namespace sy_test
