#pragma once
/// \file The RouterPolicy concept: what MoELayer needs of a router (CONVENTIONS, "Concepts").

#include <concepts>

#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/routing/routing_types.hpp"

namespace switchyard {

/// Tag a router opts in with: `using policy_kind = router_tag;`.
struct router_tag {};

/// A router: opts in with router_tag, has a compile-time k, and runs forward (logits [T][E] ->
/// Routing) and backward (d prob [T][k] -> d logits [T][E]) on the host in float and double.
template <class R>
concept RouterPolicy =
    std::same_as<typename R::policy_kind, router_tag> && std::copyable<R> &&
    requires(const R& r, matrix_view<const float> zf, matrix_view<const double> zd,
             const Routing<float>& rf, const Routing<double>& rd, matrix_view<float> df,
             matrix_view<double> dd, RouteContext ctx) {
      { R::k } -> std::convertible_to<int>;
      { r.num_experts() } -> std::convertible_to<index_t>;
      { r.forward(exec::Host{}, zf, ctx) } -> std::same_as<Routing<float>>;
      { r.forward(exec::Host{}, zd, ctx) } -> std::same_as<Routing<double>>;
      r.backward(exec::Host{}, rf, zf, df);
      r.backward(exec::Host{}, rd, zd, dd);
    };

}  // namespace switchyard
