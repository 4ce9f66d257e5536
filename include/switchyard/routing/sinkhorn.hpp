#pragma once
/// \file Sinkhorn<K>: S-BASE routing (REFERENCE §3). Selection by the balanced plan P, weights
/// σ(z) (K = 1) or softmax(z) over all E (K > 1). Host backend here; the CUDA kernels (one block
/// that iterates without host synchronisation) are in routing/sinkhorn.cuh.

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/core/math.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/exec/parallel.hpp"
#include "switchyard/routing/detail/token_math.hpp"
#include "switchyard/routing/losses.hpp"
#include "switchyard/routing/router_policy.hpp"
#include "switchyard/routing/routing_types.hpp"
#include "switchyard/routing/score.hpp"

namespace switchyard {

/// Tolerance and iteration cap of the Sinkhorn iteration.
struct SinkhornParams {
  double tolerance = 1e-4;   ///< stop when mean_e |v_old - v| <= tolerance
  int max_iterations = 1000; ///< cap (the reference has none)
};

/// P = diag(u)·K·diag(v), K = exp(z - rowmax) (REFERENCE §3), written to p [T][E].
/// Returns the number of iterations run (max_iterations when it did not converge).
template <class T>
int sinkhorn(exec::Host, matrix_view<const T> z, matrix_view<T> p, SinkhornParams sp = {}) {
  const index_t Tn = z.extent(0), E = z.extent(1);
  SY_EXPECTS(p.extent(0) == Tn && p.extent(1) == E, "sinkhorn: P must have the shape of z");
  if (Tn == 0) return 0;
  // Rows on threads; the column sums run per column over the tokens in token order, so every
  // sum has the same order of additions for any thread count.
  exec::parallel_for(Tn, 4 * E, [&](index_t t) {
    const detail::row_softmax<T> st = detail::softmax_stats(&z(t, 0), E);
    for (index_t e = 0; e < E; ++e) p(t, e) = math::exp(z(t, e) - st.max);
  });
  std::vector<T> u(static_cast<std::size_t>(Tn), T(1)), v(static_cast<std::size_t>(E), T(1));
  std::vector<T> col(static_cast<std::size_t>(E));
  const T eps = T(1e-8);
  int it = 0;
  while (it < sp.max_iterations) {
    ++it;
    exec::parallel_for(Tn, E, [&](index_t t) {
      T s = T(0);
      for (index_t e = 0; e < E; ++e) s += v[e] * p(t, e);
      u[t] = (T(1) / static_cast<T>(Tn)) / (s + eps);
    });
    exec::parallel_for(E, Tn, [&](index_t e) {
      T c = T(0);
      for (index_t t = 0; t < Tn; ++t) c += u[t] * p(t, e);
      col[e] = c;
    });
    T err = T(0);
    for (index_t e = 0; e < E; ++e) {
      const T nv = (T(1) / static_cast<T>(E)) / (col[e] + eps);
      err += math::abs(v[e] - nv);
      v[e] = nv;
    }
    if (err / static_cast<T>(E) <= static_cast<T>(sp.tolerance)) break;
  }
  exec::parallel_for(Tn, E, [&](index_t t) {
    for (index_t e = 0; e < E; ++e) p(t, e) = u[t] * p(t, e) * v[e];
  });
  return it;
}

/// S-BASE router with K experts per token. Only the z-loss may be added (no aux loss, no
/// capacity: REFERENCE §3).
template <int K>
class Sinkhorn {
  static_assert(K >= 1 && K <= 16, "Sinkhorn: K must be between 1 and 16");

 public:
  using policy_kind = router_tag;
  static constexpr int k = K;

  explicit Sinkhorn(index_t num_experts, LossParams losses = {}, SinkhornParams sp = {})
      : num_experts_(num_experts), losses_(std::move(losses)), sp_(sp) {
    SY_EXPECTS(num_experts >= K,
               detail::concat("Sinkhorn<", K, ">: needs at least ", K, " experts, got ",
                              num_experts));
    SY_EXPECTS(losses_.balance.empty(),
               "Sinkhorn balances by itself and takes no aux loss (REFERENCE §3)");
    SY_EXPECTS(sp_.tolerance > 0 && sp_.max_iterations >= 1,
               "Sinkhorn: tolerance must be > 0 and max_iterations >= 1");
  }

  index_t num_experts() const { return num_experts_; }
  const SinkhornParams& sinkhorn_params() const { return sp_; }
  const LossParams& losses() const { return losses_; }

  template <class T>
  Routing<T> forward(exec::Host h, matrix_view<const T> logits, RouteContext ctx = {}) const {
    const index_t Tn = logits.extent(0), E = logits.extent(1);
    Routing<T> r = begin_routing<K>(logits, num_experts_, "Sinkhorn");
    std::vector<T> plan;
    if (ctx.training) {
      plan.resize(static_cast<std::size_t>(Tn * E));
      r.sinkhorn_iterations = sinkhorn(h, logits, matrix_view<T>(plan.data(), Tn, E), sp_);
    }
    route_tokens<K>(r, Tn, 1, [&](index_t t) {
      detail::sinkhorn_token<K>(&r.logits[t * E], ctx.training ? &plan[t * E] : nullptr, E,
                                !ctx.training, &r.topk_indices[t * K], &r.topk_probs[t * K]);
    });
    compute_losses<K, Softmax>(matrix_view<const T>(r.logits.data(), Tn, E), losses_, ctx, r);
    return r;
  }

  /// Gradient through the weights only (P is a constant selection), plus the z-loss.
  template <class T>
  void backward(exec::Host, const Routing<T>& r, matrix_view<const T> dprob,
                matrix_view<T> dlogits) const {
    const index_t Tn = r.num_tokens, E = r.num_experts;
    SY_EXPECTS(dprob.extent(0) == Tn && dprob.extent(1) == K && dlogits.extent(0) == Tn &&
                   dlogits.extent(1) == E,
               detail::concat("Sinkhorn::backward: expected dprob [", Tn, "][", K,
                              "] and dlogits [", Tn, "][", E, "]"));
    exec::parallel_for(Tn, E * (K + 4), [&](index_t t) {
      detail::sinkhorn_token_backward<K>(&r.logits[t * E], E, &r.topk_indices[t * K],
                                         &dprob(t, 0), &dlogits(t, 0));
    });
    add_loss_gradients<Softmax>(r, losses_, dlogits);
  }

 private:
  index_t num_experts_;
  LossParams losses_;
  SinkhornParams sp_;
};

static_assert(RouterPolicy<Sinkhorn<1>>);
static_assert(RouterPolicy<Sinkhorn<2>>);

}  // namespace switchyard
