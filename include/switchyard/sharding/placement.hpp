#pragma once
/// \file Expert placement over an EP group as a relabelling: global expert e lives on EP rank
/// owner(e) as its local expert local_index(e). Slots number the experts rank by rank
/// (slot = owner·E_local + local_index), so the rows a dispatch plan groups by slot are
/// contiguous per destination rank, whatever the placement.

#include <cstdint>
#include <vector>

#include "switchyard/config/config_types.hpp"
#include "switchyard/config/layout.hpp"
#include "switchyard/core/error.hpp"

namespace switchyard {

/// Where every global expert lives.
class ExpertPlacementMap {
 public:
  ExpertPlacementMap(std::int64_t num_experts, std::int64_t ep, ExpertPlacement placement)
      : E_(num_experts), ep_(ep), placement_(placement) {
    SY_EXPECTS(ep >= 1 && num_experts >= 1 && num_experts % ep == 0,
               detail::concat(num_experts, " experts cannot be split over ", ep, " ranks"));
  }
  /// The placement a config describes: DataParallel sharding keeps every expert on every rank.
  explicit ExpertPlacementMap(const Config& c)
      : ExpertPlacementMap(c.num_experts,
                           c.sharding_strategy == ShardingStrategy::DataParallel
                               ? 1
                               : c.expert_parallel_size,
                           c.expert_placement) {}

  std::int64_t num_experts() const { return E_; }
  std::int64_t ep() const { return ep_; }
  std::int64_t local_experts() const { return E_ / ep_; }
  std::int64_t owner(std::int64_t e) const {
    return placement_ == ExpertPlacement::contiguous ? e / local_experts() : e % ep_;
  }
  std::int64_t local_index(std::int64_t e) const {
    return placement_ == ExpertPlacement::contiguous ? e % local_experts() : e / ep_;
  }
  std::int64_t slot(std::int64_t e) const { return owner(e) * local_experts() + local_index(e); }
  /// The global expert of EP rank `rank`'s local expert `i`.
  std::int64_t expert(std::int64_t rank, std::int64_t i) const {
    return placement_ == ExpertPlacement::contiguous ? rank * local_experts() + i
                                                     : rank + i * ep_;
  }
  std::int64_t expert_of_slot(std::int64_t s) const {
    return expert(s / local_experts(), s % local_experts());
  }
  /// Global experts of EP rank `rank`, by local index.
  std::vector<std::int64_t> experts_of(std::int64_t rank) const {
    std::vector<std::int64_t> v;
    for (std::int64_t i = 0; i < local_experts(); ++i) v.push_back(expert(rank, i));
    return v;
  }

 private:
  std::int64_t E_, ep_;
  ExpertPlacement placement_;
};

}  // namespace switchyard
