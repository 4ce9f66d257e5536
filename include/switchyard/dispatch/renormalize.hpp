#pragma once
/// \file The combine weights after dropping. Megatron combines with the router's weights as they
/// are; DeepSpeed (k > 1, DispatchOptions::renormalize_kept) divides each token's kept weights by
/// their sum, clamped below at the type's epsilon as torch.clamp(min=finfo.eps) does, so a
/// token whose first choice was dropped gives its whole weight to the second. Forward and
/// backward on the host; the per-token math is SY_HD, shared with dispatch/renormalize.cuh.

#include <cstdint>

#include <cuda/std/limits>

#include "switchyard/core/error.hpp"
#include "switchyard/core/macros.hpp"
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

/// ε of the clamp: cuda::std::numeric_limits, so the same value on the host and the device.
template <class T>
SY_HD constexpr T combine_eps() {
  return cuda::std::numeric_limits<T>::epsilon();
}

/// One token's combine weights (see combine_weights): route_row, prob and w point to its k
/// entries. The math of the host loop and of the CUDA kernel (dispatch/renormalize.cuh).
template <class T>
SY_HD void combine_token(const std::int64_t* route_row, const T* prob, index_t k,
                         bool renormalize_kept, T* w) {
  const T eps = combine_eps<T>();
  T sum = T(0);
  for (index_t j = 0; j < k; ++j)
    if (route_row[j] >= 0) sum += prob[j];
  const T denom = renormalize_kept ? (sum < eps ? eps : sum) : T(1);
  for (index_t j = 0; j < k; ++j) w[j] = route_row[j] >= 0 ? prob[j] / denom : T(0);
}

/// One token's d prob from d w (see combine_weights_backward).
template <class T>
SY_HD void combine_token_backward(const std::int64_t* route_row, const T* prob, const T* dw,
                                  index_t k, bool renormalize_kept, T* dprob) {
  if (!renormalize_kept) {
    for (index_t j = 0; j < k; ++j) dprob[j] = route_row[j] >= 0 ? dw[j] : T(0);
    return;
  }
  const T eps = combine_eps<T>();
  T sum = T(0), dot = T(0);
  for (index_t j = 0; j < k; ++j)
    if (route_row[j] >= 0) sum += prob[j];
  const bool clamped = sum < eps;
  const T denom = clamped ? eps : sum;
  if (!clamped)
    for (index_t j = 0; j < k; ++j)
      if (route_row[j] >= 0) dot += dw[j] * (prob[j] / denom);
  for (index_t j = 0; j < k; ++j) dprob[j] = route_row[j] >= 0 ? (dw[j] - dot) / denom : T(0);
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
  for (index_t t = 0; t < Tn; ++t)
    detail::combine_token(&plan.route_row[static_cast<std::size_t>(t * k)], &prob(t, 0), k,
                          plan.renormalize_kept, &w(t, 0));
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
  for (index_t t = 0; t < Tn; ++t)
    detail::combine_token_backward(&plan.route_row[static_cast<std::size_t>(t * k)], &prob(t, 0),
                                   &dw(t, 0), k, plan.renormalize_kept, &dprob(t, 0));
}

}  // namespace switchyard
