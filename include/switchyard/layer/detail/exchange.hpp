#pragma once
/// \file The arithmetic of the expert-parallel token exchange, shared by the host layer
/// (layer/moe_layer.hpp) and the device layer (layer/device_layer.cuh): rows travel in blocks
/// of block_rows[p·E_local + le] rows (peer p, local expert le). A sender's rows are in plan
/// order, which is source-major on the receiver: [p][le]; the experts want them expert-major:
/// [le][p].

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "switchyard/core/mdspan.hpp"

namespace switchyard::detail {

/// Row offsets of every block b = p·El + le in both orders.
struct block_offsets {
  std::vector<std::int64_t> source_major;  ///< [p][le] order
  std::vector<std::int64_t> expert_major;  ///< [le][p] order
};

inline block_offsets exchange_block_offsets(std::span<const std::int64_t> block_rows,
                                            std::int64_t ep, std::int64_t El) {
  block_offsets o;
  o.source_major.resize(static_cast<std::size_t>(ep * El));
  o.expert_major.resize(o.source_major.size());
  std::int64_t r = 0;
  for (std::int64_t p = 0; p < ep; ++p)
    for (std::int64_t le = 0; le < El; ++le) {
      o.source_major[static_cast<std::size_t>(p * El + le)] = r;
      r += block_rows[static_cast<std::size_t>(p * El + le)];
    }
  r = 0;
  for (std::int64_t le = 0; le < El; ++le)
    for (std::int64_t p = 0; p < ep; ++p) {
      o.expert_major[static_cast<std::size_t>(p * El + le)] = r;
      r += block_rows[static_cast<std::size_t>(p * El + le)];
    }
  return o;
}

/// Elements per peer (rows · H), peer `skip` counted as 0 (the host layer keeps its own block).
inline std::vector<std::int64_t> exchange_peer_elements(std::span<const std::int64_t> block_rows,
                                                        std::int64_t ep, std::int64_t El,
                                                        std::int64_t H, std::int64_t skip = -1) {
  std::vector<std::int64_t> n(static_cast<std::size_t>(ep), 0);
  for (std::int64_t p = 0; p < ep; ++p)
    if (p != skip)
      for (std::int64_t le = 0; le < El; ++le)
        n[static_cast<std::size_t>(p)] += block_rows[static_cast<std::size_t>(p * El + le)] * H;
  return n;
}

/// Offsets [El + 1] of each local expert's rows in expert-major order, peer `skip` left out.
inline std::vector<index_t> exchange_expert_offsets(std::span<const std::int64_t> block_rows,
                                                    std::int64_t ep, std::int64_t El,
                                                    std::int64_t skip = -1) {
  std::vector<index_t> off(static_cast<std::size_t>(El) + 1, 0);
  for (std::int64_t le = 0; le < El; ++le) {
    index_t n = 0;
    for (std::int64_t p = 0; p < ep; ++p)
      if (p != skip) n += block_rows[static_cast<std::size_t>(p * El + le)];
    off[static_cast<std::size_t>(le) + 1] = off[static_cast<std::size_t>(le)] + n;
  }
  return off;
}

/// Rows in blocks of `block_rows[p][le]` rows [..][H], source-major [p][le] <-> expert-major
/// [le][p], from `in` into `out` (as large as `in`, another buffer).
template <class T>
void reorder_exchange_blocks(std::span<const T> in, std::span<T> out,
                             std::span<const std::int64_t> block_rows, std::int64_t ep,
                             std::int64_t El, index_t H, bool to_expert_major) {
  const block_offsets o = exchange_block_offsets(block_rows, ep, El);
  for (std::size_t b = 0; b < o.source_major.size(); ++b) {
    const std::int64_t from = to_expert_major ? o.source_major[b] : o.expert_major[b];
    const std::int64_t to = to_expert_major ? o.expert_major[b] : o.source_major[b];
    std::copy_n(in.begin() + from * H, block_rows[b] * H, out.begin() + to * H);
  }
}

}  // namespace switchyard::detail
