#pragma once
/// \file The parallel layout DP x EP x TP x PP: a rank's coordinates, the members of its process
/// groups, and which global experts each EP rank holds.
///
/// Rank order, innermost first: tp, ep, dp, pp, i.e.
///   rank = tp_rank + tp·(ep_rank + ep·(dp_rank + dp·pp_rank)).
/// Tensor-parallel peers are neighbours, an EP group is a block of ep·tp consecutive ranks (so it
/// stays inside a node whenever ep·tp divides the GPUs per node: seed 003's EP 8 on 8-GPU nodes),
/// and seed 001's world 8 = DP 4 x EP 2 gives EP groups {0,1},{2,3},{4,5},{6,7} and DP groups
/// {0,2,4,6},{1,3,5,7}.

#include <cstdint>
#include <vector>

#include "switchyard/config/config_types.hpp"
#include "switchyard/config/rules.hpp"
#include "switchyard/core/error.hpp"

namespace switchyard {

/// Coordinates of one rank in the layout.
struct RankCoords {
  std::int64_t tp = 0, ep = 0, dp = 0, pp = 0;
  friend constexpr bool operator==(const RankCoords&, const RankCoords&) = default;
};

/// The kinds of process group a rank belongs to.
enum class GroupKind {
  expert_parallel,       ///< ranks that split one layer's experts (all_to_all runs here)
  data_parallel,         ///< replicas of the same expert shard (seed 001's "DP groups")
  expert_data_parallel,  ///< ranks holding the same experts: expert gradients are reduced here
  dense_data_parallel,   ///< every rank sharing the router and dense weights (dp·ep ranks):
                         ///< router gradients are reduced here
  tensor_parallel,
  pipeline_parallel,
};

/// DP x EP x TP x PP layout of `world` ranks.
class Layout {
 public:
  Layout(std::int64_t dp, std::int64_t ep, std::int64_t tp, std::int64_t pp)
      : dp_(dp), ep_(ep), tp_(tp), pp_(pp) {
    SY_EXPECTS(dp >= 1 && ep >= 1 && tp >= 1 && pp >= 1,
               detail::concat("every parallel size must be >= 1, got dp ", dp, ", ep ", ep,
                              ", tp ", tp, ", pp ", pp));
    // In double: the product of four int64 sizes may not fit one.
    const double world = static_cast<double>(dp) * static_cast<double>(ep) *
                         static_cast<double>(tp) * static_cast<double>(pp);
    SY_EXPECTS(world <= static_cast<double>(max_world_size),
               detail::concat("dp ", dp, " x ep ", ep, " x tp ", tp, " x pp ", pp, " = ", world,
                              " ranks, more than the ", max_world_size, " a layout holds"));
  }
  /// The layout a validated config describes.
  explicit Layout(const Config& c)
      : Layout(c.dp(), c.expert_parallel_size, c.tensor_parallel_size, c.pipeline_parallel_size) {}

  std::int64_t world() const { return dp_ * ep_ * tp_ * pp_; }
  std::int64_t dp() const { return dp_; }
  std::int64_t ep() const { return ep_; }
  std::int64_t tp() const { return tp_; }
  std::int64_t pp() const { return pp_; }

  RankCoords coords(std::int64_t rank) const {
    check_rank(rank);
    RankCoords c;
    c.tp = rank % tp_;
    rank /= tp_;
    c.ep = rank % ep_;
    rank /= ep_;
    c.dp = rank % dp_;
    c.pp = rank / dp_;
    return c;
  }
  std::int64_t rank_of(const RankCoords& c) const {
    return c.tp + tp_ * (c.ep + ep_ * (c.dp + dp_ * c.pp));
  }

  /// Members of `rank`'s group of the given kind, in increasing rank order; the position of a
  /// rank in this list is its rank inside the group. The members share `rank`'s coordinates
  /// except the ones the kind varies; they are enumerated directly (pp outermost, tp innermost,
  /// which is increasing rank order), so the cost is the group's size.
  std::vector<std::int64_t> group(GroupKind kind, std::int64_t rank) const {
    const RankCoords me = coords(rank);
    const Varied free = varied(kind);
    const auto lo = [](bool varies, std::int64_t mine) { return varies ? 0 : mine; };
    const auto hi = [](bool varies, std::int64_t mine, std::int64_t n) {
      return varies ? n : mine + 1;
    };
    std::vector<std::int64_t> members;
    RankCoords c;
    for (c.pp = lo(free.pp, me.pp); c.pp < hi(free.pp, me.pp, pp_); ++c.pp)
      for (c.dp = lo(free.dp, me.dp); c.dp < hi(free.dp, me.dp, dp_); ++c.dp)
        for (c.ep = lo(free.ep, me.ep); c.ep < hi(free.ep, me.ep, ep_); ++c.ep)
          for (c.tp = lo(free.tp, me.tp); c.tp < hi(free.tp, me.tp, tp_); ++c.tp)
            members.push_back(rank_of(c));
    return members;
  }

  /// Every group of one kind, each listed once, ordered by their lowest rank (cost: the world).
  std::vector<std::vector<std::int64_t>> groups(GroupKind kind) const {
    std::vector<std::vector<std::int64_t>> all;
    std::vector<bool> seen(static_cast<std::size_t>(world()), false);
    for (std::int64_t r = 0; r < world(); ++r) {
      if (seen[static_cast<std::size_t>(r)]) continue;
      all.push_back(group(kind, r));
      for (std::int64_t m : all.back()) seen[static_cast<std::size_t>(m)] = true;
    }
    return all;
  }

 private:
  void check_rank(std::int64_t rank) const {
    SY_EXPECTS(rank >= 0 && rank < world(),
               detail::concat("rank ", rank, " is outside the world of ", world(), " ranks"));
  }
  /// The coordinates that vary inside a group of one kind; its members share the others.
  struct Varied {
    bool tp = false, ep = false, dp = false, pp = false;
  };
  static Varied varied(GroupKind kind) {
    switch (kind) {
      case GroupKind::expert_parallel: return {.ep = true};
      case GroupKind::data_parallel:
      case GroupKind::expert_data_parallel: return {.dp = true};
      case GroupKind::dense_data_parallel: return {.ep = true, .dp = true};
      case GroupKind::tensor_parallel: return {.tp = true};
      case GroupKind::pipeline_parallel: return {.pp = true};
    }
    return {};
  }
  std::int64_t dp_, ep_, tp_, pp_;
};

/// Global expert ids held by EP rank `ep_rank` of `ep`: contiguous blocks
/// [r·E/ep, (r+1)·E/ep) or round-robin {r, r+ep, r+2·ep, ...}. E must be a multiple of ep.
inline std::vector<std::int64_t> experts_of_ep_rank(std::int64_t num_experts, std::int64_t ep,
                                                    std::int64_t ep_rank,
                                                    ExpertPlacement placement) {
  SY_EXPECTS(ep >= 1 && num_experts % ep == 0,
             detail::concat(num_experts, " experts cannot be split over ", ep, " ranks"));
  SY_EXPECTS(ep_rank >= 0 && ep_rank < ep,
             detail::concat("EP rank ", ep_rank, " is outside 0..", ep - 1));
  const std::int64_t local = num_experts / ep;
  std::vector<std::int64_t> ids(static_cast<std::size_t>(local));
  for (std::int64_t i = 0; i < local; ++i) {
    ids[static_cast<std::size_t>(i)] =
        placement == ExpertPlacement::contiguous ? ep_rank * local + i : ep_rank + i * ep;
  }
  return ids;
}

/// The experts a rank holds under the config's sharding: all of them under DataParallel.
inline std::vector<std::int64_t> experts_of_rank(const Config& c, std::int64_t rank) {
  const Layout layout(c);
  const std::int64_t ep_rank = layout.coords(rank).ep;
  if (c.sharding_strategy == ShardingStrategy::DataParallel)
    return experts_of_ep_rank(c.num_experts, 1, 0, c.expert_placement);
  return experts_of_ep_rank(c.num_experts, c.expert_parallel_size, ep_rank, c.expert_placement);
}

}  // namespace switchyard
