#pragma once
/// \file The dispatch plan: from the routes (expert [T,k], prob [T,k]) to expert-grouped rows.
/// Host reference implementation; the CUDA one is plan.cuh. Deterministic: inside an expert,
/// rows keep queue order (token order, or slot-major with queue_by_slot); the probs policy
/// breaks ties by the lower token index, the position policy keeps an expert's first routes in
/// queue order or, with position_by_topk, the tokens torch.topk returns on the CPU.

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <optional>
#include <utility>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/dispatch/detail/torch_topk.hpp"
#include "switchyard/dispatch/dispatch_types.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/exec/parallel.hpp"

namespace switchyard {

/// Where each kept route goes. Route id = t·k + slot. Rows are grouped by expert: expert e owns
/// rows [expert_offsets[e], expert_offsets[e+1]).
struct DispatchPlan {
  std::int64_t num_tokens = 0, top_k = 0, num_experts = 0;
  std::optional<std::int64_t> capacity;  ///< none when dropless
  bool padded = false;                   ///< pad_to_capacity: every expert has capacity rows
  bool renormalize_kept = false;         ///< DispatchOptions::renormalize_kept
  std::vector<std::int64_t> routed_per_expert;  ///< [E] routes before dropping
  std::vector<std::int64_t> kept_per_expert;    ///< [E] routes after dropping
  std::vector<std::int64_t> expert_offsets;     ///< [E+1] row offsets (exclusive scan)
  std::vector<std::int64_t> row_route;  ///< [rows] route id of each row, -1 for padding rows
  std::vector<std::int64_t> route_row;  ///< [T·k] row of each route, -1 when dropped
  std::int64_t dropped = 0;             ///< routes dropped by the capacity

  std::int64_t rows() const { return expert_offsets.empty() ? 0 : expert_offsets.back(); }
  std::int64_t rows_of(std::int64_t e) const {
    return expert_offsets[static_cast<std::size_t>(e) + 1] -
           expert_offsets[static_cast<std::size_t>(e)];
  }
  std::int64_t kept_routes() const { return num_tokens * top_k - dropped; }
};

namespace detail {
inline void check_routes_shape(std::int64_t T, std::int64_t k, std::int64_t pk_rows,
                               std::int64_t pk_cols) {
  SY_EXPECTS(pk_rows == T && pk_cols == k,
             concat("expert indices are [", T, ", ", k, "] but probabilities are [", pk_rows,
                    ", ", pk_cols, "]"));
}
}  // namespace detail

/// Tokens per chunk of the plan's histograms: fixed, so the plan never depends on the number of
/// threads (it is the same plan as a serial counting sort, for any chunking).
inline constexpr std::int64_t plan_chunk_tokens = 256;

/// Builds the plan on the host. `expert` [T,k] holds expert ids in [0, E); `prob` [T,k] the
/// routing weights (used by the probs drop policy only).
template <class Real>
DispatchPlan build_plan(exec::Host, const DispatchOptions& opt,
                        matrix_view<const std::int32_t> expert, matrix_view<const Real> prob) {
  const std::int64_t T = expert.extent(0), k = expert.extent(1), E = opt.num_experts;
  detail::check_routes_shape(T, k, prob.extent(0), prob.extent(1));
  SY_EXPECTS(E >= 1, detail::concat("num_experts must be >= 1, got ", E));
  SY_EXPECTS(!opt.capacity || *opt.capacity >= 0,
             detail::concat("capacity must be >= 0, got ", *opt.capacity));
  SY_EXPECTS(!opt.position_by_topk || !opt.queue_by_slot,
             "position_by_topk drops by token order: it cannot be combined with queue_by_slot");
  SY_EXPECTS(!opt.position_by_topk || T < (std::int64_t{1} << 31),
             detail::concat("position_by_topk supports up to 2^31 - 1 tokens, got ", T));

  DispatchPlan plan;
  plan.num_tokens = T;
  plan.top_k = k;
  plan.num_experts = E;
  plan.capacity = opt.capacity;
  plan.padded = opt.pad_to_capacity && opt.capacity.has_value();
  plan.renormalize_kept = opt.renormalize_kept;
  plan.routed_per_expert.assign(static_cast<std::size_t>(E), 0);

  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int32_t e = expert(t, j);
      SY_EXPECTS(e >= 0 && e < E, detail::concat("token ", t, " slot ", j, " routes to expert ", e,
                                                 ", outside 0..", E - 1));
    }

  // Routes of each expert in queue order (token order, or slot-major with queue_by_slot): a
  // counting sort over fixed chunks of queue positions (per-chunk histograms on threads, an
  // exclusive scan over (expert, chunk), then each chunk scatters its routes from its own
  // positions). Stable, no comparison sort, no atomics.
  const exec::chunking chunks{T * k, plan_chunk_tokens * k};  // chunks hold whole tokens
  // Calls f(route, expert) for the queue positions of chunk c, in queue order.
  const auto for_chunk = [&](std::int64_t c, auto&& f) {
    const std::int64_t q0 = chunks.begin(c), q1 = chunks.end(c);
    if (!opt.queue_by_slot) {
      for (std::int64_t t = q0 / k; t < q1 / k; ++t)
        for (std::int64_t j = 0; j < k; ++j) f(t * k + j, expert(t, j));
    } else {
      for (std::int64_t q = q0; q < q1; ++q) {
        const std::int64_t j = q / T, t = q - j * T;
        f(t * k + j, expert(t, j));
      }
    }
  };
  const std::int64_t nc = chunks.count();
  const auto at = [E](std::int64_t c, std::int64_t e) { return static_cast<std::size_t>(c * E + e); };
  std::vector<std::int64_t> pos(static_cast<std::size_t>(nc * E), 0);
  exec::parallel_for(nc, plan_chunk_tokens * k, [&](std::int64_t c) {
    for_chunk(c, [&](std::int64_t, std::int32_t e) { ++pos[at(c, e)]; });
  });
  std::vector<std::int64_t> start(static_cast<std::size_t>(E) + 1, 0);
  for (std::int64_t e = 0; e < E; ++e) {
    std::int64_t next = start[static_cast<std::size_t>(e)];
    for (std::int64_t c = 0; c < nc; ++c) {
      const std::int64_t n = pos[at(c, e)];
      pos[at(c, e)] = next;
      next += n;
    }
    start[static_cast<std::size_t>(e) + 1] = next;
    plan.routed_per_expert[static_cast<std::size_t>(e)] = next - start[static_cast<std::size_t>(e)];
  }
  std::vector<std::int64_t> by_expert(static_cast<std::size_t>(T * k));
  exec::parallel_for(nc, plan_chunk_tokens * k, [&](std::int64_t c) {
    for_chunk(c, [&](std::int64_t route, std::int32_t e) {
      by_expert[static_cast<std::size_t>(pos[at(c, e)]++)] = route;
    });
  });

  // Which routes survive the capacity.
  std::vector<char> keep(static_cast<std::size_t>(T * k), 1);
  const std::int64_t per_expert_cost = T * k / E + 1;
  if (opt.capacity) {
    // Experts on threads: each writes only the keep flags of its own routes.
    const std::int64_t C = *opt.capacity;
    exec::parallel_for(E, 4 * per_expert_cost, [&](std::int64_t e) {
      auto first = by_expert.begin() + start[static_cast<std::size_t>(e)];
      auto last = by_expert.begin() + start[static_cast<std::size_t>(e) + 1];
      if (last - first <= C) return;
      if (opt.drop_policy == DropPolicy::probs) {
        // Largest weight first; the stable sort keeps token order among equal weights, so the
        // lower token index wins a tie.
        std::vector<std::pair<Real, std::int64_t>> order;  // (weight, route id t·k + j)
        order.reserve(static_cast<std::size_t>(last - first));
        for (auto it = first; it != last; ++it) order.emplace_back(prob(*it / k, *it % k), *it);
        std::stable_sort(order.begin(), order.end(),
                         [](const auto& a, const auto& b) { return a.first > b.first; });
        for (auto it = order.begin() + C; it != order.end(); ++it)
          keep[static_cast<std::size_t>(it->second)] = 0;
      } else if (opt.position_by_topk) {
        // The tokens torch.topk(k = C) returns over the expert's 0/1 column on the CPU.
        std::vector<std::uint32_t> keys(static_cast<std::size_t>(T));
        for (std::int64_t t = 0; t < T; ++t)
          keys[static_cast<std::size_t>(t)] = detail::torch_topk::key(t, false);
        for (auto it = first; it != last; ++it)
          keys[static_cast<std::size_t>(*it / k)] = detail::torch_topk::key(*it / k, true);
        // Over-full by routes yet C >= T only with a token routed twice to e: every token is
        // chosen (Megatron's capacity mask is all ones when C > T).
        const std::int64_t Cs = std::min(C, T);
        if (Cs > 0) detail::torch_topk::select(keys.data(), T, Cs);
        std::vector<char> chosen(static_cast<std::size_t>(T), 0);
        for (std::int64_t i = 0; i < Cs; ++i)
          if (detail::torch_topk::routed(keys[static_cast<std::size_t>(i)]))
            chosen[static_cast<std::size_t>(
                detail::torch_topk::token(keys[static_cast<std::size_t>(i)]))] = 1;
        for (auto it = first; it != last; ++it) {  // a token's first route to e only
          char& c = chosen[static_cast<std::size_t>(*it / k)];
          if (c == 1)
            c = 2;
          else
            keep[static_cast<std::size_t>(*it)] = 0;
        }
      } else {
        for (auto it = first + C; it != last; ++it) keep[static_cast<std::size_t>(*it)] = 0;
      }
    });
  }

  plan.kept_per_expert.assign(static_cast<std::size_t>(E), 0);
  for (std::int64_t e = 0; e < E; ++e)
    for (std::int64_t i = start[static_cast<std::size_t>(e)];
         i < start[static_cast<std::size_t>(e) + 1]; ++i)
      plan.kept_per_expert[static_cast<std::size_t>(e)] +=
          keep[static_cast<std::size_t>(by_expert[static_cast<std::size_t>(i)])];
  plan.dropped = T * k - std::accumulate(plan.kept_per_expert.begin(),
                                         plan.kept_per_expert.end(), std::int64_t{0});

  plan.expert_offsets.assign(static_cast<std::size_t>(E) + 1, 0);
  for (std::int64_t e = 0; e < E; ++e)
    plan.expert_offsets[static_cast<std::size_t>(e) + 1] =
        plan.expert_offsets[static_cast<std::size_t>(e)] +
        (plan.padded ? *opt.capacity : plan.kept_per_expert[static_cast<std::size_t>(e)]);

  plan.row_route.assign(static_cast<std::size_t>(plan.rows()), -1);
  plan.route_row.assign(static_cast<std::size_t>(T * k), -1);
  exec::parallel_for(E, per_expert_cost, [&](std::int64_t e) {
    std::int64_t row = plan.expert_offsets[static_cast<std::size_t>(e)];
    for (std::int64_t i = start[static_cast<std::size_t>(e)];
         i < start[static_cast<std::size_t>(e) + 1]; ++i) {
      const std::int64_t route = by_expert[static_cast<std::size_t>(i)];
      if (!keep[static_cast<std::size_t>(route)]) continue;
      plan.row_route[static_cast<std::size_t>(row)] = route;
      plan.route_row[static_cast<std::size_t>(route)] = row;
      ++row;
    }
  });
  return plan;
}

}  // namespace switchyard
