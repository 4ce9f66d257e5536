#pragma once
/// \file CUDA implementation of the grouped GEMM and of expert_forward / expert_backward
/// (experts.cuh). nvcc only.

#include <cuda_runtime.h>

#include <cstddef>
#include <span>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/experts/cuda_resources.cuh"
#include "switchyard/experts/detail/colmajor.hpp"
#include "switchyard/experts/detail/cuda_gemm.cuh"
#include "switchyard/experts/detail/expert_host.hpp"
#include "switchyard/experts/detail/expert_kernels.cuh"
#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/experts/expert_types.hpp"
#include "switchyard/experts/workspace.hpp"

namespace switchyard::detail {

/// Calls body(e, r0, n, handle, stream) for every expert with rows, round-robin over the side
/// streams, between a fork from and a join back to the caller's stream.
template <class Body>
void for_each_expert(cuda_expert_resources& res, cudaStream_t caller,
                     std::span<const index_t> offsets, Body&& body) {
  res.fork(caller);
  int k = 0;
  for (std::size_t e = 0; e + 1 < offsets.size(); ++e) {
    const index_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    const int i = k++ % res.num_streams();
    body(static_cast<index_t>(e), r0, n, res.handle(i), res.stream(i));
  }
  res.join(caller);
}

inline void check_launch() {
  SY_CUDA_TRY(cudaGetLastError());
}

/// out[rows of e] = in[rows of e]·W_eᵀ + (bias_e broadcast, or beta·out): in [R][K],
/// W [E][N][K], out [R][N], bias [E][N] or null.
template <class T>
void grouped_linear(cuda_expert_resources& res, cudaStream_t caller,
                    std::span<const index_t> offsets, const T* in, index_t K, const T* w, index_t N,
                    const T* bias, float beta, T* out) {
  constexpr cudaDataType_t dt = cuda_data_type<T>();
  const index_t E = static_cast<index_t>(offsets.size()) - 1, R = offsets.back();
  if (R == 0) return;
  const float b = bias ? 1.0f : beta;
  const index_t nu = uniform_rows(offsets);
  if (nu > 0) {
    if (bias) {
      kernels::fill_bias_rows<<<kernels::grid_for(R * N), 256, 0, caller>>>(out, R, N, bias, nu);
      check_launch();
    }
    gemm_rm(res.main_handle(caller), false, true, nu, N, K, {in, dt, K, nu * K}, {w, dt, K, N * K},
            b, out, dt, N, nu * N, E);
    return;
  }
  for_each_expert(res, caller, offsets,
                  [&](index_t e, index_t r0, index_t n, cublasHandle_t h, cudaStream_t st) {
                    if (bias) {
                      kernels::fill_bias_rows<<<kernels::grid_for(n * N), 256, 0, st>>>(
                          out + r0 * N, n, N, bias + e * N, n);
                      check_launch();
                    }
                    gemm_rm(h, false, true, n, N, K, {in + r0 * K, dt, K}, {w + e * N * K, dt, K},
                            b, out + r0 * N, dt, N);
                  });
}

template <ExpertPolicy P, class T>
void expert_forward_cuda(P p, cudaStream_t stream, cuda_expert_resources& res,
                         const expert_shape& s, const expert_weights<T>& w, matrix_view<const T> x,
                         std::span<const index_t> offsets, matrix_view<T> y,
                         std::span<std::byte> workspace, const expert_options& opt) {
  const index_t H = s.hidden, F = s.ffn_hidden, F1 = P::fc1_multiplier * F, R = x.extent(0);
  const auto layout = check_call<T>(p, s, offsets, R, workspace);
  check_expert_tensors(s, F1, w, "weights");
  SY_EXPECTS(x.extent(1) == H && y.extent(0) == R && y.extent(1) == H,
             concat("x and y must be [R][H] = [", R, "][", H, "]"));
  if (R == 0) return;
  T* pre = region<T>(workspace, layout.pre_offset);
  T* act = region<T>(workspace, layout.act_offset);
  grouped_linear<T>(res, stream, offsets, x.data_handle(), H, w.fc1.data_handle(), F1,
                    s.bias ? w.fc1_bias.data_handle() : nullptr, 0.0f, pre);
  kernels::hidden_forward<P, T>
      <<<kernels::grid_for(R * F), 256, 0, stream>>>(pre, act, R, F, opt.dropout);
  check_launch();
  grouped_linear<T>(res, stream, offsets, act, F, w.fc2.data_handle(), H,
                    s.bias ? w.fc2_bias.data_handle() : nullptr, 0.0f, y.data_handle());
}

template <ExpertPolicy P, class T, class G>
void expert_backward_cuda(P p, cudaStream_t stream, cuda_expert_resources& res,
                          const expert_shape& s, const expert_weights<T>& w, matrix_view<const T> x,
                          std::span<const index_t> offsets, matrix_view<const T> dy,
                          matrix_view<T> dx, const expert_grads<G>& g,
                          std::span<std::byte> workspace, const expert_options& opt) {
  static_assert(std::is_same_v<G, T> || std::is_same_v<G, float>,
                "weight gradients are stored in the weights' type or in float (fp32 main_grad)");
  const index_t E = s.num_experts, H = s.hidden, F = s.ffn_hidden, F1 = P::fc1_multiplier * F;
  const index_t R = x.extent(0);
  const auto layout = check_call<T>(p, s, offsets, R, workspace);
  check_expert_tensors(s, F1, w, "weights");
  check_expert_tensors(s, F1, g, "grads");
  SY_EXPECTS(x.extent(1) == H && dy.extent(0) == R && dy.extent(1) == H && dx.extent(0) == R &&
                 dx.extent(1) == H,
             concat("x, dy and dx must be [R][H] = [", R, "][", H, "]"));
  if (R == 0) return;
  constexpr cudaDataType_t dt = cuda_data_type<T>();
  constexpr cudaDataType_t gt = cuda_data_type<G>();
  T* pre = region<T>(workspace, layout.pre_offset);
  T* act = region<T>(workspace, layout.act_offset);
  const T* dyp = dy.data_handle();
  const T* xp = x.data_handle();
  const T* w1 = w.fc1.data_handle();
  const T* w2 = w.fc2.data_handle();
  G* g1 = g.fc1.data_handle();
  G* g2 = g.fc2.data_handle();
  G* gb1 = s.bias ? g.fc1_bias.data_handle() : nullptr;
  G* gb2 = s.bias ? g.fc2_bias.data_handle() : nullptr;
  const index_t nu = uniform_rows(offsets);

  // fc2: dW2_e += dy_eᵀ·a_e, db2_e += Σ dy_e, then d a_e = dy_e·W2_e overwrites a_e (same stream,
  // so the weight gradient has read a_e first).
  if (nu > 0) {
    cublasHandle_t h = res.main_handle(stream);
    gemm_rm(h, true, false, H, F, nu, {dyp, dt, H, nu * H}, {act, dt, F, nu * F}, 1.0f, g2, gt, F,
            H * F, E);
    if (gb2) {
      kernels::add_column_sums<T, G>
          <<<kernels::grid_for(E * H), 256, 0, stream>>>(gb2, dyp, E, nu, H);
      check_launch();
    }
    gemm_rm(h, false, false, nu, F, H, {dyp, dt, H, nu * H}, {w2, dt, F, H * F}, 0.0f, act, dt, F,
            nu * F, E);
  } else {
    for_each_expert(res, stream, offsets,
                    [&](index_t e, index_t r0, index_t n, cublasHandle_t h, cudaStream_t st) {
                      gemm_rm(h, true, false, H, F, n, {dyp + r0 * H, dt, H}, {act + r0 * F, dt, F},
                              1.0f, g2 + e * H * F, gt, F);
                      if (gb2) {
                        kernels::add_column_sums<T, G><<<kernels::grid_for(H), 256, 0, st>>>(
                            gb2 + e * H, dyp + r0 * H, 1, n, H);
                        check_launch();
                      }
                      gemm_rm(h, false, false, n, F, H, {dyp + r0 * H, dt, H},
                              {w2 + e * H * F, dt, F}, 0.0f, act + r0 * F, dt, F);
                    });
  }
  kernels::hidden_backward<P, T>
      <<<kernels::grid_for(R * F), 256, 0, stream>>>(pre, act, R, F, opt.dropout);
  check_launch();
  // fc1: dW1_e += dh_eᵀ·x_e, db1_e += Σ dh_e, dx_e = dh_e·W1_e.
  if (nu > 0) {
    cublasHandle_t h = res.main_handle(stream);
    gemm_rm(h, true, false, F1, H, nu, {pre, dt, F1, nu * F1}, {xp, dt, H, nu * H}, 1.0f, g1, gt, H,
            F1 * H, E);
    if (gb1) {
      kernels::add_column_sums<T, G>
          <<<kernels::grid_for(E * F1), 256, 0, stream>>>(gb1, pre, E, nu, F1);
      check_launch();
    }
    gemm_rm(h, false, false, nu, H, F1, {pre, dt, F1, nu * F1}, {w1, dt, H, F1 * H}, 0.0f,
            dx.data_handle(), dt, H, nu * H, E);
  } else {
    for_each_expert(res, stream, offsets,
                    [&](index_t e, index_t r0, index_t n, cublasHandle_t h, cudaStream_t st) {
                      gemm_rm(h, true, false, F1, H, n, {pre + r0 * F1, dt, F1},
                              {xp + r0 * H, dt, H}, 1.0f, g1 + e * F1 * H, gt, H);
                      if (gb1) {
                        kernels::add_column_sums<T, G><<<kernels::grid_for(F1), 256, 0, st>>>(
                            gb1 + e * F1, pre + r0 * F1, 1, n, F1);
                        check_launch();
                      }
                      gemm_rm(h, false, false, n, H, F1, {pre + r0 * F1, dt, F1},
                              {w1 + e * F1 * H, dt, H}, 0.0f, dx.data_handle() + r0 * H, dt, H);
                    });
  }
}

}  // namespace switchyard::detail
