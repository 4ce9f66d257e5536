#pragma once
/// \file The bridge from a runtime config to compiled policies: make_layer() picks the router
/// (TopK<K, Softmax | PreSoftmax | Sigmoid | SqrtSoftplus> or Sinkhorn<K>, K = 1..8), the
/// expert (FFN or GLU over GeLU, GeLUTanh, ReLU, SiLU) and the dispatcher (Dropless,
/// Capacity<DropByProbs>, Capacity<DropByPosition>) that the config names. Each router and each
/// expert policy is instantiated once and combined through the layer's hooks, so every
/// combination is available; a k outside 1..8 is a config_error listing what is compiled.

#include <memory>

#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/layer/moe_layer.hpp"
#include "switchyard/routing/from_config.hpp"

namespace switchyard {

/// A layer for a validated runtime config (throws config_error listing every problem).
template <class T, Communicator Comm>
std::unique_ptr<MoELayerCore<T, Comm>> make_layer(const Config& c, MoEComms<Comm> comms) {
  require_valid(c);
  auto router = with_router(c, [](auto r) -> std::unique_ptr<detail::router_hooks<T>> {
    return std::make_unique<detail::router_hooks_impl<decltype(r), T>>(std::move(r));
  });
  auto experts = visit_expert_policy(c, [](auto p) -> std::unique_ptr<detail::expert_hooks<T>> {
    return std::make_unique<detail::expert_hooks_impl<decltype(p), T>>();
  });
  return std::make_unique<MoELayerCore<T, Comm>>(c, comms, std::move(router), std::move(experts));
}

}  // namespace switchyard
