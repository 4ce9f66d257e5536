#pragma once
/// \file The two places where a layer depends on its policies: the router and the experts. The
/// layer body (moe_layer_core) calls them through these small interfaces, so each router and each
/// expert policy is compiled once, and a runtime config can reach any combination of them
/// (layer/make_layer.hpp) without compiling every router × dispatcher × expert product.

#include <concepts>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/experts/experts.hpp"
#include "switchyard/experts/init.hpp"
#include "switchyard/routing/losses.hpp"
#include "switchyard/routing/router_policy.hpp"
#include "switchyard/routing/sinkhorn.hpp"
#include "switchyard/routing/top_k.hpp"

namespace switchyard::detail {

template <class R>
inline constexpr bool is_sinkhorn_router = false;
template <int K>
inline constexpr bool is_sinkhorn_router<Sinkhorn<K>> = true;

/// The group sums (RouteContext::group_sum) a router's forward makes, in order: for the
/// library's routers, group_sum_lengths of their losses (compute_losses); for another router
/// policy, what its `group_sum_lengths(E)` member returns (docs/routing.md), or nullopt when it
/// has none (its sums are not known).
template <class R>
std::optional<std::vector<std::size_t>> router_group_sums(const R& r, index_t E) {
  if constexpr (requires {
                  { r.group_sum_lengths(E) } -> std::convertible_to<std::vector<std::size_t>>;
                })
    return std::vector<std::size_t>(r.group_sum_lengths(E));
  else
    return std::nullopt;
}
template <int K, ScoreTag Score>
std::optional<std::vector<std::size_t>> router_group_sums(const TopK<K, Score>& r, index_t E) {
  return group_sum_lengths(r.params().losses, E);
}
template <int K>
std::optional<std::vector<std::size_t>> router_group_sums(const Sinkhorn<K>& r, index_t E) {
  return group_sum_lengths(r.losses(), E);
}

/// Aux-loss-free balancing asked of a router without an expert bias (Sinkhorn).
[[noreturn]] inline void throw_no_expert_bias() {
  throw config_error("this router has no expert bias (aux-loss-free balancing needs TopK with a "
                     "sigmoid or sqrtsoftplus score)");
}

template <class T>
struct router_hooks {
  virtual ~router_hooks() = default;
  virtual int k() const = 0;
  virtual Routing<T> forward(matrix_view<const T> logits, const RouteContext& ctx) const = 0;
  virtual void backward(const Routing<T>& r, matrix_view<const T> dprob,
                        matrix_view<T> dlogits) const = 0;
  /// What forward passes to RouteContext::group_sum, in order (router_group_sums).
  virtual std::optional<std::vector<std::size_t>> group_sums(index_t E) const = 0;
  /// Aux-loss-free balancing: β update from the dispatched counts of a global batch.
  virtual void update_expert_bias(std::span<const std::int64_t> counts) = 0;
  virtual std::vector<double> expert_bias() const = 0;
};

template <RouterPolicy R, class T>
struct router_hooks_impl final : router_hooks<T> {
  explicit router_hooks_impl(R r) : router(std::move(r)) {}
  int k() const override { return R::k; }
  Routing<T> forward(matrix_view<const T> logits, const RouteContext& ctx) const override {
    return router.forward(exec::Host{}, logits, ctx);
  }
  void backward(const Routing<T>& r, matrix_view<const T> dprob,
                matrix_view<T> dlogits) const override {
    router.backward(exec::Host{}, r, dprob, dlogits);
  }
  std::optional<std::vector<std::size_t>> group_sums(index_t E) const override {
    return router_group_sums(router, E);
  }
  void update_expert_bias(std::span<const std::int64_t> counts) override {
    if constexpr (requires { router.update_expert_bias(counts); })
      router.update_expert_bias(counts);
    else
      throw_no_expert_bias();
  }
  std::vector<double> expert_bias() const override {
    if constexpr (requires { router.expert_bias(); })
      return router.expert_bias();
    else
      return {};
  }
  R router;
};

template <class T>
struct expert_hooks {
  virtual ~expert_hooks() = default;
  virtual int fc1_multiplier() const = 0;
  virtual std::size_t workspace_bytes(const expert_shape& s, index_t rows) const = 0;
  virtual void forward(const expert_shape& s, const expert_weights<T>& w, matrix_view<const T> x,
                       std::span<const index_t> offsets, matrix_view<T> y,
                       std::span<std::byte> ws, const expert_options& opt) const = 0;
  virtual void backward(const expert_shape& s, const expert_weights<T>& w, matrix_view<const T> x,
                        std::span<const index_t> offsets, matrix_view<const T> dy,
                        matrix_view<T> dx, const expert_grads<T>& g, std::span<std::byte> ws,
                        const expert_options& opt) const = 0;
  virtual void initialize(const expert_shape& s, const expert_init& init,
                          const expert_tensors<T>& w) const = 0;
};

template <ExpertPolicy X, class T>
struct expert_hooks_impl final : expert_hooks<T> {
  int fc1_multiplier() const override { return X::fc1_multiplier; }
  std::size_t workspace_bytes(const expert_shape& s, index_t rows) const override {
    return expert_workspace_bytes<T>(X{}, s, rows);
  }
  void forward(const expert_shape& s, const expert_weights<T>& w, matrix_view<const T> x,
               std::span<const index_t> offsets, matrix_view<T> y, std::span<std::byte> ws,
               const expert_options& opt) const override {
    expert_forward(X{}, exec::Host{}, s, w, x, offsets, y, ws, opt);
  }
  void backward(const expert_shape& s, const expert_weights<T>& w, matrix_view<const T> x,
                std::span<const index_t> offsets, matrix_view<const T> dy, matrix_view<T> dx,
                const expert_grads<T>& g, std::span<std::byte> ws,
                const expert_options& opt) const override {
    expert_backward(X{}, exec::Host{}, s, w, x, offsets, dy, dx, g, ws, opt);
  }
  void initialize(const expert_shape& s, const expert_init& init,
                  const expert_tensors<T>& w) const override {
    initialize_expert_weights(X{}, s, init, w);
  }
};

}  // namespace switchyard::detail
