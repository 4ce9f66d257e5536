#pragma once
/// \file Dispatch policies (Dropless, Capacity<DropByProbs>, Capacity<DropByPosition>), their
/// concept, and the runtime options a plan is built with (REFERENCE §4).

#include <concepts>
#include <cstdint>
#include <optional>

#include "switchyard/config/capacity.hpp"
#include "switchyard/config/config_types.hpp"
#include "switchyard/core/mdspan.hpp"

namespace switchyard {

struct dispatch_tag {};

/// Drop policy: an over-full expert keeps the routes with the largest weights; ties go to the
/// lower token index.
struct DropByProbs {
  static constexpr DropPolicy value = DropPolicy::probs;
};
/// Drop policy: an over-full expert keeps its routed tokens by position: the ones torch.topk
/// returns over its 0/1 routing column (Megatron-Core, DeepSpeed's top1gating; see
/// DispatchOptions::position_by_topk), or its first ones in queue order (DeepSpeed's top2gating
/// and topkgating).
struct DropByPosition {
  static constexpr DropPolicy value = DropPolicy::position;
};

template <class D>
concept DropPolicyType = requires {
  { D::value } -> std::convertible_to<DropPolicy>;
};

/// Every route is kept; expert e gets exactly the tokens routed to it.
struct Dropless {
  using policy_kind = dispatch_tag;
  static constexpr TokenDispatch dispatch = TokenDispatch::dropless;
  static constexpr bool has_capacity = false;
};

/// Each expert keeps at most C routes (C from the config's capacity formula); the rest are
/// dropped per the drop policy, before any communication.
template <DropPolicyType Drop>
struct Capacity {
  using policy_kind = dispatch_tag;
  using drop_policy = Drop;
  static constexpr TokenDispatch dispatch = TokenDispatch::capacity;
  static constexpr bool has_capacity = true;
};

/// A dispatch policy: tagged, and says whether it has a capacity.
template <class P>
concept DispatchPolicy = std::same_as<typename P::policy_kind, dispatch_tag> && requires {
  { P::dispatch } -> std::convertible_to<TokenDispatch>;
  { P::has_capacity } -> std::convertible_to<bool>;
};

static_assert(DispatchPolicy<Dropless>);
static_assert(DispatchPolicy<Capacity<DropByProbs>>);
static_assert(DispatchPolicy<Capacity<DropByPosition>>);

/// The numbers a dispatch plan is built with, for one rank's tokens.
struct DispatchOptions {
  std::int64_t num_experts = 0;
  std::optional<std::int64_t> capacity;  ///< rows per expert at most; none = unbounded
  DropPolicy drop_policy = DropPolicy::probs;
  bool pad_to_capacity = false;  ///< every expert gets exactly `capacity` rows
  /// Queue order of an expert's routes: false, token order (Megatron; DeepSpeed's topkgating);
  /// true, every first choice before any second choice, each in token order (DeepSpeed's
  /// top2gating). It decides which routes the position policy keeps, and the row order.
  bool queue_by_slot = false;
  /// Each token's kept weights are divided by their sum after dropping (DeepSpeed, k > 1):
  /// see combine_weights() in dispatch/renormalize.hpp.
  bool renormalize_kept = false;
  /// Which routes the position policy keeps: false, an over-full expert's first C in queue
  /// order (DeepSpeed's top2gating and topkgating: a cumsum of locations); true, the C tokens
  /// torch.topk(k = C) returns over its 0/1 routing column on the CPU (Megatron-Core's
  /// apply_router_token_dropping, DeepSpeed's top1gating): every routed token ties there, and
  /// torch's CPU order among ties is libstdc++'s (dispatch/detail/torch_topk.hpp). It is the
  /// first C in token order when 64·C <= T and another set below that. (torch on a GPU keeps the
  /// first C: docs/conformance.md.) Token-order queue only; in an over-full expert a token that
  /// routes to it in two slots (hand-made routes) counts once and keeps its first route.
  bool position_by_topk = false;
};

/// Options from a validated config for `tokens` tokens on this rank: the capacity formula's C
/// (capacity dispatch), bounded by max_expert_batch_size when set.
inline DispatchOptions dispatch_options(const Config& c, std::int64_t tokens) {
  DispatchOptions o;
  o.num_experts = c.num_experts;
  o.capacity = capacity(c, tokens);
  if (c.max_expert_batch_size)
    o.capacity = o.capacity ? std::min(*o.capacity, *c.max_expert_batch_size)
                            : *c.max_expert_batch_size;
  o.drop_policy = c.drop_policy;
  o.pad_to_capacity = c.pad_to_capacity && o.capacity.has_value();
  const bool deepspeed = c.semantics == Semantics::deepspeed;
  o.queue_by_slot = deepspeed && c.num_experts_per_token == 2;
  o.renormalize_kept = deepspeed && c.num_experts_per_token > 1;
  o.position_by_topk =
      c.token_dispatch == TokenDispatch::capacity && c.drop_policy == DropPolicy::position &&
      (!deepspeed || c.num_experts_per_token == 1) && c.position_ties == PositionTies::torch_cpu;
  return o;
}

}  // namespace switchyard
