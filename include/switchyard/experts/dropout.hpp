#pragma once
/// \file Expert dropout mask (docs/experts.md): the same SY_HD draw on the host and the device.

#include <cstdint>

#include "switchyard/core/macros.hpp"
#include "switchyard/core/philox.hpp"

namespace switchyard {

namespace detail {
/// Separates the dropout stream from other users of the run seed (router input jitter keys
/// Philox by the plain seed with the same (step, row, column) counters).
inline constexpr std::uint64_t expert_dropout_salt = 0x9E3779B97F4A7C15ull;
}  // namespace detail

/// Whether element (row, col) of the expert hidden activations survives dropout with drop
/// probability p: u > p with u = Philox(seed ^ salt; step, row, col) uniform in (0, 1], so p = 0
/// keeps everything and p = 1 drops everything. `row` is the row in the expert-major input of the
/// grouped GEMM (the dispatch order), `col` the column in [0, F).
SY_HD inline bool dropout_keep(std::uint64_t seed, std::uint32_t step, std::uint64_t row,
                               std::uint64_t col, float p) {
  return philox_uniform(seed ^ detail::expert_dropout_salt, step, static_cast<std::uint32_t>(row),
                        static_cast<std::uint32_t>(col)) > p;
}

/// Scale of the kept elements, 1/(1 − p) (inverted dropout: the expectation is unchanged, eval
/// needs no rescaling); 0 when p = 1 (everything dropped).
template <class T>
SY_HD inline T dropout_scale(double p) {
  return p >= 1.0 ? T(0) : T(1.0 / (1.0 - p));
}

}  // namespace switchyard
