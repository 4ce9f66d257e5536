#pragma once
/// \file CUDA kernels of the experts: they call the same SY_HD math as the host loops
/// (detail/expert_math.hpp), computing in fp32 whatever the storage type. nvcc only.

#include <cstdint>

#include "switchyard/core/mdspan.hpp"
#include "switchyard/experts/detail/cuda_gemm.cuh"
#include "switchyard/experts/detail/expert_math.hpp"
#include "switchyard/experts/expert_types.hpp"

namespace switchyard::kernels {

/// c[r][j] = bias[r / rows_per_expert][j] for r < rows: the GEMM that follows adds with beta = 1.
template <class T>
__global__ void fill_bias_rows(T* c, index_t rows, index_t cols, const T* bias,
                               index_t rows_per_expert) {
  const index_t total = rows * cols;
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t r = i / cols, j = i % cols;
    c[i] = bias[(r / rows_per_expert) * cols + j];
  }
}

/// g[e][j] += Σ over the rows of expert e of m[r][j], in row order with an fp32 sum (one thread
/// per (expert, column): deterministic, no atomics). `experts` groups of rows_per_expert rows.
template <class T, class G>
__global__ void add_column_sums(G* g, const T* m, index_t experts, index_t rows_per_expert,
                                index_t cols) {
  const index_t total = experts * cols;
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t e = i / cols, j = i % cols;
    float s = 0.0f;
    for (index_t r = e * rows_per_expert; r < (e + 1) * rows_per_expert; ++r)
      s += detail::to_float(m[r * cols + j]);
    g[i] = detail::from_float<G>(detail::to_float(g[i]) + s);
  }
}

/// a[r][j] = hidden_value(h[r][j], h[r][F + j]) · dropout factor (experts.hpp).
template <ExpertPolicy P, class T>
__global__ void hidden_forward(const T* pre, T* act, index_t rows, index_t F, expert_dropout d) {
  const index_t F1 = P::fc1_multiplier * F, total = rows * F;
  const bool drop = d.training && d.p > 0.0;  // expert_dropout::active(), host-only constexpr
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t r = i / F, j = i % F;
    const float g = detail::to_float(pre[r * F1 + j]);
    const float l = P::gated ? detail::to_float(pre[r * F1 + F + j]) : 0.0f;
    act[i] = detail::from_float<T>(detail::hidden_value<P>(g, l) *
                                   detail::dropout_factor<float>(drop, d.p, d.seed, d.step,
                                                                 d.row_offset + std::uint64_t(r),
                                                                 std::uint64_t(j)));
  }
}

/// In place: h[r][j] (and h[r][F + j] for GLU) become d h from d a (in `act`) and h.
template <ExpertPolicy P, class T>
__global__ void hidden_backward(T* pre, const T* dact, index_t rows, index_t F, expert_dropout d) {
  const index_t F1 = P::fc1_multiplier * F, total = rows * F;
  const bool drop = d.training && d.p > 0.0;  // expert_dropout::active(), host-only constexpr
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t r = i / F, j = i % F;
    const float da =
        detail::to_float(dact[i]) * detail::dropout_factor<float>(drop, d.p, d.seed, d.step,
                                                                  d.row_offset + std::uint64_t(r),
                                                                  std::uint64_t(j));
    const float g = detail::to_float(pre[r * F1 + j]);
    const float l = P::gated ? detail::to_float(pre[r * F1 + F + j]) : 0.0f;
    float dg = 0.0f, dl = 0.0f;
    detail::hidden_grad<P>(da, g, l, dg, dl);
    pre[r * F1 + j] = detail::from_float<T>(dg);
    if constexpr (P::gated) pre[r * F1 + F + j] = detail::from_float<T>(dl);
  }
}

/// Blocks for a grid-stride loop over n elements (capped: the loops stride over the rest).
inline unsigned grid_for(index_t n, unsigned block = 256) {
  const index_t b = (n + block - 1) / block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

}  // namespace switchyard::kernels
