#pragma once
/// \file The combine weights after dropping on the device (nvcc only): a thread per token runs
/// the SY_HD combine_token / combine_token_backward of dispatch/renormalize.hpp on a DevicePlan,
/// so host and device compute the same values in the same order.

#include <cuda_runtime.h>

#include <cstdint>

#include "switchyard/dispatch/plan.cuh"
#include "switchyard/dispatch/renormalize.hpp"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/routing/top_k.cuh"

namespace switchyard {
namespace kernels {

template <class T>
struct combine_weights_body {
  const std::int64_t* route_row;
  const T* prob;
  index_t k;
  bool renormalize_kept;
  T* w;
  SY_DEVICE void operator()(index_t t) const {
    detail::combine_token(route_row + t * k, prob + t * k, k, renormalize_kept, w + t * k);
  }
};

template <class T>
struct combine_weights_backward_body {
  const std::int64_t* route_row;
  const T* prob;
  const T* dw;
  index_t k;
  bool renormalize_kept;
  T* dprob;
  SY_DEVICE void operator()(index_t t) const {
    detail::combine_token_backward(route_row + t * k, prob + t * k, dw + t * k, k, renormalize_kept,
                                   dprob + t * k);
  }
};

}  // namespace kernels

/// w [T][k] (device) from prob [T][k] (device) and the plan, as combine_weights on the host.
template <class T>
void combine_weights(exec::Cuda cuda, const DevicePlan& plan, const T* prob, T* w) {
  kernels::launch_per_token(
      kernels::combine_weights_body<T>{plan.route_row, prob, plan.top_k, plan.renormalize_kept, w},
      plan.num_tokens, cuda.stream);
}

/// d prob [T][k] from d w [T][k] (device), as combine_weights_backward on the host.
template <class T>
void combine_weights_backward(exec::Cuda cuda, const DevicePlan& plan, const T* prob, const T* dw,
                              T* dprob) {
  kernels::launch_per_token(
      kernels::combine_weights_backward_body<T>{plan.route_row, prob, dw, plan.top_k,
                                                plan.renormalize_kept, dprob},
      plan.num_tokens, cuda.stream);
}

}  // namespace switchyard
