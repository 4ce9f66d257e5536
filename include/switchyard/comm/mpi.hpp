#pragma once
/// \file MpiComm: the host communicator over MPI (link switchyard::mpi). Collectives are
/// non-blocking MPI calls completed by polling with a deadline, so a peer that never arrives is
/// an error after `timeout` instead of a hang.

// Only MPI's C API is used: keep the deprecated C++ bindings (and their warnings) out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "switchyard/comm/communicator.hpp"
#include "switchyard/comm/compression.hpp"
#include "switchyard/core/error.hpp"

namespace switchyard {

namespace detail {
[[noreturn]] inline void throw_mpi(int err, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(err, text, &len);
  throw comm_error(concat(call, " failed at ", file, ":", line, ": ", std::string(text, len)));
}

template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return MPI_UINT64_T;
  else if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
  else if constexpr (std::is_same_v<T, char> || std::is_same_v<T, unsigned char>) return MPI_BYTE;
  else if constexpr (std::is_same_v<T, bf16>)
    return MPI_UINT16_T;
  else static_assert(!sizeof(T), "no MPI datatype for this element type");
}

/// The MPI operation of a bfloat16 sum (comm/compression.hpp), created on first use and kept
/// until the process ends. Non-commutative: MPI then combines the ranks' values in rank order.
inline MPI_Op bf16_sum_op() {
  static const MPI_Op op = [] {
    MPI_Op o = MPI_OP_NULL;
    const int err = MPI_Op_create(
        [](void* in, void* inout, int* len, MPI_Datatype*) {
          add_bf16(static_cast<const bf16*>(in), static_cast<bf16*>(inout), *len);
        },
        /*commute=*/0, &o);
    if (err != MPI_SUCCESS) throw_mpi(err, "MPI_Op_create", __FILE__, __LINE__);
    return o;
  }();
  return op;
}

inline int to_mpi_count(std::int64_t n, const char* what) {
  SY_EXPECTS(n >= 0 && n <= std::numeric_limits<int>::max(),
             concat(what, " of ", n, " elements does not fit MPI's int counts"));
  return static_cast<int>(n);
}
}  // namespace detail

/// Every MPI call goes through this: it throws comm_error with the call and MPI's error string.
#define SY_MPI_TRY(call)                                                                  \
  do {                                                                                    \
    const int sy_mpi_err_ = (call);                                                       \
    if (sy_mpi_err_ != MPI_SUCCESS) ::switchyard::detail::throw_mpi(sy_mpi_err_, #call,   \
                                                                    __FILE__, __LINE__);  \
  } while (0)

/// A process group over an MPI communicator (not owned unless created by split()).
class MpiComm {
 public:
  /// Wraps `comm`; errors are returned (MPI_ERRORS_RETURN) and thrown as comm_error.
  explicit MpiComm(MPI_Comm comm = MPI_COMM_WORLD,
                   std::chrono::milliseconds timeout = std::chrono::seconds(300))
      : comm_(comm), timeout_(timeout) {
    SY_MPI_TRY(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    SY_MPI_TRY(MPI_Comm_rank(comm_, &rank_));
    SY_MPI_TRY(MPI_Comm_size(comm_, &size_));
  }
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;
  MpiComm(MpiComm&& o) noexcept
      : comm_(o.comm_),
        owned_(o.owned_),
        rank_(o.rank_),
        size_(o.size_),
        timeout_(o.timeout_),
        pending_(o.pending_),
        pending_arrays_(std::move(o.pending_arrays_)) {
    o.owned_ = false;
    o.pending_ = MPI_REQUEST_NULL;
  }
  ~MpiComm() {
    if (owned_) MPI_Comm_free(&comm_);
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm native() const { return comm_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

  /// After a timeout error: waits, without a deadline, for the collective that timed out.
  void finish_pending() {
    if (pending_ != MPI_REQUEST_NULL) SY_MPI_TRY(MPI_Wait(&pending_, MPI_STATUS_IGNORE));
    pending_arrays_.clear();
  }

  /// The sub-group of the ranks that pass the same `color`, ordered by `key` (MPI_Comm_split).
  MpiComm split(int color, int key) const {
    MPI_Comm sub;
    SY_MPI_TRY(MPI_Comm_split(comm_, color, key, &sub));
    MpiComm c(sub, timeout_);
    c.owned_ = true;
    return c;
  }

  /// An exchange in flight: the data buffers must stay alive until wait(). It owns the count
  /// and displacement arrays MPI reads until the exchange completes (MPI 3.1 section 5.12: the
  /// arrays of a non-blocking vector collective must not be modified or freed before it
  /// completes; some MPI libraries copy them, others read them while it runs). Destroyed before
  /// wait() (an exception between start and wait), it waits with the communicator's deadline,
  /// so the caller's buffers are not freed under a running exchange (the exception then reaches
  /// the caller up to one deadline later); past the deadline it leaves the request and the
  /// arrays to the communicator (finish_pending()), as a timed-out wait() does.
  class pending {
   public:
    pending(const pending&) = delete;
    pending& operator=(const pending&) = delete;
    pending(pending&& o) noexcept
        : comm_(o.comm_),
          req_(std::exchange(o.req_, MPI_REQUEST_NULL)),
          arrays_(std::move(o.arrays_)) {}
    pending& operator=(pending&&) = delete;
    ~pending() {
      if (req_ == MPI_REQUEST_NULL) return;
      try {
        wait();
      } catch (...) {  // a timeout (kept as the communicator's pending request) or an MPI error
      }
    }
    /// Past the deadline the request passes to the communicator (finish_pending()), so the
    /// destructor does not wait a second time.
    void wait() {
      MPI_Request r = std::exchange(req_, MPI_REQUEST_NULL);
      comm_->wait(r, "all_to_all_v", &arrays_);
    }

   private:
    friend class MpiComm;
    explicit pending(MpiComm* c) : comm_(c) {}
    MpiComm* comm_;
    MPI_Request req_ = MPI_REQUEST_NULL;
    std::vector<int>
        arrays_;  ///< send counts, send displacements, receive counts, receive displacements
  };

  /// Starts all_to_all_v and returns at once (the layer overlaps it with expert compute).
  template <class T>
  pending all_to_all_v_start(const T* send, std::span<const std::int64_t> send_counts, T* recv,
                             std::span<const std::int64_t> recv_counts) {
    require_idle();
    SY_EXPECTS(static_cast<int>(send_counts.size()) == size_ &&
                   static_cast<int>(recv_counts.size()) == size_,
               detail::concat("all_to_all_v needs one count per peer (", size_, ")"));
    pending started(this);
    const auto n = static_cast<std::size_t>(size_);
    started.arrays_.resize(4 * n);
    int* sc = started.arrays_.data();
    int *sd = sc + n, *rc = sd + n, *rd = rc + n;
    std::int64_t so = 0, ro = 0;
    for (int p = 0; p < size_; ++p) {
      sc[p] = detail::to_mpi_count(send_counts[p], "all_to_all_v send block");
      rc[p] = detail::to_mpi_count(recv_counts[p], "all_to_all_v receive block");
      sd[p] = detail::to_mpi_count(so, "all_to_all_v send displacement");
      rd[p] = detail::to_mpi_count(ro, "all_to_all_v receive displacement");
      so += send_counts[p];
      ro += recv_counts[p];
    }
    const auto type = detail::mpi_type<T>();
    MPI_Request req;  // undefined when the call fails: kept only once it succeeded
    SY_MPI_TRY(MPI_Ialltoallv(send, sc, sd, type, recv, rc, rd, type, comm_, &req));
    started.req_ = req;
    return started;
  }

  template <class T>
  void all_to_all_v(const T* send, std::span<const std::int64_t> send_counts, T* recv,
                    std::span<const std::int64_t> recv_counts) {
    all_to_all_v_start(send, send_counts, recv, recv_counts).wait();
  }

  /// Sums (or maxima) in place; bf16 elements sum in bfloat16 (comm/compression.hpp).
  template <class T>
  void all_reduce(T* data, std::int64_t n, ReduceOp op) {
    require_idle();
    MPI_Op mpi_op = op == ReduceOp::sum ? MPI_SUM : MPI_MAX;
    if constexpr (std::is_same_v<T, bf16>) {
      SY_EXPECTS(op == ReduceOp::sum, "MpiComm::all_reduce: bfloat16 values only sum");
      mpi_op = detail::bf16_sum_op();
    }
    MPI_Request req;
    SY_MPI_TRY(MPI_Iallreduce(MPI_IN_PLACE, data, detail::to_mpi_count(n, "all_reduce"),
                              detail::mpi_type<T>(), mpi_op, comm_, &req));
    wait(req, "all_reduce");
  }

  template <class T>
  void all_gather(const T* send, std::int64_t n, T* recv) {
    require_idle();
    MPI_Request req;
    const int cnt = detail::to_mpi_count(n, "all_gather");
    SY_MPI_TRY(MPI_Iallgather(send, cnt, detail::mpi_type<T>(), recv, cnt, detail::mpi_type<T>(),
                              comm_, &req));
    wait(req, "all_gather");
  }

  void barrier() {
    require_idle();
    MPI_Request req;
    SY_MPI_TRY(MPI_Ibarrier(comm_, &req));
    wait(req, "barrier");
  }

 private:
  // Polls a request until it completes or the timeout passes. A timeout is an error naming the
  // collective and this rank; the request stays pending (MPI forbids freeing a collective's
  // request): abort the job, or call finish_pending() to wait for the late peers.
  // `arrays` (a vector collective's counts and displacements) pass to the communicator with a
  // timed-out request: MPI may read them until finish_pending() completes it.
  void wait(MPI_Request& req, const char* what, std::vector<int>* arrays = nullptr) {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    int done = 0;
    while (true) {
      SY_MPI_TRY(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return;
      if (std::chrono::steady_clock::now() > deadline) {
        pending_ = req;
        if (arrays) pending_arrays_ = std::move(*arrays);
        throw comm_error(detail::concat(what, " on rank ", rank_, " of ", size_,
                                        " timed out after ", timeout_.count(),
                                        " ms: a peer did not join the collective"));
      }
    }
  }
  void require_idle() const {
    SY_EXPECTS(pending_ == MPI_REQUEST_NULL,
               "a timed-out collective is still pending on this communicator: abort the job or "
               "call finish_pending() first");
  }

  MPI_Comm comm_;
  bool owned_ = false;
  int rank_ = 0, size_ = 1;
  std::chrono::milliseconds timeout_;
  MPI_Request pending_ = MPI_REQUEST_NULL;
  std::vector<int> pending_arrays_;  ///< what the pending request's MPI call may still read
};

static_assert(Communicator<MpiComm>);
static_assert(BfloatCommunicator<MpiComm>);

}  // namespace switchyard
