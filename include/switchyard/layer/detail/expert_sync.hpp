#pragma once
/// \file The expert-sync bookkeeping the host and device layers share (enable_expert_sync,
/// sync_frequency): which optimizer steps average the expert replicas, and an error when a loop
/// reduces gradients for longer than sync_frequency steps without averaging.

#include <cstdint>

#include "switchyard/config/config_types.hpp"
#include "switchyard/core/error.hpp"

namespace switchyard::detail {

class expert_sync_clock {
 public:
  /// One reduce_gradients() under enable_expert_sync: precondition_error once more than
  /// sync_frequency of them pass without an average (the replicas would drift apart unnoticed).
  /// Every rank counts the same calls, so every rank throws, before any collective.
  void count_reduction(const Config& c, const char* where) {
    if (!c.enable_expert_sync || ++since_average_ <= c.sync_frequency) return;
    throw precondition_error(
        concat(where, ": enable_expert_sync with sync_frequency ", c.sync_frequency, ", but ",
               since_average_ - 1,
               " optimizer steps passed without an average: call sync_expert_weights(step) after "
               "each optimizer step"));
  }
  /// Whether optimizer step `step` (counted from 1) averages the expert weights.
  static bool due(const Config& c, std::int64_t step) {
    SY_EXPECTS(step >= 1, "sync_expert_weights: steps count from 1");
    return c.enable_expert_sync && step % c.sync_frequency == 0;
  }
  void averaged() { since_average_ = 0; }

 private:
  std::int64_t since_average_ = 0;
};

}  // namespace switchyard::detail
