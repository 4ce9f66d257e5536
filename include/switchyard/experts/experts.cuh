#pragma once
/// \file CUDA overloads of grouped_gemm, expert_forward and expert_backward (exec::Cuda): cuBLAS
/// with fp32 accumulation (CUBLAS_COMPUTE_32F) over float, __nv_bfloat16 or __half storage;
/// per-expert GEMMs round-robin over the side streams of a cuda_expert_resources (forked from and
/// joined back to the caller's stream with events), or one strided-batched GEMM when every expert
/// has the same row count (pad to capacity). Element-wise work runs on the caller's stream.
/// All pointers in the views and the workspace are device memory; `offsets` is a HOST array
/// (cuBLAS takes the per-expert sizes on the host). nvcc only.

#include <cstddef>
#include <span>
#include <type_traits>

#include "switchyard/exec/cuda.cuh"
#include "switchyard/experts/cuda_resources.cuh"
#include "switchyard/experts/detail/expert_cuda.cuh"
#include "switchyard/experts/experts.hpp"

namespace switchyard {

/// c[rows of e] = a[rows of e]·b[e]ᵀ + beta·c[rows of e]; shapes as the host overload.
template <class T>
void grouped_gemm(exec::Cuda cu, cuda_expert_resources& res, std::span<const index_t> offsets,
                  std::type_identity_t<matrix_view<const T>> a,
                  std::type_identity_t<tensor3_view<const T>> b, matrix_view<T> c,
                  float beta = 0.0f) {
  const index_t E = b.extent(0), N = b.extent(1), K = b.extent(2);
  check_expert_offsets(offsets, E, a.extent(0));
  SY_EXPECTS(a.extent(1) == K && c.extent(0) == a.extent(0) && c.extent(1) == N,
             "grouped_gemm: want a [R][K], b [E][N][K], c [R][N]");
  detail::grouped_linear<T>(res, cu.stream, offsets, a.data_handle(), K, b.data_handle(), N,
                            nullptr, beta, c.data_handle());
}

/// Expert forward on the device; same contract as the host overload (experts.hpp).
template <ExpertPolicy P, class T>
void expert_forward(P p, exec::Cuda cu, cuda_expert_resources& res, const expert_shape& s,
                    const expert_weights<T>& w, std::type_identity_t<matrix_view<const T>> x,
                    std::span<const index_t> offsets, matrix_view<T> y,
                    std::span<std::byte> workspace, const expert_options& opt = {}) {
  detail::expert_forward_cuda(p, cu.stream, res, s, w, x, offsets, y, workspace, opt);
}

/// Expert backward on the device: dx overwritten, grads accumulated (+=). G, the gradient
/// storage, is T or float (an fp32 main_grad beside bf16/fp16 weights).
template <ExpertPolicy P, class T, class G>
void expert_backward(P p, exec::Cuda cu, cuda_expert_resources& res, const expert_shape& s,
                     const expert_weights<T>& w, std::type_identity_t<matrix_view<const T>> x,
                     std::span<const index_t> offsets,
                     std::type_identity_t<matrix_view<const T>> dy, matrix_view<T> dx,
                     const expert_grads<G>& grads, std::span<std::byte> workspace,
                     const expert_options& opt = {}) {
  detail::expert_backward_cuda(p, cu.stream, res, s, w, x, offsets, dy, dx, grads, workspace, opt);
}

}  // namespace switchyard
