#pragma once
/// \file Aux-loss-free balancing (REFERENCE §5): the expert bias update after a global batch.

#include <cstdint>
#include <span>
#include <vector>

#include "switchyard/core/error.hpp"

namespace switchyard {

/// β_e ← β_e + u · sign(mean(c) − c_e), with c the dispatched (post-drop) tokens per expert of
/// the global batch and u the update rate. An under-loaded expert's bias rises, so it is
/// selected more often; the weights never see β.
inline void update_expert_bias(std::vector<double>& bias, std::span<const std::int64_t> counts,
                               double rate) {
  SY_EXPECTS(bias.size() == counts.size(),
             detail::concat("update_expert_bias: ", bias.size(), " biases but ", counts.size(),
                            " counts"));
  if (counts.empty()) return;
  double mean = 0.0;
  for (auto c : counts) mean += static_cast<double>(c);
  mean /= static_cast<double>(counts.size());
  for (std::size_t e = 0; e < bias.size(); ++e) {
    const double d = mean - static_cast<double>(counts[e]);
    bias[e] += rate * static_cast<double>((d > 0) - (d < 0));
  }
}

}  // namespace switchyard
