#pragma once
/// \file Expert placement over an EP group as a relabelling: global expert e lives on EP rank
/// owner(e) as its local expert local_index(e). Slots number the experts rank by rank
/// (slot = owner·E_local + local_index), so the rows a dispatch plan groups by slot are
/// contiguous per destination rank, whatever the placement.
///
/// A placement starts as the config's expert_placement (contiguous or round_robin) and, with
/// expert migration (enable_expert_migration, sharding_strategy Dynamic, a migration object), may
/// become any
/// assignment of E_local experts to each rank: balanced() packs experts by load.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "switchyard/comm/communicator.hpp"
#include "switchyard/config/config_types.hpp"
#include "switchyard/config/layout.hpp"
#include "switchyard/core/error.hpp"

namespace switchyard {

/// Where every global expert lives.
class ExpertPlacementMap {
 public:
  ExpertPlacementMap(std::int64_t num_experts, std::int64_t ep, ExpertPlacement placement)
      : E_(num_experts), ep_(ep) {
    SY_EXPECTS(ep >= 1 && num_experts >= 1 && num_experts % ep == 0,
               detail::concat(num_experts, " experts cannot be split over ", ep, " ranks"));
    const std::int64_t El = local_experts();
    std::vector<std::int64_t> experts(static_cast<std::size_t>(E_));
    for (std::int64_t r = 0; r < ep_; ++r)
      for (std::int64_t i = 0; i < El; ++i)
        experts[static_cast<std::size_t>(r * El + i)] =
            placement == ExpertPlacement::contiguous ? r * El + i : r + i * ep_;
    set_slots(std::move(experts));
  }
  /// The placement a config describes: DataParallel sharding keeps every expert on every rank.
  explicit ExpertPlacementMap(const Config& c)
      : ExpertPlacementMap(c.num_experts,
                           c.sharding_strategy == ShardingStrategy::DataParallel
                               ? 1
                               : c.expert_parallel_size,
                           c.expert_placement) {}
  /// Any placement: expert_of_slot[r·E_local + i] is the global expert EP rank r holds as its
  /// local expert i. Every expert exactly once (precondition_error naming the first that is
  /// not).
  ExpertPlacementMap(std::int64_t ep, std::vector<std::int64_t> expert_of_slot)
      : E_(static_cast<std::int64_t>(expert_of_slot.size())), ep_(ep) {
    SY_EXPECTS(ep >= 1 && E_ >= 1 && E_ % ep == 0,
               detail::concat(E_, " experts cannot be split over ", ep, " ranks"));
    set_slots(std::move(expert_of_slot));
  }

  std::int64_t num_experts() const { return E_; }
  std::int64_t ep() const { return ep_; }
  std::int64_t local_experts() const { return E_ / ep_; }
  std::int64_t owner(std::int64_t e) const { return slot(e) / local_experts(); }
  std::int64_t local_index(std::int64_t e) const { return slot(e) % local_experts(); }
  std::int64_t slot(std::int64_t e) const { return slot_of_[static_cast<std::size_t>(e)]; }
  /// The global expert of EP rank `rank`'s local expert `i`.
  std::int64_t expert(std::int64_t rank, std::int64_t i) const {
    return expert_of_slot(rank * local_experts() + i);
  }
  std::int64_t expert_of_slot(std::int64_t s) const {
    return expert_of_slot_[static_cast<std::size_t>(s)];
  }
  /// Global experts of EP rank `rank`, by local index.
  std::vector<std::int64_t> experts_of(std::int64_t rank) const {
    const auto first = expert_of_slot_.begin() + rank * local_experts();
    return {first, first + local_experts()};
  }
  /// The global expert of every slot (rank-major).
  const std::vector<std::int64_t>& slots() const { return expert_of_slot_; }
  friend bool operator==(const ExpertPlacementMap& a, const ExpertPlacementMap& b) {
    return a.ep_ == b.ep_ && a.expert_of_slot_ == b.expert_of_slot_;
  }

  /// Tokens each EP rank's experts get for `load` (tokens per global expert, [E]; the double
  /// form takes smoothed loads, migration_schedule).
  std::vector<std::int64_t> rank_loads(std::span<const std::int64_t> load) const {
    return rank_loads_of(load);
  }
  std::vector<double> rank_loads(std::span<const double> load) const { return rank_loads_of(load); }
  /// Imbalance of the EP ranks under `load`: the busiest rank's tokens over the mean, minus 1
  /// (0: every rank gets the same; ep − 1: one rank gets everything). 0 without tokens.
  double imbalance(std::span<const std::int64_t> load) const { return imbalance_of(load); }
  double imbalance(std::span<const double> load) const { return imbalance_of(load); }

  /// A placement of the same shape that balances `load` over the EP ranks: the experts, most
  /// loaded first (ties: lower id), each to the rank with the fewest tokens so far among those
  /// with a free slot (ties: lower rank), E_local per rank (greedy longest-processing-time
  /// packing, as DeepSeek's EPLB balanced_packing); each rank's experts by ascending id.
  /// Deterministic: the same loads give the same placement on every rank.
  ExpertPlacementMap balanced(std::span<const std::int64_t> load) const {
    return balanced_of(load);
  }
  ExpertPlacementMap balanced(std::span<const double> load) const { return balanced_of(load); }

  /// Experts whose EP rank differs between this placement and `other` (of the same shape).
  std::int64_t experts_moved_to(const ExpertPlacementMap& other) const {
    std::int64_t n = 0;
    for (std::int64_t e = 0; e < E_; ++e) n += owner(e) != other.owner(e) ? 1 : 0;
    return n;
  }

 private:
  void set_slots(std::vector<std::int64_t> expert_of_slot) {
    slot_of_.assign(static_cast<std::size_t>(E_), -1);
    for (std::size_t s = 0; s < expert_of_slot.size(); ++s) {
      const std::int64_t e = expert_of_slot[s];
      SY_EXPECTS(e >= 0 && e < E_ && slot_of_[static_cast<std::size_t>(e)] < 0,
                 detail::concat("expert placement: slot ", s, " holds expert ", e,
                                e >= 0 && e < E_ ? ", which another slot holds already"
                                                 : detail::concat(", not one of the ", E_)));
      slot_of_[static_cast<std::size_t>(e)] = static_cast<std::int64_t>(s);
    }
    expert_of_slot_ = std::move(expert_of_slot);
  }
  template <class L>
  void check_loads(std::span<const L> load) const {
    SY_EXPECTS(static_cast<std::int64_t>(load.size()) == E_,
               detail::concat("expert placement: ", load.size(), " loads for ", E_, " experts"));
    for (std::size_t e = 0; e < load.size(); ++e)
      SY_EXPECTS(load[e] >= 0 && load[e] <= std::numeric_limits<L>::max(),
                 detail::concat("expert placement: expert ", e, " has load ", load[e]));
  }
  template <class L>
  std::vector<L> rank_loads_of(std::span<const L> load) const {
    check_loads(load);
    std::vector<L> r(static_cast<std::size_t>(ep_), L{0});
    for (std::int64_t e = 0; e < E_; ++e)
      r[static_cast<std::size_t>(owner(e))] += load[static_cast<std::size_t>(e)];
    return r;
  }
  template <class L>
  double imbalance_of(std::span<const L> load) const {
    const std::vector<L> r = rank_loads_of(load);
    const L total = std::accumulate(r.begin(), r.end(), L{0});
    if (total == 0) return 0;
    const L most = *std::max_element(r.begin(), r.end());
    return static_cast<double>(most) * static_cast<double>(ep_) / static_cast<double>(total) - 1;
  }
  template <class L>
  ExpertPlacementMap balanced_of(std::span<const L> load) const {
    check_loads(load);
    const std::int64_t El = local_experts();
    std::vector<std::int64_t> order(static_cast<std::size_t>(E_));
    std::iota(order.begin(), order.end(), std::int64_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
      return load[static_cast<std::size_t>(a)] > load[static_cast<std::size_t>(b)];
    });
    std::vector<L> tokens(static_cast<std::size_t>(ep_), L{0});
    std::vector<std::vector<std::int64_t>> held(static_cast<std::size_t>(ep_));
    for (const std::int64_t e : order) {
      std::int64_t best = -1;
      for (std::int64_t r = 0; r < ep_; ++r) {
        const auto ru = static_cast<std::size_t>(r);
        if (static_cast<std::int64_t>(held[ru].size()) == El) continue;
        if (best < 0 || tokens[ru] < tokens[static_cast<std::size_t>(best)]) best = r;
      }
      const auto bu = static_cast<std::size_t>(best);
      held[bu].push_back(e);
      tokens[bu] += load[static_cast<std::size_t>(e)];
    }
    std::vector<std::int64_t> slots;
    slots.reserve(static_cast<std::size_t>(E_));
    for (auto& h : held) {
      std::sort(h.begin(), h.end());
      slots.insert(slots.end(), h.begin(), h.end());
    }
    return ExpertPlacementMap(ep_, std::move(slots));
  }

  std::int64_t E_, ep_;
  std::vector<std::int64_t> expert_of_slot_, slot_of_;
};

/// Expert migration's decision (migration_schedule, for the host and device layers'
/// migrate_experts): the placement to move to under `load` tokens per global expert, or none.
/// The experts move when the EP ranks' imbalance under `current` is above `threshold` and the
/// move gives the busiest rank fewer tokens. The move is current.balanced(load) when it moves at
/// most `limit` experts to another rank (limit 0: any number); otherwise it is built from swaps
/// (a rank's experts stay E_local), each trading an expert of the busiest rank for a lighter one
/// of another rank: the pair that leaves the larger of the two ranks' loads smallest, while that
/// is below the busiest rank's load and no more than `limit` experts sit away from their ranks in
/// `current`. With `distance` > 0 no expert ends more than `distance` EP ranks away from its rank
/// in `current` (the packing is taken only when it keeps to that, and each swap must).
/// Deterministic: the same loads give the same answer everywhere.
inline std::optional<ExpertPlacementMap> migration_target(const ExpertPlacementMap& current,
                                                          std::span<const double> load,
                                                          double threshold, std::int64_t limit = 0,
                                                          std::int64_t distance = 0) {
  const auto busiest = [&](const ExpertPlacementMap& p) {
    const std::vector<double> r = p.rank_loads(load);  // checks the loads
    return *std::max_element(r.begin(), r.end());
  };
  const double now = busiest(current);
  if (current.ep() == 1 || !(current.imbalance(load) > threshold)) return std::nullopt;
  const auto near = [&](std::int64_t expert, std::int64_t rank) {  // within distance of home
    const std::int64_t d = rank - current.owner(expert);
    return distance <= 0 || (d < 0 ? -d : d) <= distance;
  };
  std::optional<ExpertPlacementMap> next = current.balanced(load);
  bool packing = limit <= 0 || current.experts_moved_to(*next) <= limit;
  for (std::int64_t e = 0; packing && e < current.num_experts(); ++e)
    packing = near(e, next->owner(e));
  if (!packing) {
    const std::int64_t El = current.local_experts(), ep = current.ep();
    std::vector<std::int64_t> slots = current.slots();
    std::vector<double> ranks = current.rank_loads(load);
    const auto at = [&](std::int64_t s) {
      return load[static_cast<std::size_t>(slots[static_cast<std::size_t>(s)])];
    };
    const auto away = [&](std::int64_t s, std::int64_t rank) {  // expert of s on `rank`: moved?
      return current.owner(slots[static_cast<std::size_t>(s)]) != rank ? 1 : 0;
    };
    std::int64_t moved = 0;
    // Each swap lowers the two ranks' larger load, so the sum of squared rank loads falls and
    // no placement repeats; the cap only bounds the work.
    for (std::int64_t round = 0; round < current.num_experts() * ep; ++round) {
      const auto b =
          static_cast<std::int64_t>(std::max_element(ranks.begin(), ranks.end()) - ranks.begin());
      const double lb = ranks[static_cast<std::size_t>(b)];
      double best = lb;
      std::int64_t bs = -1, bt = -1, best_moved = 0;
      for (std::int64_t s = b * El; s < (b + 1) * El; ++s)
        for (std::int64_t t = 0; t < ep * El; ++t) {
          const std::int64_t r = t / El;
          if (r == b || !(at(s) > at(t))) continue;
          if (!near(slots[static_cast<std::size_t>(s)], r) ||
              !near(slots[static_cast<std::size_t>(t)], b))
            continue;
          const double lr = ranks[static_cast<std::size_t>(r)];
          const double larger = std::max(lb - at(s) + at(t), lr + at(s) - at(t));
          const std::int64_t m = moved - away(s, b) - away(t, r) + away(s, r) + away(t, b);
          if (larger < best && (limit <= 0 || m <= limit)) {
            best = larger;
            bs = s;
            bt = t;
            best_moved = m;
          }
        }
      if (bs < 0) break;
      const double d = at(bs) - at(bt);
      ranks[static_cast<std::size_t>(b)] -= d;
      ranks[static_cast<std::size_t>(bt / El)] += d;
      std::swap(slots[static_cast<std::size_t>(bs)], slots[static_cast<std::size_t>(bt)]);
      moved = best_moved;
    }
    next = ExpertPlacementMap(ep, std::move(slots));
  }
  if (!(busiest(*next) < now)) return std::nullopt;
  return next;
}
inline std::optional<ExpertPlacementMap> migration_target(const ExpertPlacementMap& current,
                                                          std::span<const std::int64_t> load,
                                                          double threshold, std::int64_t limit = 0,
                                                          std::int64_t distance = 0) {
  const std::vector<double> l(load.begin(), load.end());
  return migration_target(current, l, threshold, limit, distance);
}

/// Expert migration's schedule (the config's load_balancing object; without one: a check after
/// every step, from that step's loads, with no limit on the experts moved). After each step the
/// loads are smoothed, h ← f·h + (1 − f)·load (f = load_smoothing_factor; h starts as the first
/// step's loads), and every check_frequency-th step is a check: migration_target(current, h,
/// the imbalance threshold, max_concurrent_migrations, max_migration_distance), skipped in the
/// cooldown_period steps after a move (the migration object; Config's
/// migration_* accessors give each number). decide() computes and records nothing;
/// commit() then records the step decide() saw (the layers call it once the ranks agree on
/// fingerprint() and any move is done, so a failed step can be retried).
class migration_schedule {
 public:
  explicit migration_schedule(const Config& c)
      : every_(c.migration_check_frequency()),
        limit_(c.migration_move_limit()),
        smoothing_(c.migration_load_smoothing()),
        threshold_(c.migration_imbalance_threshold()),
        cooldown_(c.migration_cooldown()),
        distance_(c.migration_max_distance()) {
    SY_EXPECTS(every_ >= 1 && limit_ >= 0 && smoothing_ >= 0 && smoothing_ < 1 && cooldown_ >= 0 &&
                   distance_ >= 0,
               detail::concat(
                   "expert migration: check_frequency ", every_, ", max_concurrent_migrations ",
                   limit_, ", load_smoothing_factor ", smoothing_, ", cooldown_period ", cooldown_,
                   " and max_migration_distance ", distance_, " (validate the config first)"));
  }

  /// The placement to move to after a step with `load` tokens per global expert, or none (not a
  /// check, or nothing to gain). Throws precondition_error for loads that are not E counts >= 0.
  std::optional<ExpertPlacementMap> decide(const ExpertPlacementMap& current,
                                           std::span<const std::int64_t> load) {
    decided_ = false;
    SY_EXPECTS(static_cast<std::int64_t>(load.size()) == current.num_experts(),
               detail::concat("expert migration: ", load.size(), " loads for ",
                              current.num_experts(), " experts"));
    current.rank_loads(load);  // checks the counts
    pending_.resize(load.size());
    for (std::size_t e = 0; e < load.size(); ++e) {
      const auto now = static_cast<double>(load[e]);
      pending_[e] = steps_ == 0 ? now : smoothing_ * history_[e] + (1 - smoothing_) * now;
    }
    std::optional<ExpertPlacementMap> next;
    const std::int64_t step = steps_ + 1;  // 1-based, as train prints it
    const bool cooled = last_move_ == 0 || step - last_move_ > cooldown_;
    if (step % every_ == 0 && cooled)
      next = migration_target(current, pending_, threshold_, limit_, distance_);
    moving_ = next.has_value();
    // What the ranks must agree on: the loads, the steps so far, the last move and the decision.
    std::vector<std::int64_t> seen(load.begin(), load.end());
    seen.push_back(steps_);
    seen.push_back(last_move_);
    if (next) seen.insert(seen.end(), next->slots().begin(), next->slots().end());
    fingerprint_ = fnv1a64(std::string(reinterpret_cast<const char*>(seen.data()),
                                       seen.size() * sizeof(std::int64_t)));
    decided_ = true;
    return next;
  }
  /// Of the last decide(): a hash of its loads, the steps before it and its decision.
  std::uint64_t fingerprint() const { return fingerprint_; }
  /// Records the step the last decide() saw (precondition_error without one).
  void commit() {
    SY_EXPECTS(decided_, "expert migration: commit() without a decide() before it");
    history_.swap(pending_);
    ++steps_;
    if (moving_) last_move_ = steps_;
    decided_ = false;
  }
  /// The smoothed loads h after the steps committed so far (empty before the first).
  const std::vector<double>& smoothed_loads() const { return history_; }
  std::int64_t steps() const { return steps_; }
  /// The (1-based) step of the last committed move, 0 before any.
  std::int64_t last_move_step() const { return last_move_; }

 private:
  std::int64_t every_, limit_;
  double smoothing_, threshold_;
  std::int64_t cooldown_, distance_;
  std::int64_t steps_ = 0, last_move_ = 0;
  bool decided_ = false, moving_ = false;
  std::uint64_t fingerprint_ = 0;
  std::vector<double> history_, pending_;
};

/// The copies of a move from placement `from` to `to` on EP rank `me` (the host and device
/// layers' move_experts), in chunks of one expert's share of a tensor whose leading dimension is
/// the local expert: what `me` sends to each rank q in turn (the experts q holds next that `me`
/// holds now, by q's new local index) and, in the order they arrive (by source rank, then by
/// new local index), where the received chunks go.
struct expert_move {
  std::vector<std::int64_t> send_local;   ///< current local index of each chunk sent, in order
  std::vector<std::int64_t> send_chunks;  ///< chunks sent to each rank [ep]
  std::vector<std::int64_t> recv_local;   ///< new local index of each chunk received, in order
  std::vector<std::int64_t> recv_chunks;  ///< chunks received from each rank [ep]

  /// The all-to-all's element counts for a tensor of n elements per local expert.
  void counts(std::int64_t n, std::vector<std::int64_t>& send,
              std::vector<std::int64_t>& recv) const {
    send.resize(send_chunks.size());
    recv.resize(recv_chunks.size());
    for (std::size_t p = 0; p < send_chunks.size(); ++p) {
      send[p] = send_chunks[p] * n;
      recv[p] = recv_chunks[p] * n;
    }
  }
};

inline expert_move plan_expert_move(const ExpertPlacementMap& from, const ExpertPlacementMap& to,
                                    std::int64_t me) {
  SY_EXPECTS(
      to.num_experts() == from.num_experts() && to.ep() == from.ep(),
      detail::concat("move_experts: a placement of ", to.num_experts(), " experts over ", to.ep(),
                     " ranks for one of ", from.num_experts(), " over ", from.ep()));
  const std::int64_t ep = from.ep(), El = from.local_experts();
  expert_move m;
  m.send_chunks.assign(static_cast<std::size_t>(ep), 0);
  m.recv_chunks.assign(static_cast<std::size_t>(ep), 0);
  for (std::int64_t q = 0; q < ep; ++q)
    for (std::int64_t j = 0; j < El; ++j) {
      const std::int64_t e = to.expert(q, j);
      if (from.owner(e) != me) continue;
      m.send_local.push_back(from.local_index(e));
      ++m.send_chunks[static_cast<std::size_t>(q)];
    }
  for (std::int64_t p = 0; p < ep; ++p)
    for (std::int64_t j = 0; j < El; ++j)
      if (from.owner(to.expert(me, j)) == p) {
        m.recv_local.push_back(j);
        ++m.recv_chunks[static_cast<std::size_t>(p)];
      }
  return m;
}

/// What the layers' move_experts check on each rank before anything moves: every tensor to move
/// (`sizes`, in elements) is a whole number of local experts' worth. Gives the fingerprint the
/// ranks must then agree on (the placement `to` and the sizes, in order) and the largest size
/// (the exchange buffers'). `who` names the caller in the error.
struct expert_move_check {
  std::uint64_t fingerprint = 0;
  std::size_t most = 0;
};

inline expert_move_check check_expert_move(const ExpertPlacementMap& to,
                                           std::span<const std::size_t> sizes,
                                           std::string_view who) {
  const auto El = static_cast<std::size_t>(to.local_experts());
  std::vector<std::uint64_t> shape(to.slots().begin(), to.slots().end());
  expert_move_check c;
  for (const std::size_t n : sizes) {
    SY_EXPECTS(n % El == 0, detail::concat(who, ": a tensor of ", n, " elements is not ", El,
                                           " local experts' worth"));
    c.most = std::max(c.most, n);
    shape.push_back(n);
  }
  c.fingerprint = fnv1a64(std::string(reinterpret_cast<const char*>(shape.data()),
                                      shape.size() * sizeof(std::uint64_t)));
  return c;
}

}  // namespace switchyard
