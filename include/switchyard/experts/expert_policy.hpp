#pragma once
/// \file Expert policies FFN<Act> and GLU<Act> (REFERENCE §6), the ExpertPolicy concept, and the
/// runtime mapping from a Config's (activation, gated) to a policy type.

#include <concepts>
#include <type_traits>
#include <utility>

#include "switchyard/config/config_types.hpp"
#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/experts/activations.hpp"

namespace switchyard {

/// Tag an expert policy carries as `using policy_kind = expert_tag;`.
struct expert_tag {};

/// Expert_e(x) = W2_e · act(W1_e · x + b1_e) + b2_e. fc1 has F rows per expert.
template <ActivationFunction Act>
struct FFN {
  using policy_kind = expert_tag;
  using activation = Act;
  static constexpr bool gated = false;
  /// Rows of fc1 per expert, in units of F.
  static constexpr index_t fc1_multiplier = 1;
};

/// Expert_e(x) = W2_e · (act(W1g_e·x + b1g_e) ⊙ (W1l_e·x + b1l_e)) + b2_e. fc1 has 2F rows per
/// expert: rows [0, F) are the gate W1g (through the activation), rows [F, 2F) the linear W1l
/// (Megatron's chunk order; Hugging Face Mixtral's w1 stacked on w3). GLU<SiLU> is SwiGLU.
template <ActivationFunction Act>
struct GLU {
  using policy_kind = expert_tag;
  using activation = Act;
  static constexpr bool gated = true;
  static constexpr index_t fc1_multiplier = 2;
};

/// An expert policy: tagged with expert_tag, an ActivationFunction, whether it is gated, and the
/// fc1 row multiplier that matches it. Every policy runs on the host backend (experts.hpp).
template <class P>
concept ExpertPolicy = std::is_empty_v<P> && std::same_as<typename P::policy_kind, expert_tag> &&
    ActivationFunction<typename P::activation> && requires {
  { P::gated } -> std::convertible_to<bool>;
  { P::fc1_multiplier } -> std::convertible_to<index_t>;
} &&(P::fc1_multiplier == (P::gated ? 2 : 1));

static_assert(ExpertPolicy<FFN<GeLU>>);
static_assert(ExpertPolicy<FFN<GeLUTanh>>);
static_assert(ExpertPolicy<FFN<ReLU>>);
static_assert(ExpertPolicy<FFN<SiLU>>);
static_assert(ExpertPolicy<GLU<GeLU>>);
static_assert(ExpertPolicy<GLU<GeLUTanh>>);
static_assert(ExpertPolicy<GLU<ReLU>>);
static_assert(ExpertPolicy<GLU<SiLU>>);

/// SwiGLU, the Mixtral expert.
using SwiGLU = GLU<SiLU>;

/// Calls f(Policy{}) with the expert policy a runtime (activation, gated) pair names, so a layer
/// configured at run time reaches the compile-time policy:
///     visit_expert_policy(cfg.activation, cfg.gated, [&](auto policy) { expert_forward(policy,
///     ...); });
template <class F>
decltype(auto) visit_expert_policy(Activation act, bool gated, F&& f) {
  auto with = [&](auto a) -> decltype(auto) {
    using A = decltype(a);
    if (gated) return std::forward<F>(f)(GLU<A>{});
    return std::forward<F>(f)(FFN<A>{});
  };
  switch (act) {
    case Activation::gelu: return with(GeLU{});
    case Activation::gelu_tanh: return with(GeLUTanh{});
    case Activation::relu: return with(ReLU{});
    case Activation::silu: return with(SiLU{});
  }
  throw config_error(
      detail::concat("visit_expert_policy: unknown activation value ", static_cast<int>(act)));
}

/// The policy a Config selects (its activation and gated fields).
template <class F>
decltype(auto) visit_expert_policy(const Config& c, F&& f) {
  return visit_expert_policy(c.activation, c.gated, std::forward<F>(f));
}

}  // namespace switchyard
