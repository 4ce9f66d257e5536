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
#include <span>
#include <vector>

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

/// This rank's rows (expert-major) of every TP rank, expert-major [le][p]. Collective over `tp`.
template <class T, class Comm>
std::vector<T> tp_gather_rows(Comm& tp, const tp_rows& g, const std::vector<T>& rows, index_t H,
                              tp_traffic* traffic = nullptr) {
  const std::int64_t n = tp.size(), El = static_cast<std::int64_t>(g.offsets.size()) - 1;
  // all_gather moves equal sizes: each rank's rows padded to the largest rank's.
  std::int64_t most = 0;
  for (std::int64_t p = 0; p < n; ++p) {
    std::int64_t r = 0;
    for (std::int64_t le = 0; le < El; ++le) r += g.counts[static_cast<std::size_t>(p * El + le)];
    most = std::max(most, r);
  }
  std::vector<T> padded(static_cast<std::size_t>(most * H), T(0));
  std::copy(rows.begin(), rows.end(), padded.begin());
  std::vector<T> all(static_cast<std::size_t>(n * most * H));
  tp.all_gather(padded.data(), most * H, all.data());
  if (traffic) {
    const auto bytes = static_cast<std::int64_t>(sizeof(T)) * (n - 1) * most * H;
    traffic->sent += bytes;
    traffic->received += bytes;
  }
  // Rank p's blocks start at p·most; in the packed source-major order they start at the rank's
  // first block offset, so shift each rank's blocks by the padding before it.
  const block_offsets o = exchange_block_offsets(g.counts, n, El);
  std::vector<T> out(static_cast<std::size_t>(g.offsets.back() * H));
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
/// tp_gather_rows gave them), for this rank's own rows (expert-major as it sent them): each rank
/// sends every peer its partials of that peer's rows and adds what it receives in TP-rank order.
/// Collective over `tp`.
template <class T, class Comm>
std::vector<T> tp_reduce_scatter(Comm& tp, const tp_rows& g, const std::vector<T>& partial,
                                 index_t H, tp_traffic* traffic = nullptr) {
  const std::int64_t n = tp.size(), El = static_cast<std::int64_t>(g.offsets.size()) - 1;
  const std::int64_t me = tp.rank();
  // Back to source-major [p][le]: peer p's rows are contiguous and in its own order.
  const std::vector<T> by_rank = reorder_exchange_blocks(partial, g.counts, n, El, H, false);
  const std::vector<std::int64_t> send = exchange_peer_elements(g.counts, n, El, H);
  const std::int64_t own = send[static_cast<std::size_t>(me)];
  const std::vector<std::int64_t> recv(static_cast<std::size_t>(n), own);
  std::vector<T> parts(static_cast<std::size_t>(n * own));
  tp.all_to_all_v(by_rank.data(), send, parts.data(), recv);
  if (traffic) {
    for (std::int64_t p = 0; p < n; ++p)
      if (p != me)
        traffic->sent += static_cast<std::int64_t>(sizeof(T)) * send[static_cast<std::size_t>(p)];
    traffic->received += static_cast<std::int64_t>(sizeof(T)) * (n - 1) * own;
  }
  std::vector<T> out(parts.begin(), parts.begin() + own);
  for (std::int64_t p = 1; p < n; ++p) {
    const T* src = parts.data() + p * own;
    for (std::int64_t i = 0; i < own; ++i) out[static_cast<std::size_t>(i)] += src[i];
  }
  return out;
}

}  // namespace switchyard::detail
