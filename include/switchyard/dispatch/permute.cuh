#pragma once
/// \file permute / unpermute and their backward passes on the device, driven by a DevicePlan.
/// Rows move as 16-byte vectors when the row width allows it (H·sizeof(T) a multiple of 16 and
/// 16-byte aligned pointers), element by element otherwise. The combine accumulates in
/// storage_traits<T>::accum (fp32, or double for double).

#include <cuda_runtime.h>

#include <cstdint>

#include "switchyard/core/dtype.cuh"
#include "switchyard/dispatch/plan.cuh"
#include "switchyard/exec/cuda.cuh"

namespace switchyard {
namespace kernels {

/// VEC consecutive elements moved as one (16 bytes when VEC·sizeof(T) == 16).
template <class T, int VEC>
struct alignas(sizeof(T) * VEC) vec_t {
  T v[VEC];
};

template <class T, int VEC>
__global__ void permute_rows(const T* x, std::int64_t H, std::int64_t T_tokens, int k,
                             const std::int64_t* route_row, T* rows) {
  const std::int64_t t = blockIdx.x;
  if (t >= T_tokens) return;
  const std::int64_t nvec = H / VEC;
  const auto* src = reinterpret_cast<const vec_t<T, VEC>*>(x + t * H);
  for (std::int64_t c = threadIdx.x; c < nvec; c += blockDim.x) {
    const vec_t<T, VEC> v = src[c];  // read once, written to every copy
    for (int j = 0; j < k; ++j) {
      const std::int64_t r = route_row[t * k + j];
      if (r >= 0) reinterpret_cast<vec_t<T, VEC>*>(rows + r * H)[c] = v;
    }
  }
}

template <class T>
__global__ void zero_padding_rows(const std::int64_t* row_route, const std::int64_t* offsets,
                                  int E, std::int64_t H, T* rows) {
  const std::int64_t r = blockIdx.x;
  if (r >= offsets[E] || row_route[r] >= 0) return;
  for (std::int64_t h = threadIdx.x; h < H; h += blockDim.x) rows[r * H + h] = T(0);
}

template <class T, class P, int VEC>
__global__ void unpermute_rows(const T* rows, const P* prob, std::int64_t H, std::int64_t T_tokens,
                               int k, const std::int64_t* route_row, T* y) {
  using S = storage_traits<T>;
  using A = typename S::accum;
  const std::int64_t t = blockIdx.x;
  if (t >= T_tokens) return;
  for (std::int64_t c = threadIdx.x; c < H / VEC; c += blockDim.x) {
    A acc[VEC];
    for (int v = 0; v < VEC; ++v) acc[v] = A(0);
    for (int j = 0; j < k; ++j) {
      const std::int64_t r = route_row[t * k + j];
      if (r < 0) continue;
      const A p = static_cast<A>(prob[t * k + j]);
      const vec_t<T, VEC> in = reinterpret_cast<const vec_t<T, VEC>*>(rows + r * H)[c];
      for (int v = 0; v < VEC; ++v) acc[v] += p * S::to_acc(in.v[v]);
    }
    vec_t<T, VEC> out;
    for (int v = 0; v < VEC; ++v) out.v[v] = S::from_acc(acc[v]);
    reinterpret_cast<vec_t<T, VEC>*>(y + t * H)[c] = out;
  }
}

template <class T, int VEC>
__global__ void permute_rows_backward(const T* d_rows, std::int64_t H, std::int64_t T_tokens,
                                      int k, const std::int64_t* route_row, T* dx) {
  using S = storage_traits<T>;
  using A = typename S::accum;
  const std::int64_t t = blockIdx.x;
  if (t >= T_tokens) return;
  for (std::int64_t c = threadIdx.x; c < H / VEC; c += blockDim.x) {
    A acc[VEC];
    for (int v = 0; v < VEC; ++v) acc[v] = A(0);
    for (int j = 0; j < k; ++j) {
      const std::int64_t r = route_row[t * k + j];
      if (r < 0) continue;
      const vec_t<T, VEC> in = reinterpret_cast<const vec_t<T, VEC>*>(d_rows + r * H)[c];
      for (int v = 0; v < VEC; ++v) acc[v] += S::to_acc(in.v[v]);
    }
    vec_t<T, VEC> out;
    for (int v = 0; v < VEC; ++v) out.v[v] = S::from_acc(acc[v]);
    reinterpret_cast<vec_t<T, VEC>*>(dx + t * H)[c] = out;
  }
}

/// d_rows[r] = prob·dy[t] for the route of row r (0 for rows without a route).
template <class T, class P>
__global__ void unpermute_backward_rows(const P* prob, const T* dy, std::int64_t H, int k,
                                        const std::int64_t* row_route,
                                        const std::int64_t* offsets, int E, T* d_rows) {
  using S = storage_traits<T>;
  using A = typename S::accum;
  const std::int64_t r = blockIdx.x;
  if (r >= offsets[E]) return;
  const std::int64_t route = row_route[r];
  const A p = route >= 0 ? static_cast<A>(prob[route]) : A(0);
  const T* g = route >= 0 ? dy + (route / k) * H : nullptr;
  for (std::int64_t h = threadIdx.x; h < H; h += blockDim.x)
    d_rows[r * H + h] = route >= 0 ? S::from_acc(p * S::to_acc(g[h])) : S::from_acc(A(0));
}

/// d_prob[t,j] = <dy[t], rows[route_row[t,j]]>: one warp per route, a fixed-order reduction
/// (lane-strided partial sums, then a butterfly), so the result is the same on every run.
template <class T, class P>
__global__ void unpermute_backward_prob(const T* rows, const T* dy, std::int64_t H,
                                        std::int64_t n_routes, int k,
                                        const std::int64_t* route_row, P* d_prob) {
  using S = storage_traits<T>;
  using A = typename S::accum;
  const std::int64_t route = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / 32) +
                             threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (route >= n_routes) return;
  const std::int64_t r = route_row[route];
  A acc = A(0);
  if (r >= 0) {
    const T* a = dy + (route / k) * H;
    const T* b = rows + r * H;
    for (std::int64_t h = lane; h < H; h += 32) acc += S::to_acc(a[h]) * S::to_acc(b[h]);
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) d_prob[route] = static_cast<P>(acc);
}

}  // namespace kernels

namespace detail {
template <class T>
bool can_vectorize(std::int64_t H, const void* a, const void* b) {
  constexpr std::int64_t vec = 16 / static_cast<std::int64_t>(sizeof(T));
  return vec > 1 && H % vec == 0 && reinterpret_cast<std::uintptr_t>(a) % 16 == 0 &&
         reinterpret_cast<std::uintptr_t>(b) % 16 == 0;
}
constexpr int row_threads = 128;
}  // namespace detail

/// rows[route_row[t,j]] = x[t]; padding rows are zeroed. rows has plan.max_rows rows of H.
template <class T>
void permute(exec::Cuda cuda, const DevicePlan& plan, const T* x, std::int64_t H, T* rows) {
  const auto s = cuda.stream;
  const auto Tn = plan.num_tokens;
  const int k = static_cast<int>(plan.top_k);
  if (plan.max_rows > 0) {
    kernels::zero_padding_rows<T><<<static_cast<unsigned>(plan.max_rows), detail::row_threads, 0, s>>>(
        plan.row_route, plan.expert_offsets, static_cast<int>(plan.num_experts), H, rows);
    SY_CUDA_TRY(cudaGetLastError());
  }
  if (Tn == 0) return;
  constexpr int vec = 16 / static_cast<int>(sizeof(T));
  if (detail::can_vectorize<T>(H, x, rows))
    kernels::permute_rows<T, vec><<<static_cast<unsigned>(Tn), detail::row_threads, 0, s>>>(
        x, H, Tn, k, plan.route_row, rows);
  else
    kernels::permute_rows<T, 1><<<static_cast<unsigned>(Tn), detail::row_threads, 0, s>>>(
        x, H, Tn, k, plan.route_row, rows);
  SY_CUDA_TRY(cudaGetLastError());
}

/// y[t] = Σ_j prob[t,j] · rows[route_row[t,j]] (accumulated in fp32; 0 for fully dropped).
template <class T, class P>
void unpermute(exec::Cuda cuda, const DevicePlan& plan, const T* rows, const P* prob,
               std::int64_t H, T* y) {
  const auto Tn = plan.num_tokens;
  if (Tn == 0) return;
  const int k = static_cast<int>(plan.top_k);
  constexpr int vec = 16 / static_cast<int>(sizeof(T));
  if (detail::can_vectorize<T>(H, rows, y))
    kernels::unpermute_rows<T, P, vec><<<static_cast<unsigned>(Tn), detail::row_threads, 0,
                                         cuda.stream>>>(rows, prob, H, Tn, k, plan.route_row, y);
  else
    kernels::unpermute_rows<T, P, 1><<<static_cast<unsigned>(Tn), detail::row_threads, 0,
                                       cuda.stream>>>(rows, prob, H, Tn, k, plan.route_row, y);
  SY_CUDA_TRY(cudaGetLastError());
}

/// dx[t] = Σ_j d_rows[route_row[t,j]].
template <class T>
void permute_backward(exec::Cuda cuda, const DevicePlan& plan, const T* d_rows, std::int64_t H,
                      T* dx) {
  const auto Tn = plan.num_tokens;
  if (Tn == 0) return;
  const int k = static_cast<int>(plan.top_k);
  constexpr int vec = 16 / static_cast<int>(sizeof(T));
  if (detail::can_vectorize<T>(H, d_rows, dx))
    kernels::permute_rows_backward<T, vec><<<static_cast<unsigned>(Tn), detail::row_threads, 0,
                                             cuda.stream>>>(d_rows, H, Tn, k, plan.route_row, dx);
  else
    kernels::permute_rows_backward<T, 1><<<static_cast<unsigned>(Tn), detail::row_threads, 0,
                                           cuda.stream>>>(d_rows, H, Tn, k, plan.route_row, dx);
  SY_CUDA_TRY(cudaGetLastError());
}

/// d_rows = prob·dy per row (0 for padding rows), d_prob = <dy, row> per route (0 if dropped).
template <class T, class P>
void unpermute_backward(exec::Cuda cuda, const DevicePlan& plan, const T* rows, const P* prob,
                        const T* dy, std::int64_t H, T* d_rows, P* d_prob) {
  const int k = static_cast<int>(plan.top_k);
  const int E = static_cast<int>(plan.num_experts);
  if (plan.max_rows > 0) {
    kernels::unpermute_backward_rows<T, P><<<static_cast<unsigned>(plan.max_rows),
                                             detail::row_threads, 0, cuda.stream>>>(
        prob, dy, H, k, plan.row_route, plan.expert_offsets, E, d_rows);
    SY_CUDA_TRY(cudaGetLastError());
  }
  const std::int64_t n = plan.num_tokens * plan.top_k;
  if (n > 0) {
    constexpr int warps = 4;
    kernels::unpermute_backward_prob<T, P><<<static_cast<unsigned>((n + warps - 1) / warps),
                                             32 * warps, 0, cuda.stream>>>(
        rows, dy, H, n, k, plan.route_row, d_prob);
    SY_CUDA_TRY(cudaGetLastError());
  }
}

}  // namespace switchyard
