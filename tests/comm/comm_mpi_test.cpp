// Runs under mpirun with 2 and 4 processes (CTest label mpi).
#define BOOST_TEST_MODULE comm_mpi
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cmath>
#include <numeric>
#include <span>
#include <thread>
#include <vector>

#include "bf16_sum_check.hpp"
#include "switchyard/comm/mpi.hpp"

namespace sy = switchyard;

struct mpi_environment {
  mpi_environment() { MPI_Init(nullptr, nullptr); }
  ~mpi_environment() { MPI_Finalize(); }
};
BOOST_TEST_GLOBAL_FIXTURE(mpi_environment);

BOOST_AUTO_TEST_CASE(all_to_all_v_with_count_exchange_moves_every_block) {
  sy::MpiComm comm;
  const int P = comm.size(), me = comm.rank();
  // Rank r sends (r + p) % 3 values "1000·r + p" to peer p; rank 0 of a pair may send nothing.
  std::vector<std::int64_t> send_counts(static_cast<std::size_t>(P));
  std::vector<double> send;
  for (int p = 0; p < P; ++p) {
    send_counts[static_cast<std::size_t>(p)] = (me + p) % 3;
    for (int i = 0; i < (me + p) % 3; ++i) send.push_back(1000.0 * me + p);
  }
  const auto recv_counts = sy::exchange_counts(comm, send_counts);
  std::vector<double> recv(static_cast<std::size_t>(
      std::accumulate(recv_counts.begin(), recv_counts.end(), std::int64_t{0})));
  comm.all_to_all_v(send.data(), send_counts, recv.data(), recv_counts);
  std::size_t at = 0;
  for (int p = 0; p < P; ++p) {
    BOOST_TEST(recv_counts[static_cast<std::size_t>(p)] == (p + me) % 3);
    for (int i = 0; i < (p + me) % 3; ++i) BOOST_TEST(recv[at++] == 1000.0 * p + me);
  }
}

BOOST_AUTO_TEST_CASE(all_reduce_all_gather_and_split_groups) {
  sy::MpiComm comm;
  double v[2] = {static_cast<double>(comm.rank()), 1.0};
  comm.all_reduce(v, 2, sy::ReduceOp::sum);
  BOOST_TEST(v[0] == comm.size() * (comm.size() - 1) / 2.0);
  BOOST_TEST(v[1] == comm.size());
  std::int64_t m = comm.rank();
  comm.all_reduce(&m, 1, sy::ReduceOp::max);
  BOOST_TEST(m == comm.size() - 1);
  std::vector<std::int64_t> all(static_cast<std::size_t>(comm.size()));
  const std::int64_t mine = 10 + comm.rank();
  comm.all_gather(&mine, 1, all.data());
  for (int r = 0; r < comm.size(); ++r) BOOST_TEST(all[static_cast<std::size_t>(r)] == 10 + r);
  // Pairs {0,1}, {2,3}: an EP group of 2.
  sy::MpiComm pair = comm.split(comm.rank() / 2, comm.rank());
  BOOST_TEST(pair.size() == std::min(2, comm.size()));
  BOOST_TEST(pair.rank() == comm.rank() % 2);
  comm.barrier();
}

// gradient_compression's sum (bf16_sum_check.hpp): the same bits on every rank, within
// bfloat16's rounding of the exact sum, with two ranks exactly bf16(bf16(a) + bf16(b)).
BOOST_AUTO_TEST_CASE(a_bfloat16_sum_is_the_same_on_every_rank_within_its_rounding) {
  sy::MpiComm comm;
  const int n = 257;
  std::vector<float> mine(n);
  for (int i = 0; i < n; ++i)
    mine[static_cast<std::size_t>(i)] =
        std::sin(0.37f * static_cast<float>(i) + static_cast<float>(comm.rank())) *
        std::ldexp(1.0f, i % 9 - 4);
  std::vector<float> reduced = mine;
  sy::all_reduce_bf16(comm, reduced.data(), n);
  const int rounded_away =
      sy_test::check_bf16_sum(comm, mine, reduced, comm.size() == 2, "the sum");
  BOOST_TEST(rounded_away > n / 2);  // it did compress
  std::vector<sy::bf16> b(1);
  BOOST_CHECK_THROW(comm.all_reduce(b.data(), 1, sy::ReduceOp::max), sy::precondition_error);
}

BOOST_AUTO_TEST_CASE(a_config_mismatch_is_an_error_on_every_rank) {
  sy::MpiComm comm;
  BOOST_CHECK_NO_THROW(sy::require_agreement(comm, 77, "config"));
  const std::uint64_t fp = comm.rank() == comm.size() - 1 ? 78 : 77;
  BOOST_CHECK_EXCEPTION(sy::require_agreement(comm, fp, "config"), sy::comm_error,
                        [&](const sy::comm_error& e) {
                          return std::string(e.what()).find(
                                     "ranks disagree on the config: rank(s) " +
                                     std::to_string(comm.size() - 1)) != std::string::npos;
                        });
}

BOOST_AUTO_TEST_CASE(a_collective_a_late_peer_misses_times_out_with_an_error) {
  sy::MpiComm comm;
  sy::MpiComm group = comm.split(0, comm.rank());  // a private communicator for this test
  if (group.rank() == 0) {
    group.set_timeout(std::chrono::milliseconds(200));
    BOOST_CHECK_EXCEPTION(group.barrier(), sy::comm_error, [](const sy::comm_error& e) {
      const std::string w = e.what();
      return w.find("barrier on rank 0") != std::string::npos &&
             w.find("timed out after 200 ms") != std::string::npos;
    });
    BOOST_CHECK_THROW(group.barrier(), sy::precondition_error);  // still pending
    group.finish_pending();  // the late peers arrive
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    group.barrier();
  }
  comm.barrier();
}

// An exchange dropped before its wait (an exception between start and wait) completes in its
// destructor, so the caller's buffers are not freed under it: the data is there when the
// pending object is gone, and the communicator takes the next collective. Rank 0 starts late,
// so without the destructor's wait the others would read their buffers before it sent.
BOOST_AUTO_TEST_CASE(an_exchange_dropped_before_its_wait_completes_first) {
  sy::MpiComm comm;
  const int P = comm.size(), me = comm.rank();
  const std::vector<std::int64_t> counts(static_cast<std::size_t>(P), 2);
  std::vector<double> send(static_cast<std::size_t>(2 * P)), recv(send.size(), -1.0);
  for (int p = 0; p < P; ++p)
    for (int i = 0; i < 2; ++i) send[static_cast<std::size_t>(2 * p + i)] = 100.0 * me + 10 * p + i;
  if (me == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  {
    [[maybe_unused]] auto started =
        comm.all_to_all_v_start(send.data(), std::span<const std::int64_t>(counts), recv.data(),
                                std::span<const std::int64_t>(counts));
  }  // dropped without wait()
  for (int p = 0; p < P; ++p)
    for (int i = 0; i < 2; ++i)
      BOOST_TEST(recv[static_cast<std::size_t>(2 * p + i)] == 100.0 * p + 10 * me + i);
  BOOST_CHECK_NO_THROW(comm.barrier());
}

// Counts MPI cannot carry (int) are rejected with a message before any MPI call (issue 11).
BOOST_AUTO_TEST_CASE(counts_beyond_int_are_rejected_with_a_message) {
  BOOST_CHECK_EXCEPTION(sy::detail::to_mpi_count(std::int64_t{3'000'000'000}, "all_to_all_v send block"),
                        sy::precondition_error, [](const sy::precondition_error& e) {
                          return std::string(e.what()).find(
                                     "all_to_all_v send block of 3000000000 elements does not fit") !=
                                 std::string::npos;
                        });
  BOOST_TEST(sy::detail::to_mpi_count(std::int64_t{2'000'000'000}, "ok") == 2'000'000'000);
}
