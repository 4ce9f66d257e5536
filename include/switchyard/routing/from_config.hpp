#pragma once
/// \file Routers built from a validated Config: RouterParams from its fields, and with_router(),
/// which picks the compile-time router (TopK<K, Score> or Sinkhorn<K>, K in 1..8) that matches
/// the runtime config and calls a generic function with it.

#include <string>
#include <utility>

#include "switchyard/config/config_types.hpp"
#include "switchyard/core/error.hpp"
#include "switchyard/routing/sinkhorn.hpp"
#include "switchyard/routing/top_k.hpp"

namespace switchyard {

/// Largest k that with_router() instantiates.
inline constexpr int max_config_k = 8;

/// The losses a config asks for: each aux loss load_balancing_type names whose coefficient in
/// load_balance_loss_coeff is > 0, in Megatron-Core's order (aux_loss, seq_aux_loss,
/// global_aux_loss, whatever order the list gives), and the z-loss with router_z_loss_coeff.
inline LossParams loss_params(const Config& c) {
  LossParams p;
  for (const LoadBalancingType t : {LoadBalancingType::aux_loss, LoadBalancingType::seq_aux_loss,
                                    LoadBalancingType::global_aux_loss})
    if (const double coeff = c.aux_loss_coeff(t); coeff > 0)
      p.balance.push_back(BalanceLoss{t, coeff});
  p.z_loss_coeff = c.router_z_loss_coeff;
  p.token_layout = c.token_layout;
  p.sequence_length = c.sequence_length;
  // DeepSpeed's top2gating counts first choices only (its top1/topkgating count all k).
  p.aux_first_choice_only = c.semantics == Semantics::deepspeed && c.num_experts_per_token == 2;
  return p;
}

/// RouterParams of a config (REFERENCE §2): scaling, groups, expert bias (zeros when enabled and
/// not given), bias update rate and losses.
inline RouterParams router_params(const Config& c) {
  RouterParams p;
  p.num_experts = c.num_experts;
  p.topk_scaling_factor = c.topk_scaling_factor;
  if (c.num_groups) p.num_groups = static_cast<int>(*c.num_groups);
  if (c.group_topk) p.group_topk = static_cast<int>(*c.group_topk);
  if (c.enable_expert_bias)
    p.expert_bias = c.expert_bias.empty()
                        ? std::vector<double>(static_cast<std::size_t>(c.num_experts), 0.0)
                        : c.expert_bias;
  p.expert_bias_update_rate = c.expert_bias_update_rate;
  p.losses = loss_params(c);
  return p;
}

namespace detail {
template <int K, class F>
decltype(auto) with_router_k(const Config& c, F&& f) {
  if (c.load_balancing_type == LoadBalancingType::sinkhorn)
    return std::forward<F>(f)(Sinkhorn<K>(c.num_experts, loss_params(c)));
  switch (c.score_function) {
    case ScoreFunction::sigmoid: return std::forward<F>(f)(TopK<K, Sigmoid>(router_params(c)));
    case ScoreFunction::sqrtsoftplus:
      return std::forward<F>(f)(TopK<K, SqrtSoftplus>(router_params(c)));
    case ScoreFunction::softmax: break;
  }
  if constexpr (K == 1) {
    if (!c.pre_softmax)
      throw config_error("k = 1 with softmax top-k-first has a zero gradient: set pre_softmax");
    return std::forward<F>(f)(TopK<K, PreSoftmax>(router_params(c)));
  } else {
    if (c.pre_softmax) return std::forward<F>(f)(TopK<K, PreSoftmax>(router_params(c)));
    return std::forward<F>(f)(TopK<K, Softmax>(router_params(c)));
  }
}
}  // namespace detail

/// Calls f(router) with the router the (validated) config describes; f must accept every
/// TopK<K, Score> and Sinkhorn<K> for K in 1..8 and return the same type for all.
/// Throws config_error when num_experts_per_token is above max_config_k.
template <class F>
decltype(auto) with_router(const Config& c, F&& f) {
  switch (c.num_experts_per_token) {
    case 1: return detail::with_router_k<1>(c, std::forward<F>(f));
    case 2: return detail::with_router_k<2>(c, std::forward<F>(f));
    case 3: return detail::with_router_k<3>(c, std::forward<F>(f));
    case 4: return detail::with_router_k<4>(c, std::forward<F>(f));
    case 5: return detail::with_router_k<5>(c, std::forward<F>(f));
    case 6: return detail::with_router_k<6>(c, std::forward<F>(f));
    case 7: return detail::with_router_k<7>(c, std::forward<F>(f));
    case 8: return detail::with_router_k<8>(c, std::forward<F>(f));
    default:
      throw config_error(detail::concat("num_experts_per_token = ", c.num_experts_per_token,
                                        ": routers are instantiated for k = 1..", max_config_k));
  }
}

}  // namespace switchyard
