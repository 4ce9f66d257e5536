#pragma once
/// \file The router linear layer z = x·W_rᵀ (+ b_r) (REFERENCE §1) and its backward (§8), and
/// input jitter (§1). Host backend: float or double, accumulated in the compute type of T, through
/// CBLAS when the build has it (switchyard::blas), else loops parallel over rows
/// (routing/router_linear.cuh takes fp32/bf16/fp16 input on the device, fp32 accumulation).

#include <cstdint>

#include "switchyard/core/error.hpp"
#include "switchyard/core/macros.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/core/philox.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/exec/host_blas.hpp"
#include "switchyard/exec/parallel.hpp"

namespace switchyard {

/// logits [T][E] = x [T][H] · weight [E][H]ᵀ + bias [E] (bias may be empty: data_handle null).
template <class T>
void router_linear_forward(exec::Host, matrix_view<const T> x, matrix_view<const T> weight,
                           vector_view<const T> bias, matrix_view<T> logits) {
  const index_t Tn = x.extent(0), H = x.extent(1), E = weight.extent(0);
  SY_EXPECTS(weight.extent(1) == H && logits.extent(0) == Tn && logits.extent(1) == E,
             detail::concat("router_linear_forward: x [", Tn, "][", H, "], weight [", E, "][",
                            weight.extent(1), "], logits [", logits.extent(0), "][",
                            logits.extent(1), "] do not match"));
  const bool has_bias = bias.data_handle() != nullptr;
  SY_EXPECTS(!has_bias || bias.extent(0) == E, "router_linear_forward: bias must have E entries");
  T* z = logits.data_handle();
  if (has_bias)
    exec::parallel_for(Tn, E, [&](index_t t) {
      for (index_t e = 0; e < E; ++e) z[t * E + e] = bias(e);
    });
  detail::row_major_gemm<T>(true, false, true, Tn, E, H, T(1), x.data_handle(), H,
                            weight.data_handle(), H, has_bias ? T(1) : T(0), z, E);
}

/// dx [T][H] = dz·W_r, dweight [E][H] = dzᵀ·x, dbias [E] = Σ_t dz (dbias may be empty).
/// Every output is overwritten.
template <class T>
void router_linear_backward(exec::Host, matrix_view<const T> x, matrix_view<const T> weight,
                            matrix_view<const T> dlogits, matrix_view<T> dx,
                            matrix_view<T> dweight, vector_view<T> dbias) {
  const index_t Tn = x.extent(0), H = x.extent(1), E = weight.extent(0);
  SY_EXPECTS(dlogits.extent(0) == Tn && dlogits.extent(1) == E && dx.extent(0) == Tn &&
                 dx.extent(1) == H && dweight.extent(0) == E && dweight.extent(1) == H,
             "router_linear_backward: shapes of dlogits, dx or dweight do not match x and weight");
  const T* dz = dlogits.data_handle();
  detail::row_major_gemm<T>(true, false, false, Tn, H, E, T(1), dz, E, weight.data_handle(), H,
                            T(0), dx.data_handle(), H);
  detail::row_major_gemm<T>(true, true, false, E, H, Tn, T(1), dz, E, x.data_handle(), H, T(0),
                            dweight.data_handle(), H);
  if (dbias.data_handle() != nullptr) {
    SY_EXPECTS(dbias.extent(0) == E, "router_linear_backward: dbias must have E entries");
    for (index_t e = 0; e < E; ++e) {
      T acc = T(0);
      for (index_t t = 0; t < Tn; ++t) acc += dlogits(t, e);
      dbias(e) = acc;
    }
  }
}

/// Where jitter draws come from: philox_uniform(seed, step, token_offset + t, column).
struct JitterParams {
  double eps = 0.0;
  std::uint64_t seed = 0;
  std::uint32_t step = 0;
  std::uint32_t token_offset = 0;  ///< global index of row 0 (e.g. rank · T)
};

/// Factor u ~ U(1-eps, 1+eps) of element (t, h), identical on host and device (REFERENCE §1).
SY_HD inline float jitter_factor(const JitterParams& j, index_t t, index_t h) {
  const float u = philox_uniform(j.seed, j.step, j.token_offset + static_cast<std::uint32_t>(t),
                                 static_cast<std::uint32_t>(h));
  const float eps = static_cast<float>(j.eps);
  return (1.0f - eps) + 2.0f * eps * u;
}

/// The router's part of dx for one element: g = d(router input) times d(x·u)/dx = u, recovered
/// as x_router / x (1 without jitter, and where x is 0). Shared by the host and device layers.
template <class T>
SY_HD inline T router_input_grad(T g, T x, const T* x_router_elem) {
  return x_router_elem && x != T(0) ? g * (*x_router_elem / x) : g;
}

/// x ← x ⊙ u (training only). The caller keeps the jittered x for the router's backward.
template <class T>
void apply_input_jitter(exec::Host, matrix_view<T> x, const JitterParams& j) {
  SY_EXPECTS(j.eps >= 0 && j.eps < 1, detail::concat("input jitter eps = ", j.eps,
                                                     " must be in [0, 1)"));
  if (j.eps == 0) return;
  exec::parallel_for(x.extent(0), 16 * x.extent(1), [&](index_t t) {
    for (index_t h = 0; h < x.extent(1); ++h)
      x(t, h) = static_cast<T>(x(t, h) * static_cast<T>(jitter_factor(j, t, h)));
  });
}

}  // namespace switchyard
