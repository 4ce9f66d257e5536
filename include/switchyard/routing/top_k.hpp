#pragma once
/// \file TopK<K, Score>: the top-k router (REFERENCE §2) with scaling, group-limited routing,
/// expert bias and the losses of REFERENCE §5. Host backend here; the CUDA kernels are in
/// routing/top_k.cuh.

#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/exec/parallel.hpp"
#include "switchyard/routing/detail/token_lanes.hpp"
#include "switchyard/routing/detail/token_math.hpp"
#include "switchyard/routing/expert_bias.hpp"
#include "switchyard/routing/losses.hpp"
#include "switchyard/routing/router_policy.hpp"
#include "switchyard/routing/routing_types.hpp"
#include "switchyard/routing/score.hpp"

namespace switchyard {

/// Largest compile-time k a router supports (per-token state lives in registers).
inline constexpr int max_router_k = 16;

/// Top-k router with score function `Score` (Softmax, PreSoftmax, Sigmoid, SqrtSoftplus).
///
///     sy::TopK<2, sy::Softmax> router(sy::RouterParams{.num_experts = 8});
///     auto routes = router.forward(sy::exec::Host{}, logits);      // logits [T][8]
///     router.backward(sy::exec::Host{}, routes, dprob, dlogits);   // dprob [T][2]
template <int K, ScoreTag Score>
class TopK {
  static_assert(K >= 1 && K <= max_router_k, "TopK: K must be between 1 and 16");
  static_assert(!(K == 1 && std::is_same_v<Score, Softmax>),
                "TopK<1, Softmax>: k = 1 with softmax top-k-first has a zero gradient: use "
                "TopK<1, PreSoftmax> or k >= 2");

 public:
  using policy_kind = router_tag;
  using score_type = Score;
  static constexpr int k = K;

  /// Checks the parameters (precondition_error naming the bad value).
  explicit TopK(RouterParams p) : p_(std::move(p)) {
    const index_t E = p_.num_experts;
    SY_EXPECTS(E >= K, detail::concat("TopK<", K, ">: needs at least ", K, " experts, got ", E));
    SY_EXPECTS(!p_.topk_scaling_factor || *p_.topk_scaling_factor > 0,
               "TopK: topk_scaling_factor must be > 0");
    SY_EXPECTS(p_.num_groups.has_value() == p_.group_topk.has_value(),
               "TopK: num_groups and group_topk go together");
    if (p_.num_groups) {
      const int G = *p_.num_groups, Gk = *p_.group_topk;
      SY_EXPECTS(G >= 1 && G <= detail::max_groups && E % G == 0,
                 detail::concat("TopK: num_groups = ", G, " must be in [1, 64] and divide ", E,
                                " experts"));
      SY_EXPECTS(Gk >= 1 && Gk <= G && Gk * (E / G) >= K,
                 detail::concat("TopK: group_topk = ", Gk, " must be in [1, ", G,
                                "] and its groups must hold ", K, " experts"));
    }
    SY_EXPECTS(p_.expert_bias.empty() || static_cast<index_t>(p_.expert_bias.size()) == E,
               detail::concat("TopK: expert_bias has ", p_.expert_bias.size(), " entries for ", E,
                              " experts"));
    SY_EXPECTS(p_.expert_bias.empty() || !is_softmax_score<Score>,
               "TopK: expert bias needs a sigmoid or sqrtsoftplus score (it would change "
               "softmax weights)");
  }

  index_t num_experts() const { return p_.num_experts; }
  const RouterParams& params() const { return p_; }
  const std::vector<double>& expert_bias() const { return p_.expert_bias; }

  /// Aux-loss-free balancing (REFERENCE §5) from the dispatched counts [E] of a global batch.
  /// Starts from β = 0 when no bias was set.
  void update_expert_bias(std::span<const std::int64_t> dispatched_counts) {
    if (p_.expert_bias.empty()) p_.expert_bias.assign(static_cast<std::size_t>(p_.num_experts), 0.0);
    switchyard::update_expert_bias(p_.expert_bias, dispatched_counts, p_.expert_bias_update_rate);
  }

  /// The per-token arguments in compute type T; `bias` keeps the converted β alive.
  template <class T>
  detail::route_args<T> args(std::vector<T>& bias) const {
    bias.assign(p_.expert_bias.begin(), p_.expert_bias.end());
    return args_with_bias<T>(bias.empty() ? nullptr : bias.data());
  }

  /// The per-token arguments with β read from `bias` ([E] in the memory space of the kernel,
  /// e.g. a device copy of expert_bias() for routing/top_k.cuh; null when there is no bias).
  template <class T>
  detail::route_args<T> args_with_bias(const T* bias) const {
    detail::route_args<T> a;
    a.num_experts = p_.num_experts;
    a.scaling = static_cast<T>(p_.topk_scaling_factor.value_or(1.0));
    a.num_groups = p_.num_groups.value_or(1);
    a.group_topk = p_.group_topk.value_or(1);
    a.expert_bias = bias;
    return a;
  }

  /// Routes logits [T][E]; throws numeric_error on NaN/Inf logits naming the first bad token.
  template <class T>
  Routing<T> forward(exec::Host, matrix_view<const T> logits, RouteContext ctx = {}) const {
    const index_t Tn = logits.extent(0), E = logits.extent(1);
    Routing<T> r = begin_routing<K>(logits, p_.num_experts, "TopK");
    std::vector<T> bias;
    const detail::route_args<T> a = args<T>(bias);
    const auto token = [&](index_t t) {
      detail::route_token<K, Score>(&r.logits[t * E], a, &r.topk_indices[t * K],
                                    &r.topk_probs[t * K]);
    };
#if SY_ROUTE_LANES
    if (detail::routes_in_lanes<T>(E)) {
      // Blocks of lane_width tokens in SIMD lanes, the tail per token: the same bits either way.
      constexpr index_t L = detail::lane_width;
      const index_t blocks = Tn / L;
      route_tokens<K>(r, blocks, L, [&](index_t i) {
        if (i < blocks)
          detail::route_block<K, Score>(&r.logits[i * L * E], a, &r.topk_indices[i * L * K],
                                        &r.topk_probs[i * L * K]);
        else
          token(blocks * L + (i - blocks));
      });
      return finish(r, ctx);
    }
#endif
    route_tokens<K>(r, Tn, 1, token);
    return finish(r, ctx);
  }

  /// d logits [T][E] (overwritten) from d prob [T][K] of the selected routes, plus the
  /// gradients of the losses (REFERENCE §8).
  template <class T>
  void backward(exec::Host, const Routing<T>& r, matrix_view<const T> dprob,
                matrix_view<T> dlogits) const {
    const index_t Tn = r.num_tokens, E = r.num_experts;
    SY_EXPECTS(dprob.extent(0) == Tn && dprob.extent(1) == K,
               detail::concat("TopK::backward: dprob is [", dprob.extent(0), "][",
                              dprob.extent(1), "], expected [", Tn, "][", K, "]"));
    SY_EXPECTS(dlogits.extent(0) == Tn && dlogits.extent(1) == E,
               detail::concat("TopK::backward: dlogits is [", dlogits.extent(0), "][",
                              dlogits.extent(1), "], expected [", Tn, "][", E, "]"));
    std::vector<T> bias;
    const detail::route_args<T> a = args<T>(bias);
    exec::parallel_for(Tn, E * (K + 4), [&](index_t t) {
      detail::route_token_backward<K, Score>(&r.logits[t * E], a, &r.topk_indices[t * K],
                                             &dprob(t, 0), &dlogits(t, 0));
    });
    add_loss_gradients<Score>(r, p_.losses, dlogits);
  }

 private:
  template <class T>
  Routing<T> finish(Routing<T>& r, const RouteContext& ctx) const {
    compute_losses<K, Score>(matrix_view<const T>(r.logits.data(), r.num_tokens, r.num_experts),
                             p_.losses, ctx, r);
    return std::move(r);
  }

  RouterParams p_;
};

static_assert(RouterPolicy<TopK<2, Softmax>>);
static_assert(RouterPolicy<TopK<1, PreSoftmax>>);
static_assert(RouterPolicy<TopK<8, Sigmoid>>);
static_assert(RouterPolicy<TopK<6, SqrtSoftplus>>);

}  // namespace switchyard
