#pragma once
/// \file Routers and losses (host API): TopK<K, Score>, Sinkhorn<K>, the losses, the router
/// linear layer and input jitter, and routers built from a Config. docs/routing.md.

#include "switchyard/routing/expert_bias.hpp"
#include "switchyard/routing/from_config.hpp"
#include "switchyard/routing/losses.hpp"
#include "switchyard/routing/router_linear.hpp"
#include "switchyard/routing/router_policy.hpp"
#include "switchyard/routing/routing_types.hpp"
#include "switchyard/routing/score.hpp"
#include "switchyard/routing/sinkhorn.hpp"
#include "switchyard/routing/top_k.hpp"
