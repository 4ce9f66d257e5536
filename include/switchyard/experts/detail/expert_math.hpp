#pragma once
/// \file Element-wise math between the two GEMMs of an expert, shared by the host loops and the
/// CUDA kernels (computed in C = float on the device, float or double on the host).

#include <cstdint>

#include "switchyard/core/macros.hpp"
#include "switchyard/experts/dropout.hpp"
#include "switchyard/experts/expert_policy.hpp"

namespace switchyard::detail {

/// Hidden activation from fc1's output: act(g) for FFN, act(g)·l for GLU (l ignored by FFN).
template <ExpertPolicy P, class C>
SY_HD inline C hidden_value(C g, C l) {
  using A = typename P::activation;
  if constexpr (P::gated) {
    return A::value(g) * l;
  } else {
    (void)l;
    return A::value(g);
  }
}

/// Gradients of hidden_value w.r.t. g and l given its upstream gradient da.
template <ExpertPolicy P, class C>
SY_HD inline void hidden_grad(C da, C g, C l, C& dg, C& dl) {
  using A = typename P::activation;
  if constexpr (P::gated) {
    C value{}, derivative{};
    value_and_derivative<A>(g, value, derivative);
    dg = da * l * derivative;
    dl = da * value;
  } else {
    (void)l;
    dg = da * A::derivative(g);
    dl = C(0);
  }
}

/// The dropout factor of hidden element (row, col): 1 when inactive, else keep·1/(1−p).
template <class C>
SY_HD inline C dropout_factor(bool active, double p, std::uint64_t seed, std::uint32_t step,
                              std::uint64_t row, std::uint64_t col) {
  if (!active) return C(1);
  return dropout_keep(seed, step, row, col, static_cast<float>(p)) ? dropout_scale<C>(p) : C(0);
}

}  // namespace switchyard::detail
