#pragma once
/// \file Sinkhorn<K> on the device (nvcc only). The iteration of REFERENCE §3 runs inside one
/// thread block that loops until convergence or the cap and writes its iteration count to device
/// memory: no host synchronisation inside the loop (the reference syncs every iteration). Each
/// thread sums its rows and columns in the host's order; only the convergence test's mean is a
/// tree reduction.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/routing/detail/token_math.hpp"
#include "switchyard/routing/sinkhorn.hpp"
#include "switchyard/routing/top_k.cuh"

namespace switchyard {
namespace kernels {

inline constexpr int sinkhorn_block = 1024;

template <class = void>
__global__ void __launch_bounds__(sinkhorn_block)
    sinkhorn_kernel(const float* z, index_t T, index_t E, float* p, float* u, float* v, float tol,
                    int max_iterations, int* iterations) {
  __shared__ float shm[sinkhorn_block];
  const index_t tid = threadIdx.x;
  for (index_t t = tid; t < T; t += sinkhorn_block) {
    const detail::row_softmax<float> st = detail::softmax_stats(z + t * E, E);
    for (index_t e = 0; e < E; ++e) p[t * E + e] = math::exp(z[t * E + e] - st.max);
  }
  for (index_t e = tid; e < E; e += sinkhorn_block) v[e] = 1.0f;
  __syncthreads();
  const float eps = 1e-8f;
  int it = 0;
  while (it < max_iterations) {
    ++it;
    for (index_t t = tid; t < T; t += sinkhorn_block) {
      float s = 0.0f;
      for (index_t e = 0; e < E; ++e) s += v[e] * p[t * E + e];
      u[t] = (1.0f / static_cast<float>(T)) / (s + eps);
    }
    __syncthreads();
    float err = 0.0f;
    for (index_t e = tid; e < E; e += sinkhorn_block) {
      float col = 0.0f;
      for (index_t t = 0; t < T; ++t) col += u[t] * p[t * E + e];
      const float nv = (1.0f / static_cast<float>(E)) / (col + eps);
      err += math::abs(v[e] - nv);
      v[e] = nv;
    }
    shm[tid] = err;
    __syncthreads();
    for (int s = sinkhorn_block / 2; s > 0; s /= 2) {
      if (tid < s) shm[tid] += shm[tid + s];
      __syncthreads();
    }
    const bool done = shm[0] / static_cast<float>(E) <= tol;
    __syncthreads();
    if (done) break;
  }
  for (index_t t = tid; t < T; t += sinkhorn_block)
    for (index_t e = 0; e < E; ++e) p[t * E + e] = u[t] * p[t * E + e] * v[e];
  if (tid == 0) *iterations = it;
}

template <int K>
struct sinkhorn_token_body {
  const float* z;
  const float* p;
  index_t E;
  bool by_weight;
  std::int32_t* idx;
  float* prob;
  unsigned long long* status;
  SY_DEVICE void operator()(index_t t) const {
    for (index_t e = 0; e < E; ++e)
      if (!math::isfinite(z[t * E + e])) {
        report_bad_token(status, t);
        break;
      }
    detail::sinkhorn_token<K>(z + t * E, by_weight ? nullptr : p + t * E, E, by_weight,
                              idx + t * K, prob + t * K);
  }
};

template <int K>
struct sinkhorn_backward_body {
  const float* z;
  index_t E;
  const std::int32_t* idx;
  const float* g;
  float* dz;
  SY_DEVICE void operator()(index_t t) const {
    detail::sinkhorn_token_backward<K>(z + t * E, E, idx + t * K, g + t * K, dz + t * E);
  }
};

}  // namespace kernels

/// Device bytes of sinkhorn_route for T tokens and E experts: the plan P [T][E], u [T], v [E].
inline std::size_t sinkhorn_workspace_bytes(index_t T, index_t E) {
  return static_cast<std::size_t>(T * E + T + E) * sizeof(float);
}

/// The plan P [T][E] of logits z [T][E] on the device; u [T] and v [E] are device scratch and
/// *iterations (device) receives the iteration count. One launch, no host synchronisation.
inline void sinkhorn(exec::Cuda cuda, matrix_view<const float> z, matrix_view<float> p,
                     float* u, float* v, int* iterations, SinkhornParams sp = {}) {
  const index_t T = z.extent(0), E = z.extent(1);
  SY_EXPECTS(p.extent(0) == T && p.extent(1) == E, "sinkhorn: P must have the shape of z");
  if (T == 0) {
    SY_CUDA_TRY(cudaMemsetAsync(iterations, 0, sizeof(int), cuda.stream));
    return;
  }
  kernels::sinkhorn_kernel<><<<1, kernels::sinkhorn_block, 0, cuda.stream>>>(
      z.data_handle(), T, E, p.data_handle(), u, v, static_cast<float>(sp.tolerance),
      sp.max_iterations, iterations);
  SY_CUDA_TRY(cudaGetLastError());
}

/// Forward of Sinkhorn<K> on the device: selection by the plan when training, by the weights
/// otherwise; indices and weights as TopK's. `workspace` holds sinkhorn_workspace_bytes;
/// *iterations (device) gets the iteration count (0 in evaluation).
template <int K>
void sinkhorn_forward(exec::Cuda cuda, const Sinkhorn<K>& router, matrix_view<const float> logits,
                      bool training, void* workspace, matrix_view<std::int32_t> topk_indices,
                      matrix_view<float> topk_probs, int* iterations,
                      unsigned long long* status) {
  const index_t T = logits.extent(0), E = logits.extent(1);
  SY_EXPECTS(E == router.num_experts() && topk_indices.extent(0) == T &&
                 topk_indices.extent(1) == K && topk_probs.extent(0) == T &&
                 topk_probs.extent(1) == K,
             "sinkhorn_forward: shapes of logits, indices and probs do not match");
  auto* p = static_cast<float*>(workspace);
  if (training) {
    sinkhorn(cuda, logits, matrix_view<float>(p, T, E), p + T * E, p + T * E + T, iterations,
             router.sinkhorn_params());
  } else {
    SY_CUDA_TRY(cudaMemsetAsync(iterations, 0, sizeof(int), cuda.stream));
  }
  kernels::launch_per_token(
      kernels::sinkhorn_token_body<K>{logits.data_handle(), p, E, !training,
                                      topk_indices.data_handle(), topk_probs.data_handle(),
                                      status},
      T, cuda.stream);
}

/// Backward through the Sinkhorn weights on the device; dlogits [T][E] is overwritten.
template <int K>
void sinkhorn_backward(exec::Cuda cuda, matrix_view<const float> logits,
                       matrix_view<const std::int32_t> topk_indices,
                       matrix_view<const float> dprob, matrix_view<float> dlogits) {
  const index_t T = logits.extent(0), E = logits.extent(1);
  SY_EXPECTS(dlogits.extent(0) == T && dlogits.extent(1) == E && dprob.extent(0) == T &&
                 dprob.extent(1) == K && topk_indices.extent(1) == K,
             "sinkhorn_backward: shapes do not match");
  kernels::launch_per_token(
      kernels::sinkhorn_backward_body<K>{logits.data_handle(), E, topk_indices.data_handle(),
                                         dprob.data_handle(), dlogits.data_handle()},
      T, cuda.stream);
}

}  // namespace switchyard
