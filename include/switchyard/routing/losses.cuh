#pragma once
/// \file Losses on the device (nvcc only): the balance losses (aux, sequence aux, global aux)
/// and the z-loss of REFERENCE §5, forward values and backward gradients (§8). Deterministic:
/// column sums are fixed-order block reductions, counts are integers, no floating-point atomics.
/// Memory follows the two-phase pattern: losses_workspace_bytes, then the caller's buffer.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/routing/detail/token_math.hpp"
#include "switchyard/routing/routing_types.hpp"
#include "switchyard/routing/top_k.cuh"

namespace switchyard {

/// Device accumulator of the global aux loss: count_sum [E] doubles in device memory, zeroed by
/// the caller at each global batch (with micro_batches = 0); losses_forward adds each
/// micro-batch's counts on the device and increments micro_batches, without a host round trip.
struct DeviceGlobalAux {
  double* count_sum = nullptr;
  std::int64_t micro_batches = 0;
};

/// The reduction group of the losses (REFERENCE §5) when the batch is split over data-parallel
/// ranks: the count map and the token count are the group's, so the per-rank loss terms add up
/// to the loss of the group's whole batch (as the host's RouteContext::group_sum).
struct DeviceLossGroup {
  /// Sums `n` doubles in device memory over the group, in place, ordered on the stream of the
  /// losses call (e.g. an NCCL all-reduce). Collective: every rank calls it the same number of
  /// times, also with no tokens.
  std::function<void(double* device_values, std::int64_t n)> sum;
  double tokens = 0;     ///< Σ T over the group (aux, global aux and z-loss denominators)
  double sequences = 0;  ///< Σ T / sequence_length over the group (seq_aux_loss)
};

namespace detail {

inline std::size_t align256(std::size_t n) { return (n + 255) / 256 * 256; }

inline index_t loss_sequences(const BalanceLoss& bl, const LossParams& p, index_t T) {
  if (bl.type != LoadBalancingType::seq_aux_loss) return 1;
  SY_EXPECTS(p.sequence_length > 0 && T % p.sequence_length == 0,
             concat("seq_aux_loss: ", T, " tokens are not a whole number of sequences of length ",
                    p.sequence_length));
  return T / p.sequence_length;
}

/// Pointers into the losses workspace.
struct loss_workspace {
  std::int32_t* count_map = nullptr;  // [T][K]
  aux_row<float>* stats = nullptr;    // [T]
  float* lse = nullptr;               // [T]
  struct balance {
    index_t num_sequences = 1;
    double* qsum = nullptr;  // [B][E]
    double* cnt = nullptr;   // [B][E]
    float* w = nullptr;      // [B][E]
  };
  std::vector<balance> terms;
  std::size_t bytes = 0;
};

inline loss_workspace carve_losses(void* base, index_t T, index_t E, int K, const LossParams& p) {
  loss_workspace ws;
  auto* b = static_cast<unsigned char*>(base);
  std::size_t off = 0;
  const auto take = [&](std::size_t n) {
    unsigned char* ptr = b ? b + off : nullptr;
    off += align256(n);
    return ptr;
  };
  const auto uT = static_cast<std::size_t>(T), uE = static_cast<std::size_t>(E);
  ws.count_map = reinterpret_cast<std::int32_t*>(take(uT * static_cast<std::size_t>(K) * 4));
  ws.stats = reinterpret_cast<aux_row<float>*>(take(uT * sizeof(aux_row<float>)));
  ws.lse = reinterpret_cast<float*>(take(uT * sizeof(float)));
  for (const BalanceLoss& bl : p.balance) {
    loss_workspace::balance t;
    t.num_sequences = loss_sequences(bl, p, T);
    const std::size_t n = static_cast<std::size_t>(t.num_sequences) * uE;
    t.qsum = reinterpret_cast<double*>(take(n * sizeof(double)));
    t.cnt = reinterpret_cast<double*>(take(n * sizeof(double)));
    t.w = reinterpret_cast<float*>(take(n * sizeof(float)));
    ws.terms.push_back(t);
  }
  ws.bytes = off;
  return ws;
}

}  // namespace detail

namespace kernels {

/// Per token: the aux row statistics, the count map (plain top-K of q) and logsumexp.
template <int K, class Score>
struct loss_token_body {
  const float* z;
  index_t E;
  std::int32_t* count_map;
  detail::aux_row<float>* stats;
  float* lse;
  SY_DEVICE void operator()(index_t t) const {
    const float* row = z + t * E;
    const detail::aux_row<float> r = detail::aux_row_stats<Score>(row, E);
    stats[t] = r;
    detail::aux_count_topk<K, Score>(row, E, r, count_map + t * K);
    lse[t] = detail::logsumexp(row, E);
  }
};

inline constexpr int loss_block = 256;

/// Fixed-order tree reduction of one value per thread over a block of loss_block threads.
SY_DEVICE inline double block_sum(double x, double* shm) {
  shm[threadIdx.x] = x;
  __syncthreads();
  for (int s = loss_block / 2; s > 0; s /= 2) {
    if (static_cast<int>(threadIdx.x) < s) shm[threadIdx.x] += shm[threadIdx.x + s];
    __syncthreads();
  }
  const double r = shm[0];
  __syncthreads();
  return r;
}

/// Block (e, b): Σ_{t ∈ b} q[t,e] and the count of tokens of b whose count map holds e.
template <int K, class Score>
__global__ void __launch_bounds__(loss_block)
    aux_columns_kernel(const float* z, index_t T, index_t E, const std::int32_t* count_map,
                       const detail::aux_row<float>* stats, index_t num_sequences,
                       index_t sequence_length, TokenLayout layout, int counted, double* qsum,
                       double* cnt) {
  __shared__ double shm[loss_block];
  const index_t e = blockIdx.x, b = blockIdx.y;
  const index_t tokens = T / num_sequences;
  double q = 0.0, c = 0.0;
  for (index_t s = threadIdx.x; s < tokens; s += loss_block) {
    // The s-th token of sequence b in either layout.
    const index_t t = num_sequences == 1 ? s
                      : layout == TokenLayout::seq_batch ? s * num_sequences + b
                                                         : b * sequence_length + s;
    q += static_cast<double>(detail::aux_q<Score>(z + t * E, e, stats[t]));
    for (int j = 0; j < counted; ++j) c += count_map[t * K + j] == e ? 1.0 : 0.0;
  }
  q = block_sum(q, shm);
  c = block_sum(c, shm);
  if (threadIdx.x == 0) {
    qsum[b * E + e] = q;
    cnt[b * E + e] = c;
  }
}

/// One thread: weights w = scale·c (c = running mean for the global loss) and the loss value.
template <class = void>
__global__ void aux_finalize_kernel(index_t n, index_t E, double scale, double* cnt,
                                           const double* qsum, float* w, double* global_sum,
                                           double micro_batches, double* value) {
  double v = 0.0;
  for (index_t i = 0; i < n; ++i) {
    double c = cnt[i];
    if (global_sum) {
      global_sum[i % E] += c;
      c = global_sum[i % E] / micro_batches;
    }
    const double wi = scale * c;
    w[i] = static_cast<float>(wi);
    v += qsum[i] * wi;
  }
  *value = v;
}

/// One block: c_z · Σ_t lse_t² / tokens (tokens = T, or the group's tokens).
template <class = void>
__global__ void __launch_bounds__(loss_block)
    z_loss_kernel(const float* lse, index_t T, double tokens, double coeff, double* value) {
  __shared__ double shm[loss_block];
  double s = 0.0;
  for (index_t t = threadIdx.x; t < T; t += loss_block) {
    const double l = lse[t];
    s += l * l;
  }
  s = block_sum(s, shm);
  if (threadIdx.x == 0) *value = tokens > 0 ? coeff * s / tokens : 0.0;
}

/// Per token: adds the gradient of one balance loss.
template <class Score>
struct aux_gradient_body {
  const float* z;
  index_t E;
  const float* w;
  index_t num_sequences, sequence_length;
  TokenLayout layout;
  float* dz;
  SY_DEVICE void operator()(index_t t) const {
    const index_t b = detail::sequence_index(t, num_sequences, sequence_length, layout);
    detail::aux_token_gradient<Score>(z + t * E, E, w + b * E, dz + t * E);
  }
};

struct z_loss_gradient_body {
  const float* z;
  index_t E;
  float c;
  float* dz;
  SY_DEVICE void operator()(index_t t) const {
    detail::z_loss_token_gradient(z + t * E, E, c, dz + t * E);
  }
};

}  // namespace kernels

/// Device bytes losses_forward needs for T tokens, E experts and k = K.
inline std::size_t losses_workspace_bytes(index_t T, index_t E, int K, const LossParams& p) {
  return detail::carve_losses(nullptr, T, E, K, p).bytes;
}

/// Loss values of logits [T][E] (device) into `values` (device, p.balance.size() + 1 doubles:
/// each balance loss with its α, then the z-loss, 0 when off). `workspace` (device,
/// losses_workspace_bytes) keeps what losses_backward needs. `global` is required for
/// global_aux_loss. With a `group` the counts and token totals are the group's (a rank with no
/// tokens still joins every group sum); losses_backward then takes group->tokens.
template <int K, ScoreTag Score>
void losses_forward(exec::Cuda cuda, matrix_view<const float> logits, const LossParams& p,
                    void* workspace, double* values, DeviceGlobalAux* global = nullptr,
                    const DeviceLossGroup* group = nullptr) {
  const index_t T = logits.extent(0), E = logits.extent(1);
  const detail::loss_workspace ws = detail::carve_losses(workspace, T, E, K, p);
  const std::size_t n_values = p.balance.size() + 1;
  SY_CUDA_TRY(cudaMemsetAsync(values, 0, n_values * sizeof(double), cuda.stream));
  if (T == 0 && !group) return;
  const float* z = logits.data_handle();
  kernels::launch_per_token(kernels::loss_token_body<K, Score>{z, E, ws.count_map, ws.stats,
                                                               ws.lse},
                            T, cuda.stream);
  const int counted = p.aux_first_choice_only ? 1 : K;  // choices per token in c_e
  for (std::size_t i = 0; i < p.balance.size(); ++i) {
    const BalanceLoss& bl = p.balance[i];
    const auto& term = ws.terms[i];
    const index_t B = term.num_sequences;  // 0 for seq_aux_loss without tokens
    if (B > 0) {
      kernels::aux_columns_kernel<K, Score>
          <<<dim3(static_cast<unsigned>(E), static_cast<unsigned>(B)), kernels::loss_block, 0,
             cuda.stream>>>(z, T, E, ws.count_map, ws.stats, B, p.sequence_length, p.token_layout,
                            counted, term.qsum, term.cnt);
      SY_CUDA_TRY(cudaGetLastError());
    }
    // Tokens per sequence S and the number of sequences, of the group when there is one: the
    // sequence loss keeps its per-sequence counts and averages over the group's sequences;
    // the others sum the count map and the tokens over the group (Σ_t q stays local).
    double S = B > 0 ? static_cast<double>(T / B) : 0.0, sequences = static_cast<double>(B);
    if (group && bl.type == LoadBalancingType::seq_aux_loss) {
      S = static_cast<double>(p.sequence_length);
      sequences = group->sequences;
    } else if (group) {
      group->sum(term.cnt, B * E);
      S = group->tokens;
    }
    double* gsum = nullptr;
    double mb = 1.0;
    if (bl.type == LoadBalancingType::global_aux_loss) {
      SY_EXPECTS(global && global->count_sum,
                 "global_aux_loss on the device needs a DeviceGlobalAux with count_sum");
      gsum = global->count_sum;
      mb = static_cast<double>(++global->micro_batches);
    }
    // w[b][e] = α·E·c_be / (k·S²·B) (REFERENCE §5, §8); k = 1 when first choices only count.
    const double denom = static_cast<double>(counted) * S * S * sequences;
    const double scale = denom > 0 ? bl.coeff * static_cast<double>(E) / denom : 0.0;
    kernels::aux_finalize_kernel<<<1, 1, 0, cuda.stream>>>(B * E, E, scale, term.cnt, term.qsum,
                                                           term.w, gsum, mb, values + i);
    SY_CUDA_TRY(cudaGetLastError());
  }
  if (p.z_loss_coeff > 0) {
    kernels::z_loss_kernel<<<1, kernels::loss_block, 0, cuda.stream>>>(
        ws.lse, T, group ? group->tokens : static_cast<double>(T), p.z_loss_coeff,
        values + p.balance.size());
    SY_CUDA_TRY(cudaGetLastError());
  }
}

/// Adds the gradients of the losses of the last losses_forward (same logits, params and
/// workspace) to dlogits [T][E] (device). `loss_tokens`: the z-loss's token count, the group's
/// when the forward had a group (negative: T).
template <int K, ScoreTag Score>
void losses_backward(exec::Cuda cuda, matrix_view<const float> logits, const LossParams& p,
                     const void* workspace, matrix_view<float> dlogits, double loss_tokens = -1.0) {
  const index_t T = logits.extent(0), E = logits.extent(1);
  SY_EXPECTS(dlogits.extent(0) == T && dlogits.extent(1) == E,
             "losses_backward: dlogits must have the shape of logits");
  const detail::loss_workspace ws =
      detail::carve_losses(const_cast<void*>(workspace), T, E, K, p);
  for (std::size_t i = 0; i < p.balance.size(); ++i)
    kernels::launch_per_token(
        kernels::aux_gradient_body<Score>{logits.data_handle(), E, ws.terms[i].w,
                                          ws.terms[i].num_sequences, p.sequence_length,
                                          p.token_layout, dlogits.data_handle()},
        T, cuda.stream);
  const double tokens = loss_tokens < 0 ? static_cast<double>(T) : loss_tokens;
  if (p.z_loss_coeff > 0 && T > 0 && tokens > 0)
    kernels::launch_per_token(
        kernels::z_loss_gradient_body{logits.data_handle(), E,
                                      static_cast<float>(p.z_loss_coeff * 2.0 / tokens),
                                      dlogits.data_handle()},
        T, cuda.stream);
}

}  // namespace switchyard
