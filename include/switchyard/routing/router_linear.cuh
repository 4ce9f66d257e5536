#pragma once
/// \file The router linear layer on the device (nvcc only): z = x·W_rᵀ (+ b) in fp32 from fp32,
/// bf16 or fp16 x and W_r (REFERENCE §1), its backward (§8) with fp32 gradients, and input
/// jitter. A thread per output element with fp32 accumulation in a fixed order: simple and
/// deterministic (the router GEMM is E columns wide, small next to the experts).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/routing/router_linear.hpp"
#include "switchyard/routing/top_k.cuh"

namespace switchyard {
namespace kernels {

SY_DEVICE inline float to_float(float x) { return x; }
SY_DEVICE inline float to_float(__half x) { return __half2float(x); }
SY_DEVICE inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
SY_DEVICE inline T from_float(float x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16(x);
  } else {
    return x;
  }
}

template <class In>
struct router_logits_body {
  const In* x;
  const In* w;
  const float* bias;
  index_t H, E;
  float* z;
  SY_DEVICE void operator()(index_t i) const {
    const index_t t = i / E, e = i % E;
    float acc = bias ? bias[e] : 0.0f;
    for (index_t h = 0; h < H; ++h) acc += to_float(x[t * H + h]) * to_float(w[e * H + h]);
    z[i] = acc;
  }
};

template <class In>
struct router_dx_body {
  const In* w;
  const float* dz;
  index_t H, E;
  float* dx;
  SY_DEVICE void operator()(index_t i) const {
    const index_t t = i / H, h = i % H;
    float acc = 0.0f;
    for (index_t e = 0; e < E; ++e) acc += dz[t * E + e] * to_float(w[e * H + h]);
    dx[i] = acc;
  }
};

template <class In>
struct router_dw_body {
  const In* x;
  const float* dz;
  index_t T, H, E;
  float* dw;
  float* db;
  SY_DEVICE void operator()(index_t i) const {
    const index_t e = i / H, h = i % H;
    float acc = 0.0f;
    for (index_t t = 0; t < T; ++t) acc += dz[t * E + e] * to_float(x[t * H + h]);
    dw[i] = acc;
    if (db && h == 0) {
      float s = 0.0f;
      for (index_t t = 0; t < T; ++t) s += dz[t * E + e];
      db[e] = s;
    }
  }
};

template <class In>
struct jitter_body {
  In* x;
  index_t H;
  JitterParams j;
  SY_DEVICE void operator()(index_t i) const {
    x[i] = from_float<In>(to_float(x[i]) * jitter_factor(j, i / H, i % H));
  }
};

}  // namespace kernels

/// logits [T][E] (fp32) = x [T][H] · weight [E][H]ᵀ + bias [E] (bias may be null); In is float,
/// __half or __nv_bfloat16. Device memory, caller's stream.
template <class In>
void router_linear_forward(exec::Cuda cuda, matrix_view<const In> x, matrix_view<const In> weight,
                           const float* bias, matrix_view<float> logits) {
  const index_t T = x.extent(0), H = x.extent(1), E = weight.extent(0);
  SY_EXPECTS(weight.extent(1) == H && logits.extent(0) == T && logits.extent(1) == E,
             "router_linear_forward: shapes of x, weight and logits do not match");
  kernels::launch_per_token(kernels::router_logits_body<In>{x.data_handle(), weight.data_handle(),
                                                            bias, H, E, logits.data_handle()},
                            T * E, cuda.stream);
}

/// dx [T][H] = dz·W_r, dweight [E][H] = dzᵀ·x, dbias [E] = Σ_t dz (dbias may be null); fp32
/// outputs, overwritten.
template <class In>
void router_linear_backward(exec::Cuda cuda, matrix_view<const In> x, matrix_view<const In> weight,
                            matrix_view<const float> dlogits, matrix_view<float> dx,
                            matrix_view<float> dweight, float* dbias) {
  const index_t T = x.extent(0), H = x.extent(1), E = weight.extent(0);
  SY_EXPECTS(dlogits.extent(0) == T && dlogits.extent(1) == E && dx.extent(0) == T &&
                 dx.extent(1) == H && dweight.extent(0) == E && dweight.extent(1) == H,
             "router_linear_backward: shapes do not match");
  kernels::launch_per_token(kernels::router_dx_body<In>{weight.data_handle(),
                                                        dlogits.data_handle(), H, E,
                                                        dx.data_handle()},
                            T * H, cuda.stream);
  kernels::launch_per_token(kernels::router_dw_body<In>{x.data_handle(), dlogits.data_handle(), T,
                                                        H, E, dweight.data_handle(), dbias},
                            E * H, cuda.stream);
}

/// x ← x ⊙ u on the device, the same draws as apply_input_jitter on the host.
template <class In>
void apply_input_jitter(exec::Cuda cuda, matrix_view<In> x, const JitterParams& j) {
  SY_EXPECTS(j.eps >= 0 && j.eps < 1, "input jitter eps must be in [0, 1)");
  if (j.eps == 0) return;
  kernels::launch_per_token(kernels::jitter_body<In>{x.data_handle(), x.extent(1), j},
                            x.extent(0) * x.extent(1), cuda.stream);
}

}  // namespace switchyard
