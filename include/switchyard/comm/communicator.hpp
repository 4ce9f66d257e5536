#pragma once
/// \file The Communicator concept: what an MoE layer needs from a process group (ARCHITECTURE.md,
/// "Communication"), and the single-rank LocalComm.
///
/// Every collective is called by every rank of the group, in the same order, even by a rank with
/// zero tokens. Counts and displacements are in elements.

#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "switchyard/core/error.hpp"

namespace switchyard {

/// Reduction operators of all_reduce.
enum class ReduceOp { sum, max };

/// A process group a layer can exchange tokens and reduce gradients over. `all_to_all_v` sends
/// send_counts[p] elements to peer p (taken consecutively from `send`) and receives
/// recv_counts[p] elements from peer p (stored consecutively in `recv`).
template <class C>
concept Communicator = requires(C& c, const C& cc, const double* src, double* dst,
                                std::span<const std::int64_t> counts, std::int64_t n) {
  { cc.rank() } -> std::convertible_to<int>;
  { cc.size() } -> std::convertible_to<int>;
  c.all_to_all_v(src, counts, dst, counts);
  c.all_reduce(dst, n, ReduceOp::sum);
  c.all_gather(src, n, dst);
  c.barrier();
};

/// One rank, no other process: every collective is a local copy. The default communicator.
class LocalComm {
 public:
  int rank() const { return 0; }
  int size() const { return 1; }

  template <class T>
  void all_to_all_v(const T* send, std::span<const std::int64_t> send_counts, T* recv,
                    std::span<const std::int64_t> recv_counts) {
    SY_EXPECTS(send_counts.size() == 1 && recv_counts.size() == 1 &&
                   send_counts[0] == recv_counts[0],
               detail::concat("a one-rank all_to_all_v must send what it receives, got ",
                              send_counts.size() ? send_counts[0] : -1, " and ",
                              recv_counts.size() ? recv_counts[0] : -1));
    if (send_counts[0] > 0 && send != recv)
      std::memmove(recv, send, sizeof(T) * static_cast<std::size_t>(send_counts[0]));
  }
  template <class T>
  void all_reduce(T*, std::int64_t, ReduceOp) {}
  template <class T>
  void all_gather(const T* send, std::int64_t n, T* recv) {
    if (n > 0 && send != recv) std::memmove(recv, send, sizeof(T) * static_cast<std::size_t>(n));
  }
  void barrier() {}
};

static_assert(Communicator<LocalComm>);

/// A communicator whose buffers are host memory: every Communicator except those that declare
/// `static constexpr bool device_memory = true` (NcclComm, whose collectives take device
/// pointers). The host layer needs one; the device layer takes NcclComm.
template <class C>
concept HostCommunicator = Communicator<C> && !requires {
  requires C::device_memory;
};

static_assert(HostCommunicator<LocalComm>);

/// Exchanges per-peer counts: recv_counts[p] = what peer p sends to this rank (an all-to-all of
/// one integer per peer). This is the count exchange that precedes a variable all_to_all_v. The
/// counts are host vectors, so the communicator must take host memory (not NcclComm).
template <HostCommunicator Comm>
std::vector<std::int64_t> exchange_counts(Comm& comm, std::span<const std::int64_t> send_counts) {
  SY_EXPECTS(static_cast<int>(send_counts.size()) == comm.size(),
             detail::concat("one count per peer: got ", send_counts.size(), " for ", comm.size(),
                            " ranks"));
  std::vector<std::int64_t> ones(static_cast<std::size_t>(comm.size()), 1);
  std::vector<std::int64_t> recv(static_cast<std::size_t>(comm.size()));
  comm.all_to_all_v(send_counts.data(), ones, recv.data(), ones);
  return recv;
}

/// 64-bit FNV-1a of a byte string (config agreement checks).
inline std::uint64_t fnv1a64(const std::string& bytes) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char ch : bytes) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

namespace detail {
/// all_gather of host words over a group: gather(send, n, recv) with recv holding n · size words.
using host_word_gather =
    std::function<void(const std::uint64_t* send, std::int64_t n, std::uint64_t* recv)>;

/// Host all_gather through `comm`: device communicators stage host data (all_gather_host).
template <Communicator Comm>
host_word_gather host_gather_of(Comm& comm) {
  return [&comm](const std::uint64_t* send, std::int64_t n, std::uint64_t* recv) {
    if constexpr (requires { comm.all_gather_host(send, n, recv); })
      comm.all_gather_host(send, n, recv);
    else
      comm.all_gather(send, n, recv);
  };
}

inline void require_agreement(int rank, int size, const host_word_gather& gather,
                              std::uint64_t fingerprint, const std::string& what) {
  std::vector<std::uint64_t> all(static_cast<std::size_t>(size));
  gather(&fingerprint, 1, all.data());
  std::string differ;
  for (std::size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  if (!differ.empty())
    throw comm_error(concat("ranks disagree on the ", what, ": rank(s) ", differ,
                            " differ from rank 0 (this is rank ", rank, ")"));
}

inline void fail_together(int rank, int size, const host_word_gather& gather,
                          const std::exception_ptr& local, const std::string& where,
                          bool* joined = nullptr) {
  constexpr std::size_t words = 33;  // a flag, then 256 bytes of message
  std::array<std::uint64_t, words> mine{};
  if (local) {
    mine[0] = 1;
    std::string msg;
    try {
      std::rethrow_exception(local);
    } catch (const std::exception& e) {
      msg = e.what();
    } catch (...) {
      msg = "an exception that is not a std::exception";
    }
    std::memcpy(&mine[1], msg.data(), std::min<std::size_t>(msg.size(), 8 * (words - 1) - 1));
  }
  std::vector<std::uint64_t> all(words * static_cast<std::size_t>(size));
  gather(mine.data(), static_cast<std::int64_t>(words), all.data());
  if (joined) *joined = true;
  if (local) std::rethrow_exception(local);
  for (int r = 0; r < size; ++r) {
    const std::uint64_t* w = &all[static_cast<std::size_t>(r) * words];
    if (w[0] == 0) continue;
    const char* text = reinterpret_cast<const char*>(w + 1);
    const char* end = std::find(text, text + 8 * (words - 1), '\0');
    throw comm_error(concat(where, ": rank ", r, " of ", size, " failed: ", std::string(text, end),
                            " (this is rank ", rank, ")"));
  }
}
/// Runs `stage` unless an earlier one failed, and keeps its exception in `failed` instead of
/// throwing it, so that the rank still joins the collectives that follow and its group fails
/// together (fail_together). The layers use it for their local stages before the first
/// exchange, for a dense stage before the TP group's verdict, for the buffers of an exchange
/// before its check, and for this rank's expert computation between two exchanges: there the
/// rank joins the exchanges that follow (its peers wait for them) with rows of the sizes they
/// expect, and the group fails together after the last one (out of memory on one rank is an
/// error on every rank).
template <class Stage>
void keep_failure(std::exception_ptr& failed, Stage&& stage) {
  if (failed) return;
  try {
    stage();
  } catch (...) {
    failed = std::current_exception();
  }
}
}  // namespace detail

/// Checks that every rank of `comm` holds the same `fingerprint` (e.g. the hash of its config)
/// before the first exchange. Collective; on a mismatch every rank throws comm_error naming the
/// ranks that differ from rank 0, so no rank goes on to an exchange the others will not join.
template <Communicator Comm>
void require_agreement(Comm& comm, std::uint64_t fingerprint, const std::string& what) {
  detail::require_agreement(comm.rank(), comm.size(), detail::host_gather_of(comm), fingerprint,
                            what);
}

/// Collective: every rank of `comm` says whether the local stage it just ran failed (`local`
/// holds its exception, or is null) before anyone starts an exchange the failed rank would not
/// join. The failed rank rethrows its own exception; every other rank throws comm_error naming
/// the first failed rank and its message (up to 255 bytes), so a bad input on one rank is an
/// error on every rank instead of a hang. `joined`, when given, is set once this rank has taken
/// part in the collective: an exception with it still false came before (out of memory for the
/// message) or from the collective itself, and the peers did not hear this rank's verdict.
template <Communicator Comm>
void fail_together(Comm& comm, const std::exception_ptr& local, const std::string& where,
                   bool* joined = nullptr) {
  detail::fail_together(comm.rank(), comm.size(), detail::host_gather_of(comm), local, where,
                        joined);
}

}  // namespace switchyard
