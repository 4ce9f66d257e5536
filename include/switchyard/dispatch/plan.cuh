#pragma once
/// \file The dispatch plan on the device (CUB), the same plan as plan.hpp builds on the host.
/// Positions come from per-block counts and one exclusive scan, never from atomics on global
/// memory, so every run gives the same plan; inside an expert, rows keep token order. The drop
/// by probability sorts each expert's routes with a stable segmented sort (ties keep token
/// order); dropless and drop-by-position need no sort at all (position_by_topk replays
/// torch.topk's CPU choice with one thread per over-full expert). Offsets stay on the device.
/// With queue_by_slot the threads walk the routes slot-major (every first choice first).

#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "switchyard/core/workspace.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/exec/cuda.cuh"

namespace switchyard {

/// A plan in device memory (pointers into the caller's workspace). Same meaning as DispatchPlan.
struct DevicePlan {
  std::int64_t num_tokens = 0, top_k = 0, num_experts = 0;
  std::int64_t capacity = -1;  ///< -1 when unbounded
  bool padded = false;
  bool renormalize_kept = false;  ///< DispatchOptions::renormalize_kept
  std::int64_t max_rows = 0;  ///< rows the buffers hold: E·C padded, else min(T·k, E·C)
  std::int64_t* routed_per_expert = nullptr;  ///< [E]
  std::int64_t* kept_per_expert = nullptr;    ///< [E]
  std::int64_t* expert_offsets = nullptr;     ///< [E+1]; rows = expert_offsets[E]
  std::int64_t* route_row = nullptr;          ///< [T·k], -1 when dropped
  std::int64_t* row_route = nullptr;          ///< [max_rows], -1 for padding/unused rows
  int* status = nullptr;  ///< 0, or 1 + the first route whose expert id is out of range
};

namespace kernels {

constexpr int plan_chunk = 256;  // routes per block; one thread per route in the rank pass

/// The route at queue position q: q itself in token order, or (q mod T)·k + q div T when the
/// queue is slot-major (slot_major_T = T; 0 for token order).
__device__ inline std::int64_t queue_route(std::int64_t q, std::int64_t slot_major_T, int k) {
  return slot_major_T > 0 ? (q % slot_major_T) * k + q / slot_major_T : q;
}

/// Per-block expert histogram in shared memory (integer atomics: the totals are exact).
/// counts[e·B + b] = routes of expert e in block b that are kept.
template <class = void>  // a template: defined in a header included by several TUs
__global__ void plan_count(const std::int32_t* expert, const unsigned char* keep, std::int64_t n,
                           int E, int B, std::int64_t slot_major_T, int k, std::int64_t* counts,
                           int* status) {
  extern __shared__ int s_count[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) s_count[e] = 0;
  __syncthreads();
  const std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * plan_chunk + threadIdx.x;
  if (q < n) {
    const std::int64_t i = queue_route(q, slot_major_T, k);
    const int e = expert[i];
    if (e < 0 || e >= E) {
      atomicMin(status, static_cast<int>(i + 1 < 0x7fffffff ? i + 1 : 0x7fffffff));
    } else if (!keep || keep[i]) {
      atomicAdd(&s_count[e], 1);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    counts[static_cast<std::int64_t>(e) * B + blockIdx.x] = s_count[e];
  if (blockIdx.x == 0 && threadIdx.x == 0) counts[static_cast<std::int64_t>(E) * B] = 0;
}

/// Rank of each kept route among the kept routes of its expert that come before it in the
/// block (a shared-memory count over the earlier routes), plus the scanned block base.
struct rank_in_block {
  __device__ static std::int64_t rank(const std::int32_t* s_e, const unsigned char* s_k, int i,
                                      int e) {
    std::int64_t r = 0;
    for (int j = 0; j < i; ++j) r += (s_e[j] == e && s_k[j]);
    return r;
  }
};

enum class rank_mode { keep_first_c, gather, rows };

/// mode keep_first_c: keep[i] = rank_in_expert < C (drop by position);
/// mode gather: by_expert[pos] = i, keys[pos] = prob[i] (input of the segmented sort);
/// mode rows: route_row / row_route of the final plan.
/// Threads walk the queue positions (queue_route); every write goes to the route's own slot.
template <class P>
__global__ void plan_rank(const std::int32_t* expert, unsigned char* keep, std::int64_t n, int E,
                          int B, std::int64_t slot_major_T, int k, const std::int64_t* base,
                          rank_mode mode, std::int64_t C, bool padded, const P* prob,
                          std::int64_t* by_expert, P* keys, std::int64_t* route_row,
                          std::int64_t* row_route) {
  __shared__ std::int32_t s_e[plan_chunk];
  __shared__ unsigned char s_k[plan_chunk];
  const std::int64_t q = static_cast<std::int64_t>(blockIdx.x) * plan_chunk + threadIdx.x;
  const std::int64_t i = q < n ? queue_route(q, slot_major_T, k) : q;
  const bool valid = q < n && expert[i] >= 0 && expert[i] < E;
  s_e[threadIdx.x] = valid ? expert[i] : -1;
  s_k[threadIdx.x] = valid && (mode != rank_mode::rows || !keep || keep[i]) ? 1 : 0;
  __syncthreads();
  if (!valid) return;
  const int e = s_e[threadIdx.x];
  if (!s_k[threadIdx.x]) {
    if (mode == rank_mode::rows) route_row[i] = -1;
    return;
  }
  const std::int64_t expert_start = base[static_cast<std::int64_t>(e) * B];
  const std::int64_t pos = base[static_cast<std::int64_t>(e) * B + blockIdx.x] +
                           rank_in_block::rank(s_e, s_k, threadIdx.x, e);
  switch (mode) {
    case rank_mode::keep_first_c: keep[i] = (pos - expert_start) < C ? 1 : 0; break;
    case rank_mode::gather:
      by_expert[pos] = i;
      keys[pos] = prob[i];
      break;
    case rank_mode::rows: {
      const std::int64_t row = padded ? static_cast<std::int64_t>(e) * C + (pos - expert_start) : pos;
      route_row[i] = row;
      row_route[row] = i;
      break;
    }
  }
}

/// Per-expert totals and offsets from the scanned block counts.
template <class = void>
__global__ void plan_offsets(const std::int64_t* base, int E, int B, std::int64_t* per_expert,
                             std::int64_t* offsets, bool padded, std::int64_t C) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e > E) return;
  const std::int64_t start = base[static_cast<std::int64_t>(e) * B];
  if (e < E && per_expert)
    per_expert[e] = base[static_cast<std::int64_t>(e + 1) * B] - start;
  if (offsets) offsets[e] = padded ? static_cast<std::int64_t>(e) * C : start;
}

/// After the segmented sort: the first C routes of each expert (largest weights) are kept.
template <class = void>
__global__ void plan_keep_sorted(const std::int64_t* sorted_route, const std::int64_t* seg_start,
                                 int E, std::int64_t C, unsigned char* keep) {
  const int e = blockIdx.y;
  const std::int64_t begin = seg_start[e], end = seg_start[e + 1];
  for (std::int64_t p = begin + blockIdx.x * blockDim.x + threadIdx.x; p < end;
       p += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    keep[sorted_route[p]] = (p - begin) < C ? 1 : 0;
}

/// position_by_topk, step 1: the 0/1 column of every over-full expert as torch_topk keys
/// (keys[e·T + t]), and its chosen flags cleared.
template <class = void>
__global__ void plan_topk_keys(const std::int32_t* expert, std::int64_t T, int k, int E,
                               const std::int64_t* routed, std::int64_t C, std::uint32_t* keys,
                               unsigned char* chosen) {
  const std::int64_t n = T * E;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int e = static_cast<int>(idx / T);
    if (routed[e] <= C) continue;
    const std::int64_t t = idx - static_cast<std::int64_t>(e) * T;
    bool to_e = false;
    for (int j = 0; j < k; ++j) to_e = to_e || expert[t * k + j] == e;
    keys[idx] = detail::torch_topk::key(t, to_e);
    chosen[idx] = 0;
  }
}

/// Step 2: one thread per over-full expert replays torch.topk's CPU selection on its column.
template <class = void>
__global__ void plan_topk_select(std::int64_t T, int E, const std::int64_t* routed, std::int64_t C,
                                 std::uint32_t* keys, unsigned char* chosen) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E || routed[e] <= C || C <= 0) return;
  std::uint32_t* col = keys + static_cast<std::int64_t>(e) * T;
  const std::int64_t Cs = C < T ? C : T;  // C >= T only with a token routed twice (plan.hpp)
  detail::torch_topk::select(col, T, Cs);
  for (std::int64_t i = 0; i < Cs; ++i)
    if (detail::torch_topk::routed(col[i]))
      chosen[static_cast<std::int64_t>(e) * T + detail::torch_topk::token(col[i])] = 1;
}

/// Step 3: a route of an over-full expert is kept when its token was chosen and it is the
/// token's first route to that expert.
template <class = void>
__global__ void plan_topk_keep(const std::int32_t* expert, std::int64_t T, int k, int E,
                               const std::int64_t* routed, std::int64_t C,
                               const unsigned char* chosen, unsigned char* keep) {
  const std::int64_t n = T * k;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int e = expert[i];
    if (e < 0 || e >= E || routed[e] <= C) continue;
    const std::int64_t t = i / k;
    bool first = true;
    for (std::int64_t j = t * k; j < i; ++j) first = first && expert[j] != e;
    keep[i] = first && chosen[static_cast<std::int64_t>(e) * T + t] ? 1 : 0;
  }
}

}  // namespace kernels

namespace detail {

struct device_plan_buffers {
  DevicePlan plan;
  std::int64_t *counts = nullptr, *base = nullptr, *seg_start = nullptr;
  unsigned char* keep = nullptr;
  std::int64_t *by_expert = nullptr, *sorted_route = nullptr;
  void* keys = nullptr;
  void* keys_sorted = nullptr;
  void* cub_temp = nullptr;
  std::size_t cub_bytes = 0;
  std::uint32_t* topk_keys = nullptr;    ///< [E·T], position_by_topk only
  unsigned char* topk_chosen = nullptr;  ///< [E·T], position_by_topk only
};

template <class P>
device_plan_buffers carve_device_plan(workspace_carver& w, std::int64_t T, std::int64_t k,
                                      const DispatchOptions& opt, cudaStream_t stream) {
  const std::int64_t n = T * k, E = opt.num_experts;
  const int B = static_cast<int>((n + kernels::plan_chunk - 1) / kernels::plan_chunk);
  device_plan_buffers b;
  DevicePlan& p = b.plan;
  p.num_tokens = T;
  p.top_k = k;
  p.num_experts = E;
  p.capacity = opt.capacity ? *opt.capacity : -1;
  p.padded = opt.pad_to_capacity && opt.capacity.has_value();
  p.renormalize_kept = opt.renormalize_kept;
  p.max_rows = p.padded ? E * *opt.capacity
                        : (opt.capacity ? std::min(n, E * *opt.capacity) : n);
  p.routed_per_expert = w.take<std::int64_t>(static_cast<std::size_t>(E));
  p.kept_per_expert = w.take<std::int64_t>(static_cast<std::size_t>(E));
  p.expert_offsets = w.take<std::int64_t>(static_cast<std::size_t>(E) + 1);
  p.route_row = w.take<std::int64_t>(static_cast<std::size_t>(n));
  p.row_route = w.take<std::int64_t>(static_cast<std::size_t>(p.max_rows));
  p.status = w.take<int>(1);
  const std::size_t nc = static_cast<std::size_t>(E) * static_cast<std::size_t>(B) + 1;
  b.counts = w.take<std::int64_t>(nc);
  b.base = w.take<std::int64_t>(nc);
  b.keep = w.take<unsigned char>(static_cast<std::size_t>(n));
  const bool sort = opt.capacity && opt.drop_policy == DropPolicy::probs;
  if (opt.capacity && opt.drop_policy == DropPolicy::position && opt.position_by_topk) {
    b.topk_keys = w.take<std::uint32_t>(static_cast<std::size_t>(E * T));
    b.topk_chosen = w.take<unsigned char>(static_cast<std::size_t>(E * T));
  }
  std::size_t scan_bytes = 0, sort_bytes = 0;
  SY_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, b.counts, b.base,
                                            static_cast<std::int64_t>(nc), stream));
  if (sort) {
    b.seg_start = w.take<std::int64_t>(static_cast<std::size_t>(E) + 1);
    b.by_expert = w.take<std::int64_t>(static_cast<std::size_t>(n));
    b.sorted_route = w.take<std::int64_t>(static_cast<std::size_t>(n));
    b.keys = w.take<P>(static_cast<std::size_t>(n));
    b.keys_sorted = w.take<P>(static_cast<std::size_t>(n));
    SY_CUDA_TRY(cub::DeviceSegmentedSort::StableSortPairsDescending(
        nullptr, sort_bytes, static_cast<const P*>(nullptr), static_cast<P*>(nullptr),
        static_cast<const std::int64_t*>(nullptr), static_cast<std::int64_t*>(nullptr),
        static_cast<std::int64_t>(n), static_cast<std::int64_t>(E),
        static_cast<const std::int64_t*>(nullptr), static_cast<const std::int64_t*>(nullptr),
        stream));
  }
  b.cub_bytes = std::max(scan_bytes, sort_bytes);
  b.cub_temp = w.take<std::byte>(b.cub_bytes);
  return b;
}

}  // namespace detail

/// Bytes of device workspace build_plan needs for T tokens with k routes each.
template <class P>
std::size_t plan_workspace_bytes(exec::Cuda cuda, std::int64_t T, std::int64_t k,
                                 const DispatchOptions& opt) {
  workspace_carver measure;
  detail::carve_device_plan<P>(measure, T, k, opt, cuda.stream);
  return measure.bytes();
}

/// Builds the plan on the device from device arrays expert [T·k] and prob [T·k], on the
/// caller's stream. No host synchronisation: call check_device_plan() (which synchronises) to
/// turn an out-of-range expert id into an error, or read the offsets when needed.
template <class P>
DevicePlan build_plan(exec::Cuda cuda, const DispatchOptions& opt, const std::int32_t* expert,
                      const P* prob, std::int64_t T, std::int64_t k, void* workspace,
                      std::size_t workspace_bytes) {
  SY_EXPECTS(opt.num_experts >= 1 && opt.num_experts <= 8192,
             detail::concat("the device plan supports 1..8192 experts, got ", opt.num_experts));
  SY_EXPECTS(!opt.position_by_topk || (!opt.queue_by_slot && T < (std::int64_t{1} << 31)),
             "position_by_topk: token-order queue and fewer than 2^31 tokens");
  workspace_carver w(workspace, workspace_bytes);
  auto b = detail::carve_device_plan<P>(w, T, k, opt, cuda.stream);
  DevicePlan& p = b.plan;
  const std::int64_t n = T * k;
  const int E = static_cast<int>(opt.num_experts);
  const int B = static_cast<int>((n + kernels::plan_chunk - 1) / kernels::plan_chunk);
  const std::int64_t nc = static_cast<std::int64_t>(E) * B + 1;
  const cudaStream_t s = cuda.stream;
  const std::int64_t C = p.capacity;
  const std::size_t shmem = sizeof(int) * static_cast<std::size_t>(E);
  const int off_blocks = (E + 1 + 255) / 256;
  const std::int64_t slot_T = opt.queue_by_slot ? T : 0;  // queue order (DispatchOptions)
  const int ki = static_cast<int>(k);

  SY_CUDA_TRY(cudaMemsetAsync(p.status, 0x7f, sizeof(int), s));  // "no bad route" = INT_MAX-ish
  SY_CUDA_TRY(cudaMemsetAsync(p.row_route, 0xff, sizeof(std::int64_t) * p.max_rows, s));
  SY_CUDA_TRY(cudaMemsetAsync(b.keep, 1, static_cast<std::size_t>(n), s));
  auto count_and_scan = [&](const unsigned char* keep) {
    if (B > 0)
      kernels::plan_count<><<<B, kernels::plan_chunk, shmem, s>>>(expert, keep, n, E, B, slot_T, ki,
                                                                b.counts, p.status);
    else
      SY_CUDA_TRY(cudaMemsetAsync(b.counts, 0, sizeof(std::int64_t) * nc, s));
    SY_CUDA_TRY(cudaGetLastError());
    std::size_t bytes = b.cub_bytes;
    SY_CUDA_TRY(cub::DeviceScan::ExclusiveSum(b.cub_temp, bytes, b.counts, b.base, nc, s));
  };
  auto launch_rank = [&](kernels::rank_mode mode) {
    if (B == 0) return;
    kernels::plan_rank<P><<<B, kernels::plan_chunk, 0, s>>>(
        expert, b.keep, n, E, B, slot_T, ki, b.base, mode, C, p.padded, prob, b.by_expert,
        static_cast<P*>(b.keys), p.route_row, p.row_route);
    SY_CUDA_TRY(cudaGetLastError());
  };

  // Pass 1 (capacity only): every route, to decide which survive.
  count_and_scan(nullptr);
  kernels::plan_offsets<><<<off_blocks, 256, 0, s>>>(b.base, E, B, p.routed_per_expert,
                                                   b.seg_start, false, 0);
  SY_CUDA_TRY(cudaGetLastError());
  if (opt.capacity) {
    if (opt.drop_policy == DropPolicy::position && opt.position_by_topk) {
      if (n > 0) {  // torch.topk's CPU choice per over-full expert (plan.hpp, torch_topk.hpp)
        const std::int64_t cells = T * E;
        const int grid = static_cast<int>(std::min<std::int64_t>((cells + 255) / 256, 4096));
        kernels::plan_topk_keys<><<<grid, 256, 0, s>>>(expert, T, ki, E, p.routed_per_expert, C,
                                                       b.topk_keys, b.topk_chosen);
        SY_CUDA_TRY(cudaGetLastError());
        kernels::plan_topk_select<><<<(E + 127) / 128, 128, 0, s>>>(T, E, p.routed_per_expert, C,
                                                                    b.topk_keys, b.topk_chosen);
        SY_CUDA_TRY(cudaGetLastError());
        kernels::plan_topk_keep<>
            <<<std::max(1, static_cast<int>(std::min<std::int64_t>((n + 255) / 256, 4096))), 256, 0,
               s>>>(expert, T, ki, E, p.routed_per_expert, C, b.topk_chosen, b.keep);
        SY_CUDA_TRY(cudaGetLastError());
      }
    } else if (opt.drop_policy == DropPolicy::position) {
      launch_rank(kernels::rank_mode::keep_first_c);
    } else {
      launch_rank(kernels::rank_mode::gather);
      std::size_t bytes = b.cub_bytes;
      SY_CUDA_TRY(cub::DeviceSegmentedSort::StableSortPairsDescending(
          b.cub_temp, bytes, static_cast<const P*>(b.keys), static_cast<P*>(b.keys_sorted),
          b.by_expert, b.sorted_route, n, static_cast<std::int64_t>(E), b.seg_start,
          b.seg_start + 1, s));
      if (n > 0) {
        kernels::plan_keep_sorted<><<<dim3(std::max(1, static_cast<int>(std::min<std::int64_t>(
                                             (n / E + 255) / 256, 64))),
                                         E),
                                    256, 0, s>>>(b.sorted_route, b.seg_start, E, C, b.keep);
        SY_CUDA_TRY(cudaGetLastError());
      }
    }
  }
  // Pass 2: the kept routes, in queue order inside each expert.
  count_and_scan(b.keep);
  kernels::plan_offsets<><<<off_blocks, 256, 0, s>>>(b.base, E, B, p.kept_per_expert,
                                                   p.expert_offsets, p.padded, C);
  SY_CUDA_TRY(cudaGetLastError());
  launch_rank(kernels::rank_mode::rows);
  return p;
}

/// Throws when `status` (a host copy of p.status) says a route named an expert outside [0, E).
inline void throw_if_plan_failed(int status, const DevicePlan& p) {
  if (status != 0x7f7f7f7f) {
    const std::int64_t route = status - 1;
    throw precondition_error(detail::concat("token ", route / p.top_k, " slot ", route % p.top_k,
                                            " routes to an expert outside 0..",
                                            p.num_experts - 1));
  }
}

/// Synchronises the stream and throws when a route named an expert outside [0, E).
inline void check_device_plan(exec::Cuda cuda, const DevicePlan& p) {
  int status = 0;
  SY_CUDA_TRY(cudaMemcpyAsync(&status, p.status, sizeof(int), cudaMemcpyDeviceToHost, cuda.stream));
  SY_CUDA_TRY(cudaStreamSynchronize(cuda.stream));
  throw_if_plan_failed(status, p);
}

/// Copies a device plan to a host DispatchPlan (synchronises; for tests and telemetry).
inline DispatchPlan to_host(exec::Cuda cuda, const DevicePlan& p) {
  check_device_plan(cuda, p);
  DispatchPlan h;
  h.num_tokens = p.num_tokens;
  h.top_k = p.top_k;
  h.num_experts = p.num_experts;
  if (p.capacity >= 0) h.capacity = p.capacity;
  h.padded = p.padded;
  h.renormalize_kept = p.renormalize_kept;
  const auto E = static_cast<std::size_t>(p.num_experts);
  auto copy = [&](std::vector<std::int64_t>& dst, const std::int64_t* src, std::size_t count) {
    dst.resize(count);
    if (count)
      SY_CUDA_TRY(cudaMemcpyAsync(dst.data(), src, sizeof(std::int64_t) * count,
                                  cudaMemcpyDeviceToHost, cuda.stream));
  };
  copy(h.routed_per_expert, p.routed_per_expert, E);
  copy(h.kept_per_expert, p.kept_per_expert, E);
  copy(h.expert_offsets, p.expert_offsets, E + 1);
  copy(h.route_row, p.route_row, static_cast<std::size_t>(p.num_tokens * p.top_k));
  SY_CUDA_TRY(cudaStreamSynchronize(cuda.stream));
  copy(h.row_route, p.row_route, static_cast<std::size_t>(h.expert_offsets.back()));
  SY_CUDA_TRY(cudaStreamSynchronize(cuda.stream));
  std::int64_t kept = 0;
  for (auto c : h.kept_per_expert) kept += c;
  h.dropped = p.num_tokens * p.top_k - kept;
  return h;
}

}  // namespace switchyard
