#pragma once
/// \file The combine weights after dropping. Megatron combines with the router's weights as they
/// are; DeepSpeed (k > 1, DispatchOptions::renormalize_kept) divides each token's kept weights by
/// their sum, clamped below at the type's epsilon as torch.clamp(min=finfo.eps) does, so a
/// token whose first choice was dropped gives its whole weight to the second. Forward and
/// backward on the host.

#include <limits>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/exec/host.hpp"

namespace switchyard {

namespace detail {
inline void check_weight_shapes(const DispatchPlan& plan, index_t rows, index_t cols,
                                const char* what) {
  SY_EXPECTS(rows == plan.num_tokens && cols == plan.top_k,
             concat(what, " is [", rows, "][", cols, "], the plan has [", plan.num_tokens, "][",
                    plan.top_k, "]"));
}
}  // namespace detail

/// w [T][k]: prob where the plan keeps the route and 0 where it drops it; with
/// plan.renormalize_kept, each kept w_j = p_j / max(Σ_kept p, ε).
template <class T>
void combine_weights(exec::Host, const DispatchPlan& plan, matrix_view<const T> prob,
                     matrix_view<T> w) {
  detail::check_weight_shapes(plan, prob.extent(0), prob.extent(1), "prob");
  detail::check_weight_shapes(plan, w.extent(0), w.extent(1), "the combine weights");
  const index_t Tn = plan.num_tokens, k = plan.top_k;
  const T eps = std::numeric_limits<T>::epsilon();
  for (index_t t = 0; t < Tn; ++t) {
    T sum = T(0);
    for (index_t j = 0; j < k; ++j)
      if (plan.route_row[static_cast<std::size_t>(t * k + j)] >= 0) sum += prob(t, j);
    const T denom = plan.renormalize_kept ? (sum < eps ? eps : sum) : T(1);
    for (index_t j = 0; j < k; ++j)
      w(t, j) = plan.route_row[static_cast<std::size_t>(t * k + j)] >= 0 ? prob(t, j) / denom
                                                                         : T(0);
  }
}

/// d prob [T][k] from d w [T][k] of combine_weights (0 for dropped routes). With
/// renormalisation and Σ_kept p ≥ ε: dp_j = (dw_j − Σ_i dw_i·w_i) / Σ_kept p; below ε the clamped
/// denominator is a constant: dp_j = dw_j / ε (torch.clamp's gradient).
template <class T>
void combine_weights_backward(exec::Host, const DispatchPlan& plan, matrix_view<const T> prob,
                              matrix_view<const T> dw, matrix_view<T> dprob) {
  detail::check_weight_shapes(plan, prob.extent(0), prob.extent(1), "prob");
  detail::check_weight_shapes(plan, dw.extent(0), dw.extent(1), "d weights");
  detail::check_weight_shapes(plan, dprob.extent(0), dprob.extent(1), "d prob");
  const index_t Tn = plan.num_tokens, k = plan.top_k;
  const T eps = std::numeric_limits<T>::epsilon();
  for (index_t t = 0; t < Tn; ++t) {
    const auto kept = [&](index_t j) {
      return plan.route_row[static_cast<std::size_t>(t * k + j)] >= 0;
    };
    if (!plan.renormalize_kept) {
      for (index_t j = 0; j < k; ++j) dprob(t, j) = kept(j) ? dw(t, j) : T(0);
      continue;
    }
    T sum = T(0), dot = T(0);
    for (index_t j = 0; j < k; ++j)
      if (kept(j)) sum += prob(t, j);
    const bool clamped = sum < eps;
    const T denom = clamped ? eps : sum;
    if (!clamped)
      for (index_t j = 0; j < k; ++j)
        if (kept(j)) dot += dw(t, j) * (prob(t, j) / denom);
    for (index_t j = 0; j < k; ++j) dprob(t, j) = kept(j) ? (dw(t, j) - dot) / denom : T(0);
  }
}

}  // namespace switchyard
