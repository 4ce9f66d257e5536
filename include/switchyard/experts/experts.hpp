#pragma once
/// \file Expert forward and backward over a grouped GEMM (REFERENCE §6), host backend. The CUDA
/// overloads (exec::Cuda) are in experts.cuh. Layout, dropout and workspace: expert_types.hpp,
/// workspace.hpp, docs/experts.md.
///
///     sy::expert_shape s{E_local, H, F, /*bias=*/false};
///     std::vector<std::byte> ws(sy::expert_workspace_bytes<float>(sy::SwiGLU{}, s, R));
///     sy::expert_forward(sy::SwiGLU{}, sy::exec::Host{}, s, weights, x, offsets, y, ws);
///     sy::expert_backward(sy::SwiGLU{}, sy::exec::Host{}, s, weights, x, offsets, dy, dx, grads,
///     ws);

#include <cstddef>
#include <span>
#include <type_traits>

#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/experts/detail/expert_host.hpp"
#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/experts/expert_types.hpp"
#include "switchyard/experts/workspace.hpp"

namespace switchyard {

/// y[rows of e] = Expert_e(x[rows of e]) for every local expert e.
/// x, y: [R][H], rows grouped by expert; offsets: [E_local + 1], expert e owns rows
/// [offsets[e], offsets[e+1]) (zero rows allowed); workspace: expert_workspace_bytes<T>(p, s, R)
/// bytes, kept unchanged for expert_backward. T is float or double.
template <ExpertPolicy P, class T>
void expert_forward(P p, exec::Host, const expert_shape& s, const expert_weights<T>& w,
                    std::type_identity_t<matrix_view<const T>> x, std::span<const index_t> offsets,
                    matrix_view<T> y, std::span<std::byte> workspace,
                    const expert_options& opt = {}) {
  detail::expert_forward_host(p, s, w, x, offsets, y, workspace, opt);
}

/// Backward of expert_forward for the upstream gradient dy [R][H]: dx [R][H] is overwritten;
/// the weight (and bias) gradients in `grads` are ACCUMULATED (+=). Same x, offsets, options and
/// workspace as the forward; the workspace's saved activations are consumed. dx may be the same
/// memory as dy (dy is read only before dx is written; the layer's backward relies on it).
template <ExpertPolicy P, class T>
void expert_backward(P p, exec::Host, const expert_shape& s, const expert_weights<T>& w,
                     std::type_identity_t<matrix_view<const T>> x, std::span<const index_t> offsets,
                     std::type_identity_t<matrix_view<const T>> dy, matrix_view<T> dx,
                     const expert_grads<T>& grads, std::span<std::byte> workspace,
                     const expert_options& opt = {}) {
  detail::expert_backward_host(p, s, w, x, offsets, dy, dx, grads, workspace, opt);
}

}  // namespace switchyard
