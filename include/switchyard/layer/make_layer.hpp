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

namespace detail {
/// The router and expert hooks the config names (make_layer's parts).
template <class T>
std::unique_ptr<router_hooks<T>> make_router_hooks(const Config& c) {
  return with_router(c, [](auto r) -> std::unique_ptr<router_hooks<T>> {
    return std::make_unique<router_hooks_impl<decltype(r), T>>(std::move(r));
  });
}
template <class T>
std::unique_ptr<expert_hooks<T>> make_expert_hooks(const Config& c) {
  return visit_expert_policy(c, [](auto p) -> std::unique_ptr<expert_hooks<T>> {
    return std::make_unique<expert_hooks_impl<decltype(p), T>>();
  });
}
}  // namespace detail

/// A layer for a validated runtime config (throws config_error listing every problem).
template <class T, Communicator Comm>
std::unique_ptr<MoELayerCore<T, Comm>> make_layer(const Config& c, MoEComms<Comm> comms) {
  require_valid(c);
  return std::make_unique<MoELayerCore<T, Comm>>(c, comms, detail::make_router_hooks<T>(c),
                                                 detail::make_expert_hooks<T>(c));
}

}  // namespace switchyard
