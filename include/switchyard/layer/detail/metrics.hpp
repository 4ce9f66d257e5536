#pragma once
/// \file MoEMetrics from a forward's counts and loss values, shared by the host layer (after its
/// group reduction) and the device layer (after its one copy to the host).

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "switchyard/dispatch/telemetry.hpp"
#include "switchyard/layer/layer_types.hpp"
#include "switchyard/routing/routing_types.hpp"

namespace switchyard::detail {

/// Fills the counts, load statistics, losses (set when `lp` has them on), Sinkhorn iterations
/// and capacity of `m`; routed and kept are per global expert.
inline void set_metrics(MoEMetrics& m, std::vector<std::int64_t> routed,
                        std::vector<std::int64_t> kept, std::int64_t tokens, const LossParams& lp,
                        double aux_loss, double z_loss, int sinkhorn_iterations,
                        std::optional<std::int64_t> capacity) {
  const DispatchStats st = dispatch_stats(std::move(routed), std::move(kept));
  m.tokens = tokens;
  m.tokens_per_expert = st.routed_per_expert;
  m.kept_per_expert = st.kept_per_expert;
  m.dropped = st.dropped;
  m.dropped_fraction = st.dropped_fraction;
  m.load_cv = st.load_cv;
  m.max_over_mean = st.max_over_mean;
  if (!lp.balance.empty()) m.aux_loss = aux_loss;
  if (lp.z_loss_coeff > 0) m.z_loss = z_loss;
  m.sinkhorn_iterations = sinkhorn_iterations;
  m.capacity = capacity;
}

}  // namespace switchyard::detail
