#pragma once
/// \file Expert tensor parallelism on the host layer (docs/layer.md, "Tensor-parallel experts"):
/// every expert's F is split over the TP group (rank r holds columns [r·F/tp, (r+1)·F/tp) of
/// fc1's halves and of fc2), the TP ranks hold different tokens (as sequence parallelism does),
/// so before the experts each TP rank gathers the rows routed to its local experts from the
/// whole TP group, and after them each row's partial outputs are summed back on the rank that
/// owns the row (a reduce-scatter, summed in TP-rank order on every rank: the same bits for the
/// same inputs, whatever rank does the sum).

#include <algorithm>
#include <cstdint>
#include <exception>
#include <span>
#include <vector>

#include "switchyard/comm/communicator.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/layer/detail/exchange.hpp"

namespace switchyard::detail {

/// The rows of one segment over the TP group.
struct tp_rows {
  std::vector<std::int64_t> counts;  ///< [p][le]: rows of TP rank p for local expert le
  std::vector<index_t> offsets;      ///< [El + 1]: the gathered rows, expert-major [le][p]
};

/// Bytes of expert rows a TP collective moved for this rank (the gather's padding included).
struct tp_traffic {
  std::int64_t sent = 0, received = 0;
};

/// Rows per local expert of every TP rank, from this rank's expert offsets [El + 1]. Collective
/// over `tp`.
template <class Comm>
tp_rows tp_gather_counts(Comm& tp, std::span<const index_t> own_offsets) {
  const auto El = static_cast<std::int64_t>(own_offsets.size()) - 1;
  std::vector<std::int64_t> mine(static_cast<std::size_t>(El));
  for (std::size_t le = 0; le < mine.size(); ++le) mine[le] = own_offsets[le + 1] - own_offsets[le];
  tp_rows g;
  g.counts.resize(static_cast<std::size_t>(tp.size() * El));
  tp.all_gather(mine.data(), El, g.counts.data());
  g.offsets = exchange_expert_offsets(g.counts, tp.size(), El);
  return g;
}

/// Collective over `tp`: whether every rank of the TP group holds no failure. Where one does,
/// every rank of the group keeps one (its own, or the comm_error of fail_together naming the
/// first failed rank) and the caller skips the collective that follows, so no TP rank waits in
/// a collective a failed peer does not join (out of memory for a TP buffer on one rank is an
/// error on every rank, as the layer's other buffers are). An exception before this rank took
/// part (the communicator's own error, or out of memory for the verdict's message) is thrown:
/// its peers did not hear from it, and going on would pair its next collective with this one.
template <class Comm>
bool tp_agree(Comm& tp, std::exception_ptr& failed, const char* where) {
  bool joined = false;
  try {
    fail_together(tp, failed, where, &joined);
    return true;
  } catch (...) {
    if (!joined) throw;
    if (!failed) failed = std::current_exception();
    return false;
  }
}

/// This rank's rows (expert-major) of every TP rank, expert-major [le][p]. Collective over `tp`:
/// its buffers are allocated first (keep_failure: not when `failed` already holds a failure; an
/// allocation's failure goes into `failed`), then the group agrees (tp_agree) and, where any rank
/// failed, every rank returns an empty vector with `failed` set instead of gathering.
template <class T, class Comm>
std::vector<T> tp_gather_rows(Comm& tp, const tp_rows& g, const std::vector<T>& rows, index_t H,
                              std::exception_ptr& failed, const char* where,
                              tp_traffic* traffic = nullptr) {
  const std::int64_t n = tp.size(), El = static_cast<std::int64_t>(g.offsets.size()) - 1;
  // all_gather moves equal sizes: each rank's rows padded to the largest rank's.
  std::int64_t most = 0;
  for (std::int64_t p = 0; p < n; ++p) {
    std::int64_t r = 0;
    for (std::int64_t le = 0; le < El; ++le) r += g.counts[static_cast<std::size_t>(p * El + le)];
    most = std::max(most, r);
  }
  std::vector<T> padded, all, out;
  keep_failure(failed, [&] {
    padded.resize(static_cast<std::size_t>(most * H));
    all.resize(static_cast<std::size_t>(n * most * H));
    out.resize(static_cast<std::size_t>(g.offsets.back() * H));
  });
  if (!tp_agree(tp, failed, where)) return {};
  std::copy(rows.begin(), rows.end(), padded.begin());
  tp.all_gather(padded.data(), most * H, all.data());
  if (traffic) {
    const auto bytes = static_cast<std::int64_t>(sizeof(T)) * (n - 1) * most * H;
    traffic->sent += bytes;
    traffic->received += bytes;
  }
  // Rank p's blocks start at p·most; in the packed source-major order they start at the rank's
  // first block offset, so shift each rank's blocks by the padding before it.
  const block_offsets o = exchange_block_offsets(g.counts, n, El);
  for (std::int64_t p = 0; p < n; ++p)
    for (std::int64_t le = 0; le < El; ++le) {
      const auto b = static_cast<std::size_t>(p * El + le);
      const std::int64_t from =
          p * most + o.source_major[b] - o.source_major[static_cast<std::size_t>(p * El)];
      std::copy_n(all.begin() + from * H, g.counts[b] * H, out.begin() + o.expert_major[b] * H);
    }
  return out;
}

/// The sum over the TP group of every rank's `partial` [gathered rows][H] (expert-major as
/// tp_gather_rows gave them), for this rank's own rows, into `own` [own rows][H] (expert-major
/// as it sent them; the buffer it sent to the gather serves): each rank sends every peer its
/// partials of that peer's rows and adds what it receives in TP-rank order. Collective over
/// `tp`, with its buffers allocated and agreed on first as in tp_gather_rows; where any rank
/// failed, every rank leaves `own` as it is and `failed` set.
template <class T, class Comm>
void tp_reduce_scatter(Comm& tp, const tp_rows& g, const std::vector<T>& partial,
                       std::vector<T>& own, index_t H, std::exception_ptr& failed,
                       const char* where, tp_traffic* traffic = nullptr) {
  const std::int64_t n = tp.size(), El = static_cast<std::int64_t>(g.offsets.size()) - 1;
  const std::int64_t me = tp.rank();
  const std::vector<std::int64_t> send = exchange_peer_elements(g.counts, n, El, H);
  const std::int64_t mine = send[static_cast<std::size_t>(me)];
  std::vector<T> by_rank, parts;
  keep_failure(failed, [&] {
    SY_EXPECTS(static_cast<std::int64_t>(own.size()) == mine,
               "tp_reduce_scatter: the own rows' buffer is not the size this rank sent");
    by_rank.resize(static_cast<std::size_t>(g.offsets.back() * H));
    parts.resize(static_cast<std::size_t>(n * mine));
  });
  if (!tp_agree(tp, failed, where)) return;
  // Back to source-major [p][le]: peer p's rows are contiguous and in its own order.
  reorder_exchange_blocks(std::span<const T>(partial), std::span<T>(by_rank), g.counts, n, El, H,
                          /*to_expert_major=*/false);
  const std::vector<std::int64_t> recv(static_cast<std::size_t>(n), mine);
  tp.all_to_all_v(by_rank.data(), send, parts.data(), recv);
  if (traffic) {
    for (std::int64_t p = 0; p < n; ++p)
      if (p != me)
        traffic->sent += static_cast<std::int64_t>(sizeof(T)) * send[static_cast<std::size_t>(p)];
    traffic->received += static_cast<std::int64_t>(sizeof(T)) * (n - 1) * mine;
  }
  std::copy_n(parts.begin(), mine, own.begin());
  for (std::int64_t p = 1; p < n; ++p) {
    const T* src = parts.data() + p * mine;
    for (std::int64_t i = 0; i < mine; ++i) own[static_cast<std::size_t>(i)] += src[i];
  }
}

}  // namespace switchyard::detail
