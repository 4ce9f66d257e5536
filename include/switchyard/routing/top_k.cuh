#pragma once
/// \file CUDA kernels of TopK<K, Score> (nvcc only). Two forward paths:
///  - a warp (or sub-warp of E lanes when E < 32) per token for power-of-two E up to 1024
///    without groups: the logits of a token sit in registers (E/32 per lane) and the k winners
///    come from k butterfly arg-max reductions (ties to the lower index, as on the host);
///  - a thread per token calling the same SY_HD route_token as the host loop, for any E and
///    for group-limited routing.
/// Backward runs the SY_HD route_token_backward per token. Every call takes the caller's stream;
/// NaN/Inf logits set a device status word (the smallest bad token index) that
/// check_routing_status turns into numeric_error.

#include <cuda_runtime.h>

#include <cstdint>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/routing/detail/token_math.hpp"
#include "switchyard/routing/top_k.hpp"

namespace switchyard {

/// Value of the status word while every logit is finite.
inline constexpr unsigned long long routing_status_ok = ~0ull;

namespace kernels {

/// Sets *status to the smallest token index whose row holds a non-finite value.
SY_DEVICE inline void report_bad_token(unsigned long long* status, index_t t) {
  if (status) atomicMin(status, static_cast<unsigned long long>(t));
}

template <class Body>
__global__ void for_each_token(Body body, index_t n) {
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n) body(t);
}

template <class Body>
void launch_per_token(Body body, index_t n, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int block = 128;
  for_each_token<<<static_cast<unsigned>((n + block - 1) / block), block, 0, stream>>>(body, n);
  SY_CUDA_TRY(cudaGetLastError());
}

/// Thread-per-token forward: the host's route_token, verbatim.
template <int K, class Score>
struct route_token_body {
  detail::route_args<float> a;
  const float* z;
  std::int32_t* idx;
  float* prob;
  unsigned long long* status;
  SY_DEVICE void operator()(index_t t) const {
    const float* row = z + t * a.num_experts;
    for (index_t e = 0; e < a.num_experts; ++e)
      if (!math::isfinite(row[e])) {
        report_bad_token(status, t);
        break;
      }
    detail::route_token<K, Score>(row, a, idx + t * K, prob + t * K);
  }
};

/// Thread-per-token backward.
template <int K, class Score>
struct route_token_backward_body {
  detail::route_args<float> a;
  const float* z;
  const std::int32_t* idx;
  const float* dprob;
  float* dz;
  SY_DEVICE void operator()(index_t t) const {
    detail::route_token_backward<K, Score>(z + t * a.num_experts, a, idx + t * K, dprob + t * K,
                                           dz + t * a.num_experts);
  }
};

/// One candidate of the warp arg-max: selection value, expert, logit.
struct candidate {
  float v;
  int i;
  float z;
};

/// a beats b: larger value, then lower index; index -1 marks "no candidate".
SY_DEVICE inline bool beats(const candidate& a, const candidate& b) {
  if (a.i < 0) return false;
  if (b.i < 0) return true;
  return a.v > b.v || (a.v == b.v && a.i < b.i);
}

template <int Lanes>
SY_DEVICE inline candidate warp_argmax(candidate c) {
#pragma unroll
  for (int off = Lanes / 2; off > 0; off /= 2) {
    candidate o;
    o.v = __shfl_xor_sync(0xffffffffu, c.v, off, Lanes);
    o.i = __shfl_xor_sync(0xffffffffu, c.i, off, Lanes);
    o.z = __shfl_xor_sync(0xffffffffu, c.z, off, Lanes);
    if (beats(o, c)) c = o;
  }
  return c;
}

template <int Lanes>
SY_DEVICE inline float warp_sum(float x) {
#pragma unroll
  for (int off = Lanes / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off, Lanes);
  return x;
}

/// Warp (Lanes = 32) or sub-warp (Lanes = E < 32) per token; E = Lanes · Vpt experts, lane l
/// holds experts l, l + Lanes, ... Selection values match the host's: z for top-k-first and
/// pre-softmax (softmax is monotone in z, so the same experts win), s + β for the sigmoid family.
template <int K, class Score, int Lanes, int Vpt>
__global__ void __launch_bounds__(128)
    route_warp_kernel(detail::route_args<float> a, const float* __restrict__ z, index_t T,
                      std::int32_t* __restrict__ idx, float* __restrict__ prob,
                      unsigned long long* status) {
  constexpr int E = Lanes * Vpt;
  const int lane = static_cast<int>(threadIdx.x) % Lanes;
  const index_t t = (static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x) / Lanes;
  const bool valid = t < T;
  float zl[Vpt], sel[Vpt];
  bool taken[Vpt];
  bool finite = true;
#pragma unroll
  for (int j = 0; j < Vpt; ++j) {
    const int e = lane + j * Lanes;
    zl[j] = valid ? z[t * E + e] : 0.0f;
    finite = finite && math::isfinite(zl[j]);
    if constexpr (is_softmax_score<Score>) {
      sel[j] = zl[j];
    } else {
      const float s = detail::family_score<Score>(zl[j]);
      sel[j] = a.expert_bias ? s + a.expert_bias[e] : s;
    }
    taken[j] = false;
  }
  if (valid && !finite) report_bad_token(status, t);
  candidate win[K];
#pragma unroll
  for (int r = 0; r < K; ++r) {
    candidate c{0.0f, -1, 0.0f};
#pragma unroll
    for (int j = 0; j < Vpt; ++j) {
      const candidate o{sel[j], lane + j * Lanes, zl[j]};
      if (!taken[j] && beats(o, c)) c = o;
    }
    win[r] = warp_argmax<Lanes>(c);
#pragma unroll
    for (int j = 0; j < Vpt; ++j)
      if (win[r].i == lane + j * Lanes) taken[j] = true;
  }
  float w[K];
  if constexpr (std::is_same_v<Score, Softmax>) {
    float sum = 0.0f;
#pragma unroll
    for (int r = 0; r < K; ++r) sum += math::exp(win[r].z - win[0].z);
#pragma unroll
    for (int r = 0; r < K; ++r) w[r] = math::exp(win[r].z - win[0].z) / sum;
  } else if constexpr (std::is_same_v<Score, PreSoftmax>) {
    // Without groups the first winner is the row maximum.
    float part = 0.0f;
#pragma unroll
    for (int j = 0; j < Vpt; ++j) part += math::exp(zl[j] - win[0].z);
    const float sum = warp_sum<Lanes>(part);
#pragma unroll
    for (int r = 0; r < K; ++r) w[r] = math::exp(win[r].z - win[0].z) / sum;
  } else {
    float s[K];
    float sum = 0.0f;
#pragma unroll
    for (int r = 0; r < K; ++r) {
      s[r] = detail::family_score<Score>(win[r].z);
      sum += s[r];
    }
    const float norm = K > 1 ? sum + static_cast<float>(detail::sigmoid_norm_eps) : 1.0f;
#pragma unroll
    for (int r = 0; r < K; ++r) w[r] = s[r] / norm;
  }
  if (valid && lane == 0) {
#pragma unroll
    for (int r = 0; r < K; ++r) {
      idx[t * K + r] = win[r].i;
      prob[t * K + r] = a.scaling * w[r];
    }
  }
}

template <int K, class Score, int Lanes, int Vpt>
void launch_route_warp(const detail::route_args<float>& a, const float* z, index_t T,
                       std::int32_t* idx, float* prob, unsigned long long* status,
                       cudaStream_t stream) {
  constexpr int block = 128;
  const index_t threads = T * Lanes;
  route_warp_kernel<K, Score, Lanes, Vpt>
      <<<static_cast<unsigned>((threads + block - 1) / block), block, 0, stream>>>(a, z, T, idx,
                                                                                 prob, status);
  SY_CUDA_TRY(cudaGetLastError());
}

}  // namespace kernels

/// True when the warp-per-token kernel handles this call: E a power of two in [K, 1024] and no
/// group limit. Otherwise the thread-per-token kernel runs.
inline bool top_k_uses_warp_kernel(index_t E, int num_groups) {
  return num_groups <= 1 && E >= 1 && E <= 1024 && (E & (E - 1)) == 0;
}

/// Forward of TopK<K, Score> on the device. logits [T][E], topk_indices [T][K], topk_probs [T][K]
/// and `status` (one word, set to routing_status_ok before the call, e.g. by
/// reset_routing_status) are device memory; a.expert_bias, when set, points to device memory.
template <int K, ScoreTag Score>
void top_k_forward(exec::Cuda cuda, const detail::route_args<float>& a,
                   matrix_view<const float> logits, matrix_view<std::int32_t> topk_indices,
                   matrix_view<float> topk_probs, unsigned long long* status) {
  const index_t T = logits.extent(0), E = logits.extent(1);
  SY_EXPECTS(E == a.num_experts && E >= K && topk_indices.extent(0) == T && topk_indices.extent(1) == K &&
                 topk_probs.extent(0) == T && topk_probs.extent(1) == K,
             detail::concat("top_k_forward: logits [", T, "][", E, "] need outputs [", T, "][", K,
                            "] and ", a.num_experts, " experts"));
  if (T == 0) return;
  const float* z = logits.data_handle();
  std::int32_t* idx = topk_indices.data_handle();
  float* prob = topk_probs.data_handle();
  if (top_k_uses_warp_kernel(E, a.num_groups)) {
    switch (E) {
#define SY_ROUTE_WARP_CASE(e, lanes)                                                            \
  case e:                                                                                       \
    kernels::launch_route_warp<K, Score, lanes, e / lanes>(a, z, T, idx, prob, status,          \
                                                           cuda.stream);                        \
    return;
      SY_ROUTE_WARP_CASE(1, 1)
      SY_ROUTE_WARP_CASE(2, 2)
      SY_ROUTE_WARP_CASE(4, 4)
      SY_ROUTE_WARP_CASE(8, 8)
      SY_ROUTE_WARP_CASE(16, 16)
      SY_ROUTE_WARP_CASE(32, 32)
      SY_ROUTE_WARP_CASE(64, 32)
      SY_ROUTE_WARP_CASE(128, 32)
      SY_ROUTE_WARP_CASE(256, 32)
      SY_ROUTE_WARP_CASE(512, 32)
      SY_ROUTE_WARP_CASE(1024, 32)
#undef SY_ROUTE_WARP_CASE
      default: break;
    }
  }
  kernels::launch_per_token(kernels::route_token_body<K, Score>{a, z, idx, prob, status}, T,
                            cuda.stream);
}

/// Backward of TopK<K, Score> on the device (routing gradient only; add the losses with
/// losses_backward from routing/losses.cuh). dlogits [T][E] is overwritten.
template <int K, ScoreTag Score>
void top_k_backward(exec::Cuda cuda, const detail::route_args<float>& a,
                    matrix_view<const float> logits, matrix_view<const std::int32_t> topk_indices,
                    matrix_view<const float> dprob, matrix_view<float> dlogits) {
  const index_t T = logits.extent(0);
  SY_EXPECTS(logits.extent(1) == a.num_experts && topk_indices.extent(0) == T &&
                 topk_indices.extent(1) == K && dprob.extent(0) == T && dprob.extent(1) == K &&
                 dlogits.extent(0) == T && dlogits.extent(1) == a.num_experts,
             "top_k_backward: shapes of logits, indices, dprob and dlogits do not match");
  kernels::launch_per_token(
      kernels::route_token_backward_body<K, Score>{a, logits.data_handle(),
                                                   topk_indices.data_handle(),
                                                   dprob.data_handle(), dlogits.data_handle()},
      T, cuda.stream);
}

/// Sets the status word to routing_status_ok (asynchronously, on the caller's stream).
inline void reset_routing_status(exec::Cuda cuda, unsigned long long* status) {
  SY_CUDA_TRY(cudaMemsetAsync(status, 0xff, sizeof(unsigned long long), cuda.stream));
}

/// Throws numeric_error naming the first token with NaN/Inf logits when `status` (a host copy
/// of the status word) says so.
inline void throw_if_routing_failed(unsigned long long status) {
  if (status != routing_status_ok)
    throw numeric_error(detail::concat("router logits of token ", status, " are not finite"));
}

/// Waits for the stream and throws numeric_error naming the first token with NaN/Inf logits.
inline void check_routing_status(exec::Cuda cuda, const unsigned long long* status) {
  unsigned long long h = routing_status_ok;
  SY_CUDA_TRY(cudaMemcpyAsync(&h, status, sizeof(h), cudaMemcpyDeviceToHost, cuda.stream));
  SY_CUDA_TRY(cudaStreamSynchronize(cuda.stream));
  throw_if_routing_failed(h);
}

}  // namespace switchyard
