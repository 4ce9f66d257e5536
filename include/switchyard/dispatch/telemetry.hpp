#pragma once
/// \file Load telemetry of a dispatch plan: tokens per expert before and after dropping, dropped
/// count and fraction, and the imbalance of the router's load.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "switchyard/dispatch/plan.hpp"

namespace switchyard {

/// Load statistics of one forward (one rank, or a global sum of counts).
struct DispatchStats {
  std::vector<std::int64_t> routed_per_expert;  ///< before dropping
  std::vector<std::int64_t> kept_per_expert;    ///< after dropping
  std::int64_t routes = 0;                      ///< T·k
  std::int64_t dropped = 0;
  double dropped_fraction = 0;  ///< dropped / routes (0 when there are no routes)
  double load_cv = 0;           ///< std/mean of routed_per_expert (population std)
  double max_over_mean = 0;     ///< max / mean of routed_per_expert (1 = perfect balance)
};

/// Statistics from per-expert counts; `routed` and `kept` have one entry per expert.
inline DispatchStats dispatch_stats(std::vector<std::int64_t> routed,
                                    std::vector<std::int64_t> kept) {
  DispatchStats s;
  for (std::size_t e = 0; e < routed.size(); ++e) {
    s.routes += routed[e];
    s.dropped += routed[e] - kept[e];
  }
  const double E = static_cast<double>(routed.size());
  if (s.routes > 0 && E > 0) {
    s.dropped_fraction = static_cast<double>(s.dropped) / static_cast<double>(s.routes);
    const double mean = static_cast<double>(s.routes) / E;
    double var = 0;
    for (auto c : routed) var += (static_cast<double>(c) - mean) * (static_cast<double>(c) - mean);
    s.load_cv = std::sqrt(var / E) / mean;
    s.max_over_mean = static_cast<double>(*std::max_element(routed.begin(), routed.end())) / mean;
  }
  s.routed_per_expert = std::move(routed);
  s.kept_per_expert = std::move(kept);
  return s;
}

/// Statistics of a plan.
inline DispatchStats dispatch_stats(const DispatchPlan& plan) {
  return dispatch_stats(plan.routed_per_expert, plan.kept_per_expert);
}

}  // namespace switchyard
