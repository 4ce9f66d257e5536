#pragma once
/// \file Two-phase memory of the experts (CUB's pattern): ask for the bytes, pass the buffer.
///
/// The workspace holds, for R rows, the fc1 output h [R][F1] (pre-activation, bias included) and
/// the hidden activations a [R][F] (after activation, gating and dropout: the input of fc2), in
/// the storage type T, each region 256-byte aligned. Forward writes both; backward reads them and
/// reuses them in place (a becomes d a, h becomes d h), so one forward is followed by at most one
/// backward with the same workspace, rows and offsets.

#include <cstddef>

#include "switchyard/core/mdspan.hpp"
#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/experts/expert_types.hpp"

namespace switchyard {

/// Byte offsets of the regions of an expert workspace.
struct expert_workspace_layout {
  std::size_t pre_offset = 0;  ///< h [R][F1]
  std::size_t act_offset = 0;  ///< a [R][F]
  std::size_t bytes = 0;       ///< total
};

namespace detail {
constexpr std::size_t align_up(std::size_t n, std::size_t a) {
  return (n + a - 1) / a * a;
}
inline constexpr std::size_t workspace_alignment = 256;  // cudaMalloc's alignment
}  // namespace detail

/// Layout of the workspace for `rows` rows, with elements of the storage type T.
template <class T, ExpertPolicy P>
constexpr expert_workspace_layout expert_workspace_plan(P, const expert_shape& s, index_t rows) {
  const auto r = static_cast<std::size_t>(rows);
  const auto f = static_cast<std::size_t>(s.ffn_hidden);
  const std::size_t pre =
      detail::align_up(r * f * P::fc1_multiplier * sizeof(T), detail::workspace_alignment);
  const std::size_t act = detail::align_up(r * f * sizeof(T), detail::workspace_alignment);
  return {0, pre, pre + act};
}

/// Bytes of workspace expert_forward/expert_backward need for `rows` rows (storage type T).
template <class T, ExpertPolicy P>
constexpr std::size_t expert_workspace_bytes(P p, const expert_shape& s, index_t rows) {
  return expert_workspace_plan<T>(p, s, rows).bytes;
}

}  // namespace switchyard
