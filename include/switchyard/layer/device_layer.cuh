#pragma once
/// \file The MoE layer on GPUs (nvcc only), float32: the CUDA pieces chained as the host layer
/// chains its host pieces (layer/moe_layer.hpp):
///
///   x [T,H] -> router linear -> logits -> TopK / Sinkhorn + losses -> device plan -> permute
///     -> (NCCL all_to_all_v over the EP group) -> grouped experts (cuBLAS)
///     -> (reverse all_to_all_v) -> combine weights -> unpermute -> y [T,H]
///   (+ with Megatron's shared expert: y += sigmoid(x·g) · shared(x), the grouped experts over
///   every token as one expert)
///
/// On one GPU it needs nothing but a stream. Spread over GPUs it takes the framework's NCCL
/// communicators (DeviceMoEComms: expert-parallel, dense data-parallel, expert data-parallel,
/// each an NcclComm over an ncclComm_t the framework owns) and runs every collective on the
/// stream of the call; the losses and counts are then the dense data-parallel group's, as on the
/// host. Memory: every per-call buffer comes from a stream-ordered device_memory_resource (the
/// framework's allocator, or cudaMallocAsync), so freeing never waits for the device.
///
/// Everything stays in device memory except what the host must see: one explicit
/// synchronisation per forward brings back the expert offsets (cuBLAS takes the per-expert row
/// counts on the host, and NCCL the per-peer counts), the routed and kept counts, the loss
/// values, the Sinkhorn iteration count and the two status words. With communicators, forward
/// and backward also synchronise for fail_together (a bad input on one rank is an error on every
/// rank, never a hang) and forward once more for the group's token count.
///
/// Not built here: tensor-parallel experts; bf16/fp16 storage (the kernels have it, this layer
/// is float32); CUDA-graph capture (forward synchronises).
///
/// This code has been compiled (nvcc, sm_90a) but not yet run on a GPU.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "switchyard/comm/device_communicator.cuh"
#include "switchyard/config/validate.hpp"
#include "switchyard/dispatch/dispatch_types.hpp"
#include "switchyard/dispatch/permute.cuh"
#include "switchyard/dispatch/plan.cuh"
#include "switchyard/dispatch/renormalize.cuh"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/exec/device_buffer.cuh"
#include "switchyard/exec/device_memory.cuh"
#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/layer/detail/device_hooks.cuh"
#include "switchyard/layer/detail/exchange.hpp"
#include "switchyard/layer/detail/expert_sync.hpp"
#include "switchyard/layer/detail/initialize.hpp"
#include "switchyard/layer/detail/metrics.hpp"
#include "switchyard/layer/layer_types.hpp"
#include "switchyard/layer/moe_layer.hpp"
#include "switchyard/routing/from_config.hpp"
#include "switchyard/routing/router_linear.cuh"
#include "switchyard/sharding/placement.hpp"

namespace switchyard {

/// The weights (or gradients) of a device layer, in device memory with the shapes and layouts
/// of MoEParams<float> (the shared expert's buffers empty without one).
struct DeviceMoEParams : detail::param_set<DeviceMoEParams, float> {
  device_buffer<float> router_weight, fc1, fc2, fc1_bias, fc2_bias;
  device_buffer<float> shared_fc1, shared_fc2, shared_gate;

  DeviceMoEParams() = default;
  /// Buffers with the shapes of MoEParams<float>(E, E_local, H, F, fc1_mult, with_bias,
  /// shared_F, shared_gate), zeroed on `stream`.
  DeviceMoEParams(index_t E, index_t E_local, index_t H, index_t F, int fc1_mult, bool with_bias,
                  cudaStream_t stream, index_t shared_F = 0, bool shared_gate = false)
      : param_set(E, E_local, H, F, fc1_mult, with_bias, shared_F, shared_gate) {
    const auto n = sizes();
    std::size_t i = 0;
    for_each_tensor([&](device_buffer<float>& d) {
      d = device_buffer<float>(n[i++]);
      d.zero(stream);
    });
  }
  /// Zero buffers with the same shapes.
  DeviceMoEParams zeros_like(cudaStream_t stream) const {
    return DeviceMoEParams(num_experts, local_experts, hidden, ffn_hidden, fc1_multiplier, bias,
                           stream, shared_ffn_hidden, shared_gate_weight);
  }
  /// Zero host parameters with the same shapes.
  MoEParams<float> host_zeros() const {
    return MoEParams<float>(num_experts, local_experts, hidden, ffn_hidden, fc1_multiplier, bias,
                            shared_ffn_hidden, shared_gate_weight);
  }

  /// Copies host parameters of the same shapes in (synchronises `stream`).
  void upload(const MoEParams<float>& h, cudaStream_t stream) {
    const std::vector<float>* src[] = {&h.router_weight, &h.fc1,        &h.fc2,
                                       &h.fc1_bias,      &h.fc2_bias,   &h.shared_fc1,
                                       &h.shared_fc2,    &h.shared_gate};
    int i = 0;
    for_each_tensor([&](device_buffer<float>& d) {
      const std::vector<float>& v = *src[i++];
      SY_EXPECTS(v.size() == d.size(),
                 detail::concat("DeviceMoEParams::upload: a tensor has ", v.size(),
                                " elements, the layer's has ", d.size()));
      d.upload(v.data(), stream);
    });
    SY_CUDA_TRY(cudaStreamSynchronize(stream));
  }
  /// Copies into host parameters of the same shapes (synchronises `stream`).
  void download(MoEParams<float>& h, cudaStream_t stream) {
    std::vector<float>* dst[] = {&h.router_weight, &h.fc1,        &h.fc2,        &h.fc1_bias,
                                 &h.fc2_bias,      &h.shared_fc1, &h.shared_fc2, &h.shared_gate};
    int i = 0;
    for_each_tensor([&](device_buffer<float>& d) { *dst[i++] = d.download(stream); });
  }
  void set_zero(cudaStream_t stream) {
    for_each_tensor([&](device_buffer<float>& d) { d.zero(stream); });
  }
};

using DeviceMoEGrads = DeviceMoEParams;

/// Per-call options of a device forward (ForwardOptions with a device global-aux accumulator).
struct DeviceForwardOptions {
  bool training = true;    ///< jitter and expert dropout apply; Sinkhorn selects by P
  std::uint64_t seed = 0;  ///< run seed of jitter and dropout draws
  std::uint32_t step = 0;  ///< step (or micro-batch counter) of the draws
  DeviceGlobalAux* global_aux = nullptr;  ///< needed by global_aux_loss (count_sum [E] doubles)
};

/// The device layer's process groups (each a DeviceCommunicator, e.g. an NcclComm over the
/// framework's ncclComm_t; not owned: they must outlive the layer). The three groups are those
/// of the host layer (MoEComms, parallelism.md). All null: one GPU, which needs
/// expert_parallel_size and the data-parallel size to be 1. With them, every collective runs on
/// the stream of the layer call.
struct DeviceMoEComms {
  DeviceCommunicator* expert_parallel = nullptr;       ///< the token exchange (EP ranks)
  DeviceCommunicator* dense_data_parallel = nullptr;   ///< losses, counts, router grads (DP·EP)
  DeviceCommunicator* expert_data_parallel = nullptr;  ///< expert grads or sync (DP ranks)
  bool any() const { return expert_parallel || dense_data_parallel || expert_data_parallel; }
};

/// What a device layer takes from the framework besides its config.
struct DeviceLayerResources {
  DeviceMoEComms comms;
  /// Where every per-call buffer (the saved state, y, dx, temporaries) comes from, ordered on
  /// the call's stream; null: cudaMallocAsync on the current device's pool. It must outlive the
  /// layer and every buffer the layer returned. Parameters and gradients use cudaMalloc.
  device_memory_resource* memory = nullptr;
};

/// Everything a device forward keeps for its backward (device memory, plus host counts).
struct DeviceMoESaved {
  index_t tokens = 0;
  cudaStream_t stream = nullptr;  ///< the forward's stream: backward must run on it
  device_buffer<float> x;         ///< layer input [T][H]
  device_buffer<float> x_router;  ///< router input with jitter [T][H]; empty without it
  device_buffer<float> logits;    ///< [T][E]
  device_buffer<std::int32_t> topk_indices;
  device_buffer<float> topk_probs;  ///< [T][k]
  device_buffer<float> weights;     ///< combine weights [T][k] with renormalize_kept, else empty
  device_buffer<std::int32_t> slots;  ///< routes relabelled to placement slots; empty: = experts
  device_buffer<std::byte> loss_workspace, plan_workspace;
  double loss_tokens = -1;       ///< the z-loss's token count (the group's); negative: tokens
  DevicePlan plan;               ///< over slots; pointers into plan_workspace
  std::vector<index_t> offsets;  ///< host copy of plan.expert_offsets [E+1]: plan-order rows
  /// With an expert-parallel communicator: rows per block [peer][local expert] both ways.
  bool exchanged = false;
  std::vector<std::int64_t> send_rows, recv_rows;
  std::vector<index_t> expert_offsets;  ///< [E_local + 1] over the expert-major rows
  device_buffer<float> rows_in;         ///< expert inputs, expert-major at this GPU's experts
  device_buffer<float> rows_out;        ///< expert outputs in plan order [R][H]
  device_buffer<std::byte> expert_workspace;
  /// The shared expert (empty without one): its output [T][H] before the gate, the gate's
  /// values sigmoid(x·g) [T] (empty without shared_expert_gate) and its expert workspace.
  device_buffer<float> shared_out, shared_scale;
  device_buffer<std::byte> shared_workspace;
  expert_options expert_opts;
  bool used = false;
  std::uint64_t placement_moves = 0;  ///< the layer's placement changes when forward ran

  const float* router_input() const { return x_router.empty() ? x.data() : x_router.data(); }
  /// The combine weights unpermute used: the router's probs unless renormalised.
  const float* combine() const { return weights.empty() ? topk_probs.data() : weights.data(); }
  const std::int32_t* plan_routes() const {
    return slots.empty() ? topk_indices.data() : slots.data();
  }
};

/// What a device forward returns.
struct DeviceMoEForward {
  device_buffer<float> y;  ///< [T][H], device
  MoEMetrics metrics;      ///< host
  DeviceMoESaved saved;
};

namespace kernels {
/// dx += router_input_grad(dx_router, x, x_router) element-wise (routing/router_linear.hpp).
struct add_router_input_grad_body {
  const float* g;
  const float* x;
  const float* x_router;  // null without jitter
  float* dx;
  SY_DEVICE void operator()(index_t i) const {
    dx[i] += router_input_grad(g[i], x[i], x_router ? x_router + i : nullptr);
  }
};
struct accumulate_body {
  const float* g;
  float* acc;
  SY_DEVICE void operator()(index_t i) const { acc[i] += g[i]; }
};
struct scale_body {
  float* v;
  float s;
  SY_DEVICE void operator()(index_t i) const { v[i] *= s; }
};
/// bfloat16 <-> float32 element-wise (gradient_compression), rounded to nearest even.
struct to_bf16_body {
  const float* from;
  __nv_bfloat16* to;
  SY_DEVICE void operator()(index_t i) const { to[i] = __float2bfloat16_rn(from[i]); }
};
struct from_bf16_body {
  const __nv_bfloat16* from;
  float* to;
  SY_DEVICE void operator()(index_t i) const { to[i] = __bfloat162float(from[i]); }
};
/// Route i's expert -> its placement slot (ids outside [0, E) pass through for the plan to
/// report).
struct expert_to_slot_body {
  const std::int32_t* slot_of;
  std::int32_t E;
  const std::int32_t* expert;
  std::int32_t* slot;
  SY_DEVICE void operator()(index_t i) const {
    const std::int32_t e = expert[i];
    slot[i] = e >= 0 && e < E ? slot_of[e] : e;
  }
};
/// rows[i] = offsets[i + 1] - offsets[i].
struct offsets_to_rows_body {
  const std::int64_t* offsets;
  std::int64_t* rows;
  SY_DEVICE void operator()(index_t i) const { rows[i] = offsets[i + 1] - offsets[i]; }
};
/// v = sigmoid(v) element-wise, as the host layer computes it (the shared expert's gate).
struct sigmoid_body {
  float* v;
  SY_DEVICE void operator()(index_t i) const { v[i] = 1.0f / (1.0f + expf(-v[i])); }
};
/// out[i] (+)= scale[i / H]·in[i] ([T][H] by [T]; scale null: 1): y += gate · shared output
/// (accumulate), d shared output = gate · dy (overwrite).
struct scale_rows_body {
  const float* in;
  const float* scale;  // [T] or null
  index_t H;
  float* out;
  bool accumulate;
  SY_DEVICE void operator()(index_t i) const {
    const float v = (scale ? scale[i / H] : 1.0f) * in[i];
    out[i] = accumulate ? out[i] + v : v;
  }
};
/// A thread per token t: d z[t] = g(1 - g)·Σ_h dy·shared_out (g = sigmoid(z) the gate's value;
/// the sum in h order, as the host layer).
struct shared_gate_grad_body {
  const float* dy;
  const float* shared_out;
  const float* gate;  // [T]
  index_t H;
  float* d_logit;  // [T]
  SY_DEVICE void operator()(index_t t) const {
    float dg = 0.0f;
    for (index_t h = 0; h < H; ++h) dg += dy[t * H + h] * shared_out[t * H + h];
    const float g = gate[t];
    d_logit[t] = dg * g * (1.0f - g);
  }
};
}  // namespace kernels

/// The device layer body, independent of the policy types (they come in through the device
/// hooks). Use it through DeviceMoELayer<Router, Dispatcher, Expert> or make_device_layer().
class DeviceMoELayerCore {
 public:
  /// Throws config_error for a config these resources cannot run (see check_supported).
  /// `stream` is used for the set-up copies. Collective over the dense data-parallel group
  /// (the ranks compare their configs).
  DeviceMoELayerCore(const Config& cfg, std::unique_ptr<detail::device_router_hooks> router,
                     std::unique_ptr<detail::device_expert_hooks> experts,
                     cudaStream_t stream = nullptr, DeviceLayerResources resources = {})
      : cfg_((check_supported(cfg, resources.comms), cfg)),
        comms_(resources.comms),
        memory_(resources.memory ? resources.memory : &default_device_memory()),
        placement_(cfg_),
        migration_(cfg_),
        router_(std::move(router)),
        experts_(std::move(experts)) {
    if (router_->k() != cfg_.num_experts_per_token)
      throw config_error(
          detail::concat("num_experts_per_token: the config has k = ", cfg_.num_experts_per_token,
                         " but the router has k = ", router_->k()));
    params_ = DeviceMoEParams(
        cfg_.num_experts, placement_.local_experts(), cfg_.hidden_size, cfg_.ffn_hidden_size,
        experts_->fc1_multiplier(), cfg_.add_bias_linear, stream,
        cfg_.shared_expert_intermediate_size.value_or(0), cfg_.shared_expert_gate);
    if (comms_.expert_parallel) {
      const std::vector<std::int32_t> slot_of = slot_table(placement_);
      slot_of_ = device_buffer<std::int32_t>(slot_of.size());
      slot_of_.upload(slot_of.data(), stream);
    }
    SY_CUDA_TRY(cudaStreamSynchronize(stream));
    agree(detail::config_fingerprint(cfg_), stream, "layer config");
  }

  /// Throws config_error unless these communicators run this config: tensor_parallel_size must
  /// be 1; without communicators expert_parallel_size and the data-parallel size must be 1; with
  /// them all three are needed, with the sizes of the config's layout.
  static void check_supported(const Config& c, const DeviceMoEComms& comms = {}) {
    require_valid(c);
    if (c.tensor_parallel_size != 1)
      throw config_error(detail::concat(
          "tensor_parallel_size: ", c.tensor_parallel_size,
          " (the CUDA layer does not split experts over tensor-parallel ranks yet: use 1, or "
          "the host layer, which has tensor-parallel experts)"));
    if (!comms.any()) {
      if (c.expert_parallel_size != 1)
        throw config_error(detail::concat(
            "expert_parallel_size: ", c.expert_parallel_size,
            " needs the layer's communicators (DeviceMoEComms, e.g. NcclComm over the "
            "framework's ncclComm_t); without them the CUDA layer runs on one GPU: use 1"));
      if (c.dp() != 1)
        throw config_error(detail::concat(
            "data_parallel_size: ", c.dp(),
            " needs the layer's communicators (DeviceMoEComms): without them the losses and "
            "counts would be one GPU's, not the group's; use 1"));
      return;
    }
    if (!comms.expert_parallel || !comms.dense_data_parallel || !comms.expert_data_parallel)
      throw config_error(
          "DeviceMoEComms: give all three communicators (expert_parallel, dense_data_parallel, "
          "expert_data_parallel) or none (one GPU)");
    if (c.gradient_compression)
      for (const DeviceCommunicator* g :
           {comms.expert_parallel, comms.dense_data_parallel, comms.expert_data_parallel})
        if (!g->sums_bfloat16())
          throw config_error(
              "gradient_compression: a communicator of DeviceMoEComms cannot sum bfloat16 "
              "(its sums_bfloat16() is false; NcclComm can): leave it false");
    const std::int64_t ep = c.expert_parallel_size, dense = c.dp() * ep;
    detail::check_comm_size(*comms.expert_parallel, ep, "expert-parallel");
    detail::check_comm_size(*comms.dense_data_parallel, dense, "dense data-parallel");
    detail::check_comm_size(*comms.expert_data_parallel, dense / ep, "expert-data-parallel");
  }

  const Config& config() const { return cfg_; }
  const ExpertPlacementMap& placement() const { return placement_; }
  /// Expert migration's record of the steps so far (the smoothed loads; migrate_experts).
  const migration_schedule& migration() const { return migration_; }
  int ep_rank() const { return comms_.expert_parallel ? comms_.expert_parallel->rank() : 0; }
  DeviceMoEParams& params() { return params_; }
  const DeviceMoEParams& params() const { return params_; }
  /// Zero gradients with this layer's shapes (backward ACCUMULATES into them).
  DeviceMoEGrads make_grads(cudaStream_t stream) const {
    DeviceMoEGrads g = params_.zeros_like(stream);
    SY_CUDA_TRY(cudaStreamSynchronize(stream));
    return g;
  }
  /// Host parameters with this layer's shapes (zero): for set_params / get_params.
  MoEParams<float> host_params() const { return params_.host_zeros(); }
  /// The host layer's initialisation for the same seed and EP rank (drawn on the host, copied).
  void initialize(std::uint64_t seed, cudaStream_t stream) {
    MoEParams<float> h = host_params();
    detail::initialize_params(h, cfg_, placement_, ep_rank(), *experts_->host(), seed);
    params_.upload(h, stream);
  }
  void set_params(const MoEParams<float>& h, cudaStream_t stream) { params_.upload(h, stream); }
  MoEParams<float> get_params(cudaStream_t stream) {
    MoEParams<float> h = host_params();
    params_.download(h, stream);
    return h;
  }

  /// y = MoE(x) for x [T][H] in device memory, on `stream` (T may be 0 on some ranks: every rank
  /// joins every collective). Throws numeric_error naming the first token whose router logits
  /// are not finite (with communicators: on that rank; comm_error naming it on the others).
  DeviceMoEForward forward(const float* x, index_t T, cudaStream_t stream,
                           const DeviceForwardOptions& opt = {}) {
    const exec::Cuda cuda{stream};
    const index_t H = cfg_.hidden_size, E = cfg_.num_experts;
    const int k = router_->k();
    const LossParams& lp = router_->losses();
    DeviceMoEForward out;
    DeviceMoESaved& s = out.saved;
    s.tokens = T;
    s.stream = stream;
    s.placement_moves = placement_moves_;
    s.exchanged = comms_.expert_parallel != nullptr;
    const auto TH = static_cast<std::size_t>(T * H), Tk = static_cast<std::size_t>(T * k);
    DispatchOptions dopt;
    const bool jitter = opt.training && cfg_.input_jitter_eps.has_value();
    const bool global_loss = std::any_of(
        lp.balance.begin(), lp.balance.end(),
        [](const BalanceLoss& bl) { return bl.type == LoadBalancingType::global_aux_loss; });
    // Buffers of the routing stage, allocated in the local stage (a rank out of memory fails
    // with its group at the first check, before the collectives of routing and planning).
    device_buffer<unsigned long long> status;
    device_buffer<std::int64_t> iterations, counts;
    device_buffer<double> loss_values, global_before;
    device_buffer<std::byte> scratch;
    // The local stage: sizes first (a bad token count for seq_aux_loss fails before any launch),
    // then every buffer up to the plan's synchronisation.
    std::exception_ptr failed;
    try {
      SY_EXPECTS(T >= 0 && (T == 0 || x), detail::concat("DeviceMoELayer::forward: x is null "
                                                         "or T is negative (T = ",
                                                         T, ")"));
      for (const BalanceLoss& bl : lp.balance)
        if (bl.type == LoadBalancingType::global_aux_loss)
          SY_EXPECTS(opt.global_aux && opt.global_aux->count_sum,
                     "global_aux_loss needs a DeviceGlobalAux accumulator in "
                     "DeviceForwardOptions");
      s.loss_workspace = alloc<std::byte>(router_->loss_workspace_bytes(T), stream);
      dopt = dispatch_options(cfg_, T);
      if (dopt.capacity && placement_.ep() > 1) dopt.pad_to_capacity = true;  // as the host
      s.plan_workspace = alloc<std::byte>(plan_workspace_bytes<float>(cuda, T, k, dopt), stream);
      s.x = alloc<float>(TH, stream);
      if (jitter) s.x_router = alloc<float>(TH, stream);
      s.logits = alloc<float>(static_cast<std::size_t>(T * E), stream);
      status = alloc<unsigned long long>(1, stream);
      iterations = alloc<std::int64_t>(1, stream);
      loss_values = alloc<double>(lp.balance.size() + 1, stream);
      scratch = alloc<std::byte>(router_->scratch_bytes(T, opt.training), stream);
      s.topk_indices = alloc<std::int32_t>(Tk, stream);
      s.topk_probs = alloc<float>(Tk, stream);
      if (global_loss) global_before = alloc<double>(static_cast<std::size_t>(E), stream);
      if (!slot_of_.empty()) s.slots = alloc<std::int32_t>(Tk, stream);
      counts = alloc<std::int64_t>(static_cast<std::size_t>(4 * E), stream);
    } catch (...) {
      failed = std::current_exception();
    }
    fail_together(failed, stream, "DeviceMoELayer::forward");

    // The group's tokens and sequences (the losses' denominators, REFERENCE §5).
    DeviceLossGroup group;
    if (comms_.any()) {
      DeviceCommunicator& dense = *comms_.dense_data_parallel;
      std::vector<std::uint64_t> all(static_cast<std::size_t>(dense.size()));
      const auto mine = static_cast<std::uint64_t>(T);
      dense.all_gather_host(&mine, 1, all.data(), stream);
      for (const std::uint64_t t : all) {
        group.tokens += static_cast<double>(t);
        if (lp.sequence_length > 0)
          group.sequences += static_cast<double>(static_cast<index_t>(t) / lp.sequence_length);
      }
      group.sum = [d = &dense, stream](double* v, std::int64_t n) {
        d->all_reduce(v, n, ReduceOp::sum, stream);
      };
      s.loss_tokens = group.tokens;
    }

    s.x.copy_from_device(x, stream);
    if (jitter) {
      s.x_router.copy_from_device(x, stream);
      const auto first = static_cast<std::uint32_t>(
          comms_.any() ? comms_.dense_data_parallel->rank() * T : 0);  // as the host layer
      apply_input_jitter<float>(cuda, matrix_view<float>(s.x_router.data(), T, H),
                                JitterParams{*cfg_.input_jitter_eps, opt.seed, opt.step, first});
    }
    router_linear_forward<float>(cuda, matrix_view<const float>(s.router_input(), T, H),
                                 params_.router(), nullptr,
                                 matrix_view<float>(s.logits.data(), T, E));

    // Route: indices and weights, the status word (NaN/Inf logits), the Sinkhorn iteration count
    // and the loss values, all on the device.
    reset_routing_status(cuda, status.data());
    // The router writes an int into the low bytes of a zeroed int64 (little-endian, as every
    // CUDA host), which the group reduces with max.
    SY_CUDA_TRY(cudaMemsetAsync(iterations.data(), 0, sizeof(std::int64_t), stream));
    const matrix_view<const float> logits(s.logits.data(), T, E);
    // The router adds this batch to the global-aux accumulator before its status is known: a
    // forward that fails after routing (non-finite logits or a plan error, on any rank) puts it
    // back as it was, so a caller that skips the batch keeps the right running mean (the host
    // layer checks the logits before routing).
    const std::int64_t micro_batches_before = global_loss ? opt.global_aux->micro_batches : 0;
    if (global_loss) {
      SY_CUDA_TRY(cudaMemcpyAsync(global_before.data(), opt.global_aux->count_sum,
                                  sizeof(double) * E, cudaMemcpyDeviceToDevice, stream));
    }
    router_->forward(
        cuda, {logits, opt.training, scratch.data(), s.topk_indices.data(), s.topk_probs.data(),
               reinterpret_cast<int*>(iterations.data()), status.data(), s.loss_workspace.data(),
               loss_values.data(), opt.global_aux, comms_.any() ? &group : nullptr});

    // Plan over placement slots, so the rows of each EP rank are contiguous.
    if (!slot_of_.empty()) {
      kernels::launch_per_token(
          kernels::expert_to_slot_body{slot_of_.data(), static_cast<std::int32_t>(E),
                                       s.topk_indices.data(), s.slots.data()},
          T * k, stream);
    }
    s.plan = build_plan<float>(cuda, dopt, s.plan_routes(), s.topk_probs.data(), T, k,
                               s.plan_workspace.data(), s.plan_workspace.size());

    // Counts on the device before the one synchronisation: rows per slot (and, dropless over
    // EP ranks, what every peer sends here), and the metrics summed over the dense group.
    const std::int64_t ep = placement_.ep(), El = placement_.local_experts();
    std::int64_t* const routed_d = counts.data();
    std::int64_t* const kept_d = counts.data() + E;
    std::int64_t* const send_d = counts.data() + 2 * E;
    std::int64_t* const recv_d = counts.data() + 3 * E;
    SY_CUDA_TRY(cudaMemcpyAsync(routed_d, s.plan.routed_per_expert, sizeof(std::int64_t) * E,
                                cudaMemcpyDeviceToDevice, stream));
    SY_CUDA_TRY(cudaMemcpyAsync(kept_d, s.plan.kept_per_expert, sizeof(std::int64_t) * E,
                                cudaMemcpyDeviceToDevice, stream));
    // Rows per (peer, local expert), also for padded capacity blocks: C comes from each rank's
    // own T, which may differ across the EP group.
    if (s.exchanged) {
      kernels::launch_per_token(kernels::offsets_to_rows_body{s.plan.expert_offsets, send_d}, E,
                                stream);
      const std::vector<std::int64_t> per_peer(static_cast<std::size_t>(ep), El);
      comms_.expert_parallel->all_to_all_v(send_d, per_peer, recv_d, per_peer, stream);
    }
    if (comms_.any()) {
      DeviceCommunicator& dense = *comms_.dense_data_parallel;
      dense.all_reduce(counts.data(), 2 * E, ReduceOp::sum, stream);
      dense.all_reduce(loss_values.data(), static_cast<std::int64_t>(loss_values.size()),
                       ReduceOp::sum, stream);
      dense.all_reduce(iterations.data(), 1, ReduceOp::max, stream);
    }

    // The one synchronisation: offsets for cuBLAS and NCCL, counts and losses for the metrics,
    // statuses.
    std::vector<std::int64_t> host_counts(static_cast<std::size_t>(4 * E));
    s.offsets.assign(static_cast<std::size_t>(E) + 1, 0);
    std::vector<double> values(loss_values.size());
    unsigned long long route_status = routing_status_ok;
    int plan_status = 0;
    std::int64_t iters = 0;
    const auto d2h = [&](void* dst, const void* src, std::size_t bytes) {
      if (bytes) SY_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    };
    d2h(s.offsets.data(), s.plan.expert_offsets, s.offsets.size() * sizeof(std::int64_t));
    d2h(host_counts.data(), counts.data(), host_counts.size() * sizeof(std::int64_t));
    d2h(values.data(), loss_values.data(), values.size() * sizeof(double));
    d2h(&route_status, status.data(), sizeof(route_status));
    d2h(&plan_status, s.plan.status, sizeof(plan_status));
    d2h(&iters, iterations.data(), sizeof(iters));
    SY_CUDA_TRY(cudaStreamSynchronize(stream));
    // Every buffer the rest of forward needs is allocated before the group's check: after it
    // come the NCCL exchanges, which a rank failing then (out of memory) would leave its peers
    // waiting in without a deadline. With EP the exchange reuses its buffers both ways: one
    // staging buffer, and the dispatched rows' buffer receives the expert outputs back.
    const expert_shape shape = expert_shape_of();
    device_buffer<float> rows, staging, expert_out;
    try {
      throw_if_routing_failed(route_status);
      throw_if_plan_failed(plan_status, s.plan);
      if (s.exchanged) {
        s.send_rows.assign(static_cast<std::size_t>(E), 0);
        for (std::size_t slot = 0; slot < s.send_rows.size(); ++slot)
          s.send_rows[slot] = s.offsets[slot + 1] - s.offsets[slot];
        s.recv_rows.assign(host_counts.begin() + 3 * E, host_counts.end());
        s.expert_offsets = detail::exchange_expert_offsets(s.recv_rows, ep, El);
      } else {
        s.expert_offsets = s.offsets;
      }
      const index_t R = s.offsets.back(), Re = s.expert_offsets.back();
      rows = alloc<float>(static_cast<std::size_t>(R * H), stream);
      if (s.exchanged) {
        staging = alloc<float>(static_cast<std::size_t>(Re * H), stream);
        s.rows_in = alloc<float>(static_cast<std::size_t>(Re * H), stream);
      }
      expert_out = alloc<float>(static_cast<std::size_t>(Re * H), stream);
      s.expert_workspace = alloc<std::byte>(experts_->workspace_bytes(shape, Re), stream);
      if (s.plan.renormalize_kept) s.weights = alloc<float>(Tk, stream);
      out.y = alloc<float>(TH, stream);
      if (params_.has_shared_expert()) {
        s.shared_out = alloc<float>(TH, stream);
        s.shared_workspace = alloc<std::byte>(experts_->workspace_bytes(shared_shape(), T), stream);
        if (!params_.shared_gate.empty())
          s.shared_scale = alloc<float>(static_cast<std::size_t>(T), stream);
      }
    } catch (...) {
      failed = std::current_exception();
    }
    try {
      fail_together(failed, stream, "DeviceMoELayer::forward");
    } catch (...) {
      if (global_loss) {
        opt.global_aux->micro_batches = micro_batches_before;
        SY_CUDA_TRY(cudaMemcpyAsync(opt.global_aux->count_sum, global_before.data(),
                                    sizeof(double) * E, cudaMemcpyDeviceToDevice, stream));
      }
      throw;
    }

    // Experts over the kept rows: here, or at their EP ranks and back.
    const index_t Re = s.expert_offsets.back();
    permute(cuda, s.plan, s.x.data(), H, rows.data());
    s.expert_opts.dropout = expert_dropout{cfg_.expert_dropout, opt.seed, opt.step, opt.training};
    if (s.exchanged) {
      const std::int64_t self = comms_.expert_parallel->rank();
      for (std::int64_t p = 0; p < ep; ++p)
        if (p != self)
          for (std::int64_t le = 0; le < El; ++le) {
            const auto b = static_cast<std::size_t>(p * El + le);
            out.metrics.bytes_sent += static_cast<std::int64_t>(sizeof(float)) * s.send_rows[b] * H;
            out.metrics.bytes_received +=
                static_cast<std::int64_t>(sizeof(float)) * s.recv_rows[b] * H;
          }
      to_experts(s, rows.data(), staging.data(), s.rows_in.data(), stream);
    } else {
      s.rows_in = std::move(rows);
    }
    experts_->forward(cuda, res_, shape, std::as_const(params_).experts(),
                      matrix_view<const float>(s.rows_in.data(), Re, H), s.expert_offsets,
                      matrix_view<float>(expert_out.data(), Re, H),
                      std::span<std::byte>(s.expert_workspace.data(), s.expert_workspace.size()),
                      s.expert_opts);
    if (s.exchanged) {  // the rows were sent (stream order): their buffer takes the results
      from_experts(s, expert_out.data(), staging.data(), rows.data(), stream);
      s.rows_out = std::move(rows);
    } else {
      s.rows_out = std::move(expert_out);
    }

    // Combine: y[t] = Σ_j w[t,j]·out[t,j]; w = prob unless DeepSpeed renormalises the kept ones.
    if (s.plan.renormalize_kept)
      combine_weights(cuda, s.plan, s.topk_probs.data(), s.weights.data());
    unpermute(cuda, s.plan, s.rows_out.data(), s.combine(), H, out.y.data());
    if (params_.has_shared_expert()) {  // y += gate · shared expert (layer.md, "Shared expert")
      const index_t whole[2] = {0, T};
      const matrix_view<const float> xv(s.x.data(), T, H);
      experts_->forward(cuda, res_, shared_shape(), std::as_const(params_).shared_expert(), xv,
                        whole, matrix_view<float>(s.shared_out.data(), T, H),
                        std::span<std::byte>(s.shared_workspace.data(), s.shared_workspace.size()),
                        expert_options{});
      const bool gate = !params_.shared_gate.empty();
      if (gate) {  // g = sigmoid(x·g_w)
        router_linear_forward<float>(cuda, xv,
                                     matrix_view<const float>(params_.shared_gate.data(), 1, H),
                                     nullptr, matrix_view<float>(s.shared_scale.data(), T, 1));
        kernels::launch_per_token(kernels::sigmoid_body{s.shared_scale.data()}, T, stream);
      }
      kernels::launch_per_token(
          kernels::scale_rows_body{s.shared_out.data(), gate ? s.shared_scale.data() : nullptr, H,
                                   out.y.data(), /*accumulate=*/true},
          T * H, stream);
    }

    // Metrics per global expert (the counts are per slot), of the group with communicators.
    std::vector<std::int64_t> routed(static_cast<std::size_t>(E)), kept(routed.size());
    for (std::int64_t slot = 0; slot < E; ++slot) {
      const auto e = static_cast<std::size_t>(placement_.expert_of_slot(slot));
      routed[e] = host_counts[static_cast<std::size_t>(slot)];
      kept[e] = host_counts[static_cast<std::size_t>(E + slot)];
    }
    double aux = 0.0;
    for (std::size_t i = 0; i < lp.balance.size(); ++i) aux += values[i];
    const std::int64_t group_tokens =
        comms_.any() ? static_cast<std::int64_t>(group.tokens) : static_cast<std::int64_t>(T);
    detail::set_metrics(out.metrics, std::move(routed), std::move(kept), group_tokens, lp, aux,
                        values.back(), static_cast<int>(iters), dopt.capacity);
    return out;
  }

  /// dx [T][H] (device) for dy [T][H] (device) on the forward's stream; ADDS the router and
  /// expert gradients into `grads`. Consumes `s` (its expert buffers are released as backward
  /// goes).
  device_buffer<float> backward(DeviceMoESaved& s, const float* dy, cudaStream_t stream,
                                DeviceMoEGrads& grads) {
    const exec::Cuda cuda{stream};
    const index_t T = s.tokens, H = cfg_.hidden_size, E = cfg_.num_experts;
    const int k = router_->k();
    const auto Tk = static_cast<std::size_t>(T * k), TH = static_cast<std::size_t>(T * H);
    index_t R = 0, Re = 0;
    // The checks, then every buffer of backward, before the group's check (as forward: no rank
    // fails between NCCL exchanges its peers wait in). With EP, d_rows receives the input
    // gradients back after it was sent.
    device_buffer<float> d_rows, d_weight, d_prob, staging, d_rows_e, d_in, dx, dlogits, dx_router,
        dw;
    device_buffer<float> shared_d_out, shared_d_logit, shared_d_gate;  // with a shared expert
    std::exception_ptr failed;
    try {
      SY_EXPECTS(!s.used,
                 "DeviceMoELayer::backward: this forward's saved state was already consumed");
      SY_EXPECTS(s.placement_moves == placement_moves_,
                 "DeviceMoELayer::backward: the placement changed (move_experts, "
                 "set_placement) after this forward: its saved rows belong to the old one");
      SY_EXPECTS(stream == s.stream,
                 "DeviceMoELayer::backward: run it on the stream of its forward (the saved "
                 "buffers are ordered on that stream)");
      SY_EXPECTS(s.tokens == 0 || dy, "DeviceMoELayer::backward: dy is null");
      SY_EXPECTS(!s.offsets.empty() && !s.expert_offsets.empty(),
                 "DeviceMoELayer::backward: this saved state does not come from a forward");
      R = s.offsets.back();
      Re = s.expert_offsets.back();
      d_rows = alloc<float>(static_cast<std::size_t>(R * H), stream);
      d_weight = alloc<float>(Tk, stream);
      if (s.plan.renormalize_kept) d_prob = alloc<float>(Tk, stream);
      if (s.exchanged) {
        staging = alloc<float>(static_cast<std::size_t>(Re * H), stream);
        d_rows_e = alloc<float>(static_cast<std::size_t>(Re * H), stream);
      }
      d_in = alloc<float>(static_cast<std::size_t>(Re * H), stream);
      dx = alloc<float>(TH, stream);
      dlogits = alloc<float>(static_cast<std::size_t>(T * E), stream);
      dx_router = alloc<float>(TH, stream);
      dw = alloc<float>(static_cast<std::size_t>(E * H), stream);
      if (params_.has_shared_expert()) {
        SY_EXPECTS(!s.shared_out.empty() || T == 0,
                   "DeviceMoELayer::backward: this saved state has no shared expert output");
        shared_d_out = alloc<float>(TH, stream);
        if (!params_.shared_gate.empty()) {
          shared_d_logit = alloc<float>(static_cast<std::size_t>(T), stream);
          shared_d_gate = alloc<float>(static_cast<std::size_t>(H), stream);
        }
      }
      s.used = true;  // from here on the saved state is consumed
    } catch (...) {
      failed = std::current_exception();
    }
    fail_together(failed, stream, "DeviceMoELayer::backward");

    unpermute_backward(cuda, s.plan, s.rows_out.data(), s.combine(), dy, H, d_rows.data(),
                       d_weight.data());
    if (s.plan.renormalize_kept)
      combine_weights_backward(cuda, s.plan, s.topk_probs.data(), d_weight.data(), d_prob.data());
    else
      d_prob = std::move(d_weight);  // unpermute_backward already gives 0 for dropped routes
    s.rows_out = {};

    // Experts: the output gradients travel to the experts and the input gradients back.
    if (s.exchanged) to_experts(s, d_rows.data(), staging.data(), d_rows_e.data(), stream);
    const float* d_out = s.exchanged ? d_rows_e.data() : d_rows.data();
    experts_->backward(cuda, res_, expert_shape_of(), std::as_const(params_).experts(),
                       matrix_view<const float>(s.rows_in.data(), Re, H), s.expert_offsets,
                       matrix_view<const float>(d_out, Re, H),
                       matrix_view<float>(d_in.data(), Re, H), grads.experts(),
                       std::span<std::byte>(s.expert_workspace.data(), s.expert_workspace.size()),
                       s.expert_opts);
    d_rows_e = {};
    s.rows_in = {};
    s.expert_workspace = {};
    if (s.exchanged) from_experts(s, d_in.data(), staging.data(), d_rows.data(), stream);
    permute_backward(cuda, s.plan, s.exchanged ? d_rows.data() : d_in.data(), H, dx.data());

    // Router: d prob -> d logits (with the losses) -> dx, dW_r.
    router_->backward(cuda, matrix_view<const float>(s.logits.data(), T, E), s.topk_indices.data(),
                      d_prob.data(), dlogits.data(), s.loss_workspace.data(), s.loss_tokens);
    router_linear_backward<float>(cuda, matrix_view<const float>(s.router_input(), T, H),
                                  params_.router(), matrix_view<const float>(dlogits.data(), T, E),
                                  matrix_view<float>(dx_router.data(), T, H),
                                  matrix_view<float>(dw.data(), E, H), nullptr);
    kernels::launch_per_token(
        kernels::add_router_input_grad_body{dx_router.data(), s.x.data(),
                                            s.x_router.empty() ? nullptr : s.x_router.data(),
                                            dx.data()},
        T * H, stream);
    kernels::launch_per_token(kernels::accumulate_body{dw.data(), grads.router_weight.data()},
                              E * H, stream);
    if (params_.has_shared_expert())
      shared_backward(s, dy, grads, shared_d_out, shared_d_logit, shared_d_gate, dx_router, dx,
                      stream);
    // The temporaries go back to the memory resource ordered on `stream`: after the kernels
    // above that read them.
    return dx;
  }

  /// Sums gradients over their groups (once per optimizer step, after the last micro-batch):
  /// the router's and the shared expert's (with its gate) over the dense data-parallel group,
  /// the experts' over the expert-data-parallel group, on `stream`. Nothing to do on one GPU.
  /// Collective. With enable_expert_sync the experts' gradients are scaled by the
  /// expert-data-parallel group's size instead of summed over it (MoELayerCore::reduce_gradients
  /// says why); sync_expert_weights() averages them, and without it for sync_frequency steps this
  /// throws precondition_error.
  ///
  /// With gradient_compression the sums run in bfloat16 (each tensor rounded to bfloat16 on the
  /// device, summed by the communicator in bfloat16, widened back; comm/compression.hpp says
  /// what the host layer does, NCCL's order of additions is its own), also on one GPU, where
  /// the tensors are only rounded. The bfloat16 buffer is allocated first and the dense group
  /// fails together on it, so no rank waits in a sum a peer out of memory skips.
  void reduce_gradients(DeviceMoEGrads& g, cudaStream_t stream) {
    sync_clock_.count_reduction(cfg_, "DeviceMoELayer::reduce_gradients");
    const bool compress = cfg_.gradient_compression;
    if (!comms_.any() && !compress) return;
    device_buffer<__nv_bfloat16> packed;  // the largest tensor, in bfloat16
    if (compress) {
      std::size_t most = 0;
      g.for_each_tensor([&](device_buffer<float>& v) { most = std::max(most, v.size()); });
      std::exception_ptr failed;
      try {
        packed = alloc<__nv_bfloat16>(most, stream);
      } catch (...) {
        failed = std::current_exception();
      }
      fail_together(failed, stream, "DeviceMoELayer::reduce_gradients");
    }
    // The sum of `v` over `c` (null: one GPU, where only compression rounds).
    const auto sum_over = [&](DeviceCommunicator* c, device_buffer<float>& v) {
      const auto n = static_cast<index_t>(v.size());
      if (n == 0) return;
      if (!compress) return c->all_reduce(v.data(), n, ReduceOp::sum, stream);
      kernels::launch_per_token(kernels::to_bf16_body{v.data(), packed.data()}, n, stream);
      if (c) c->all_reduce(packed.data(), n, ReduceOp::sum, stream);
      kernels::launch_per_token(kernels::from_bf16_body{packed.data(), v.data()}, n, stream);
    };
    // The router, the shared expert and its gate: replicated over the dense group (no TP here).
    const auto dense_sum = [&](device_buffer<float>& v) {
      sum_over(comms_.dense_data_parallel, v);
    };
    g.for_each_replicated_tensor(dense_sum);
    g.for_each_shared_expert_tensor(dense_sum);
    DeviceCommunicator* replicas = comms_.expert_data_parallel;
    const float D = replicas ? static_cast<float>(replicas->size()) : 1.0f;
    g.for_each_expert_tensor([&](device_buffer<float>& v) {
      if (!cfg_.enable_expert_sync)
        sum_over(replicas, v);
      else if (D != 1.0f && !v.empty())
        kernels::launch_per_token(kernels::scale_body{v.data(), D}, static_cast<index_t>(v.size()),
                                  stream);
    });
  }

  /// Expert sync (enable_expert_sync), after optimizer step `step` (from 1), on `stream`: every
  /// sync_frequency-th step averages this GPU's expert weights over the expert-data-parallel
  /// group and returns true; else (always without enable_expert_sync) does nothing and returns
  /// false. As MoELayerCore::sync_expert_weights. Collective on the steps it averages.
  bool sync_expert_weights(std::int64_t step, cudaStream_t stream) {
    if (!detail::expert_sync_clock::due(cfg_, step)) return false;
    average_expert_weights(stream);
    return true;
  }
  /// Averages this GPU's expert weights over the expert-data-parallel group now, on `stream`.
  void average_expert_weights(cudaStream_t stream) {
    sync_clock_.averaged();
    if (!comms_.expert_data_parallel || comms_.expert_data_parallel->size() == 1) return;
    DeviceCommunicator& replicas = *comms_.expert_data_parallel;
    const float inv = 1.0f / static_cast<float>(replicas.size());
    params_.for_each_expert_tensor([&](device_buffer<float>& v) {
      if (v.empty()) return;
      replicas.all_reduce(v.data(), static_cast<std::int64_t>(v.size()), ReduceOp::sum, stream);
      kernels::launch_per_token(kernels::scale_body{v.data(), inv}, static_cast<index_t>(v.size()),
                                stream);
    });
  }

  /// Expert migration (enable_expert_migration, sharding_strategy Dynamic, a migration object),
  /// after an optimizer
  /// step, on `stream`: as MoELayerCore::migrate_experts (the same schedule and decision,
  /// migration_schedule), with `also` the caller's per-local-expert device tensors (leading
  /// dimension E_local; e.g. optimizer moments). Returns whether the experts moved. Without
  /// migration it returns false at once. Collective over the dense group (the loads must agree).
  bool migrate_experts(std::span<const std::int64_t> load, cudaStream_t stream,
                       std::span<const std::span<float>> also = {}) {
    if (!cfg_.migrates_experts()) return false;
    std::exception_ptr failed;
    std::uint64_t fingerprint = 0;
    std::optional<ExpertPlacementMap> next;
    try {
      next = migration_.decide(placement_, load);
      fingerprint = migration_.fingerprint();
    } catch (...) {
      failed = std::current_exception();
    }
    fail_together(failed, stream, "DeviceMoELayer::migrate_experts");
    agree(fingerprint, stream, "expert loads of DeviceMoELayer::migrate_experts");
    if (next) move_experts(*next, stream, also);  // fails together: then no rank records it
    migration_.commit();
    return next.has_value();
  }

  /// Moves the experts to placement `to`, on `stream`: as MoELayerCore::move_experts, for the
  /// layer's fc1, fc2 and their biases and the device tensors of `also` (leading dimension
  /// E_local), one all-to-all per tensor over the EP group (on one GPU, a reordering of its
  /// experts). The buffers are allocated first and the dense group fails together on them; the
  /// ranks must agree on `to` and on the tensors' sizes (comm_error on every rank otherwise).
  /// Between steps: backward refuses a saved forward state from before a move.
  void move_experts(const ExpertPlacementMap& to, cudaStream_t stream,
                    std::span<const std::span<float>> also = {}) {
    const std::int64_t El = placement_.local_experts();
    const int me = comms_.expert_parallel ? comms_.expert_parallel->rank() : 0;
    std::exception_ptr failed;
    std::vector<std::span<float>> tensors;
    device_buffer<float> send, recv;
    expert_move_check check;  // what the ranks must agree on: `to`, then the sizes
    expert_move move;
    std::vector<std::int64_t> send_counts, recv_counts;
    std::vector<std::int32_t> slot_of;
    device_buffer<std::int32_t> slots;
    try {
      move = plan_expert_move(placement_, to, me);
      params_.for_each_expert_tensor([&](device_buffer<float>& v) {
        if (!v.empty()) tensors.emplace_back(v.data(), v.size());
      });
      for (const std::span<float> v : also) {
        for (const std::span<float> t : tensors)
          SY_EXPECTS(
              v.empty() || v.data() + v.size() <= t.data() || t.data() + t.size() <= v.data(),
              "DeviceMoELayer::move_experts: tensors that overlap (one given twice, or "
              "one of the layer's own weights, which it moves itself)");
        if (!v.empty()) tensors.push_back(v);
      }
      std::vector<std::size_t> sizes;
      for (const std::span<float> v : tensors) sizes.push_back(v.size());
      check = check_expert_move(to, sizes, "DeviceMoELayer::move_experts");
      send = alloc<float>(check.most, stream);
      recv = alloc<float>(check.most, stream);
      slot_of = slot_table(to);
      slots = device_buffer<std::int32_t>(slot_of.size());
    } catch (...) {
      failed = std::current_exception();
    }
    fail_together(failed, stream, "DeviceMoELayer::move_experts");
    agree(check.fingerprint, stream, "placement and tensors of DeviceMoELayer::move_experts");
    const auto copy = [&](float* dst, const float* src, std::int64_t n) {
      SY_CUDA_TRY(cudaMemcpyAsync(dst, src, sizeof(float) * static_cast<std::size_t>(n),
                                  cudaMemcpyDeviceToDevice, stream));
    };
    for (const std::span<float> t : tensors) {
      const auto n = static_cast<std::int64_t>(t.size()) / El;
      for (std::size_t i = 0; i < move.send_local.size(); ++i)
        copy(send.data() + static_cast<std::int64_t>(i) * n, t.data() + move.send_local[i] * n, n);
      move.counts(n, send_counts, recv_counts);
      if (comms_.expert_parallel)
        comms_.expert_parallel->all_to_all_v(send.data(), send_counts, recv.data(), recv_counts,
                                             stream);
      else  // one GPU: everything stays here
        copy(recv.data(), send.data(), static_cast<std::int64_t>(move.send_local.size()) * n);
      for (std::size_t i = 0; i < move.recv_local.size(); ++i)
        copy(t.data() + move.recv_local[i] * n, recv.data() + static_cast<std::int64_t>(i) * n, n);
    }
    slots.upload(slot_of.data(), stream);
    SY_CUDA_TRY(cudaStreamSynchronize(stream));  // the copies are done before the buffers go
    slot_of_ = std::move(slots);
    placement_ = to;
    ++placement_moves_;
  }

  /// Declares that the expert weights set with set_params() are laid out for placement `to`
  /// (e.g. uploaded from a host layer whose experts migrated): nothing moves, the layer only
  /// routes by `to` from now on. Collective over the dense group: the ranks must agree on `to`.
  void set_placement(const ExpertPlacementMap& to, cudaStream_t stream) {
    std::exception_ptr failed;
    std::vector<std::int32_t> slot_of;
    device_buffer<std::int32_t> slots;
    try {
      SY_EXPECTS(to.num_experts() == placement_.num_experts() && to.ep() == placement_.ep(),
                 detail::concat("DeviceMoELayer::set_placement: a placement of ", to.num_experts(),
                                " experts over ", to.ep(), " ranks for a layer of ",
                                placement_.num_experts(), " over ", placement_.ep()));
      slot_of = slot_table(to);
      slots = device_buffer<std::int32_t>(slot_of.size());
    } catch (...) {
      failed = std::current_exception();
    }
    fail_together(failed, stream, "DeviceMoELayer::set_placement");
    agree(fnv1a64(std::string(reinterpret_cast<const char*>(to.slots().data()),
                              to.slots().size() * sizeof(std::int64_t))),
          stream, "placement of DeviceMoELayer::set_placement");
    slots.upload(slot_of.data(), stream);
    SY_CUDA_TRY(cudaStreamSynchronize(stream));
    slot_of_ = std::move(slots);
    placement_ = to;
    ++placement_moves_;
  }

  /// Aux-loss-free balancing (REFERENCE §5) from the kept_per_expert of a global batch.
  void update_expert_bias(std::span<const std::int64_t> counts, cudaStream_t stream) {
    router_->update_expert_bias(counts, stream);
  }
  std::vector<double> expert_bias() const { return router_->expert_bias(); }

 private:
  // The shared expert as one expert over every token (no biases, no dropout), as the host's.
  expert_shape shared_shape() const {
    return expert_shape{1, params_.hidden, params_.shared_ffn_hidden, false};
  }
  // Backward of the shared expert and its gate, after the router's: dx += its input gradient
  // (the expert's plus the gate's, summed first as the host layer does), its weight and gate
  // gradients added into `grads`. `scratch` [T][H] is free (the router's dx, already added).
  void shared_backward(DeviceMoESaved& s, const float* dy, DeviceMoEGrads& grads,
                       device_buffer<float>& d_out, device_buffer<float>& d_logit,
                       device_buffer<float>& d_gate, device_buffer<float>& scratch,
                       device_buffer<float>& dx, cudaStream_t stream) {
    const exec::Cuda cuda{stream};
    const index_t T = s.tokens, H = cfg_.hidden_size;
    const index_t whole[2] = {0, T};
    const matrix_view<const float> xv(s.x.data(), T, H);
    const bool gate = !params_.shared_gate.empty();
    const float* g = gate ? s.shared_scale.data() : nullptr;
    if (gate)
      kernels::launch_per_token(
          kernels::shared_gate_grad_body{dy, s.shared_out.data(), g, H, d_logit.data()}, T, stream);
    kernels::launch_per_token(
        kernels::scale_rows_body{dy, g, H, d_out.data(), /*accumulate=*/false}, T * H, stream);
    experts_->backward(cuda, res_, shared_shape(), std::as_const(params_).shared_expert(), xv,
                       whole, matrix_view<const float>(d_out.data(), T, H),
                       matrix_view<float>(scratch.data(), T, H), grads.shared_expert(),
                       std::span<std::byte>(s.shared_workspace.data(), s.shared_workspace.size()),
                       expert_options{});
    if (gate) {  // z = x·g_w: the gate's dx = dz·g_w (into d_out, now free), d g_w += dzᵀ·x
      router_linear_backward<float>(
          cuda, xv, matrix_view<const float>(params_.shared_gate.data(), 1, H),
          matrix_view<const float>(d_logit.data(), T, 1), matrix_view<float>(d_out.data(), T, H),
          matrix_view<float>(d_gate.data(), 1, H), nullptr);
      kernels::launch_per_token(kernels::accumulate_body{d_out.data(), scratch.data()}, T * H,
                                stream);
      kernels::launch_per_token(kernels::accumulate_body{d_gate.data(), grads.shared_gate.data()},
                                H, stream);
    }
    kernels::launch_per_token(kernels::accumulate_body{scratch.data(), dx.data()}, T * H, stream);
    s.shared_out = {};
    s.shared_scale = {};
    s.shared_workspace = {};
  }
  expert_shape expert_shape_of() const {
    return {placement_.local_experts(), cfg_.hidden_size, cfg_.ffn_hidden_size,
            cfg_.add_bias_linear};
  }

  template <class U>
  device_buffer<U> alloc(std::size_t n, cudaStream_t stream) const {
    return device_buffer<U>(n, *memory_, stream);
  }

  // With communicators, require_agreement over the dense group (synchronises); else nothing.
  void agree(std::uint64_t fingerprint, cudaStream_t stream, const char* what) {
    if (!comms_.any()) return;
    DeviceCommunicator& dense = *comms_.dense_data_parallel;
    detail::require_agreement(dense.rank(), dense.size(), detail::host_gather_of(dense, stream),
                              fingerprint, what);
  }
  // Global expert -> placement slot, the table the dispatch kernels read.
  static std::vector<std::int32_t> slot_table(const ExpertPlacementMap& p) {
    std::vector<std::int32_t> slot_of(static_cast<std::size_t>(p.num_experts()));
    for (std::size_t e = 0; e < slot_of.size(); ++e)
      slot_of[e] = static_cast<std::int32_t>(p.slot(static_cast<std::int64_t>(e)));
    return slot_of;
  }

  // With communicators, fail_together over the dense group (synchronises); else rethrows.
  void fail_together(const std::exception_ptr& failed, cudaStream_t stream, const char* where) {
    if (comms_.any()) {
      DeviceCommunicator& dense = *comms_.dense_data_parallel;
      detail::fail_together(dense.rank(), dense.size(), detail::host_gather_of(dense, stream),
                            failed, where);
    } else if (failed) {
      std::rethrow_exception(failed);
    }
  }

  // Copies blocks of s.recv_rows rows between source-major and expert-major order.
  void reorder_blocks(const DeviceMoESaved& s, const float* in, float* out, bool to_expert_major,
                      cudaStream_t stream) const {
    const std::int64_t ep = placement_.ep(), El = placement_.local_experts();
    const index_t H = cfg_.hidden_size;
    const detail::block_offsets o = detail::exchange_block_offsets(s.recv_rows, ep, El);
    for (std::size_t b = 0; b < s.recv_rows.size(); ++b) {
      if (s.recv_rows[b] == 0) continue;
      const std::int64_t from = to_expert_major ? o.source_major[b] : o.expert_major[b];
      const std::int64_t to = to_expert_major ? o.expert_major[b] : o.source_major[b];
      SY_CUDA_TRY(cudaMemcpyAsync(out + to * H, in + from * H,
                                  sizeof(float) * static_cast<std::size_t>(s.recv_rows[b] * H),
                                  cudaMemcpyDeviceToDevice, stream));
    }
  }

  // Plan-order rows [R][H] -> the rows at this GPU's experts, expert-major, into `out` [Re][H]
  // (the EP exchange), received into `staging` [Re][H].
  void to_experts(const DeviceMoESaved& s, const float* rows, float* staging, float* out,
                  cudaStream_t stream) {
    const std::int64_t ep = placement_.ep(), El = placement_.local_experts();
    const index_t H = cfg_.hidden_size;
    const std::vector<std::int64_t> send = detail::exchange_peer_elements(s.send_rows, ep, El, H);
    const std::vector<std::int64_t> recv = detail::exchange_peer_elements(s.recv_rows, ep, El, H);
    comms_.expert_parallel->all_to_all_v(rows, send, staging, recv, stream);
    reorder_blocks(s, staging, out, /*to_expert_major=*/true, stream);
  }

  // The reverse: expert-major rows here -> their senders, plan order, into `out` [R][H]
  // (reordered into `staging` [Re][H] first).
  void from_experts(const DeviceMoESaved& s, const float* rows_e, float* staging, float* out,
                    cudaStream_t stream) {
    const std::int64_t ep = placement_.ep(), El = placement_.local_experts();
    const index_t H = cfg_.hidden_size;
    const std::vector<std::int64_t> send = detail::exchange_peer_elements(s.send_rows, ep, El, H);
    const std::vector<std::int64_t> recv = detail::exchange_peer_elements(s.recv_rows, ep, El, H);
    reorder_blocks(s, rows_e, staging, /*to_expert_major=*/false, stream);
    comms_.expert_parallel->all_to_all_v(staging, recv, out, send, stream);
  }

  Config cfg_;
  DeviceMoEComms comms_;
  detail::expert_sync_clock sync_clock_;
  device_memory_resource* memory_;
  ExpertPlacementMap placement_;
  migration_schedule migration_;  ///< the loads seen and the checks' schedule (migrate_experts)
  std::unique_ptr<detail::device_router_hooks> router_;
  std::unique_ptr<detail::device_expert_hooks> experts_;
  DeviceMoEParams params_;
  std::uint64_t placement_moves_ = 0;    ///< placement changes so far (stale saved states fail)
  device_buffer<std::int32_t> slot_of_;  ///< expert -> placement slot [E]; empty on one GPU
  cuda_expert_resources res_;
};

/// The device layer with its policies fixed at compile time (the config must select them):
///
///     using Layer = sy::DeviceMoELayer<sy::TopK<2, sy::Softmax>, sy::Capacity<sy::DropByProbs>,
///                                      sy::GLU<sy::SiLU>>;
///     Layer layer(cfg, sy::TopK<2, sy::Softmax>(sy::router_params(cfg)), stream);
///     // over GPUs: Layer layer(cfg, router, stream, {.comms = {&ep, &dense, &edp}});
template <RouterPolicy Router, DispatchPolicy Dispatcher, ExpertPolicy Expert>
class DeviceMoELayer : public DeviceMoELayerCore {
  static_assert(!(detail::is_sinkhorn_router<Router> && Dispatcher::has_capacity),
                "DeviceMoELayer: Sinkhorn routing cannot be combined with a Capacity dispatcher "
                "(REFERENCE 3): use Dropless");

 public:
  using router_type = Router;
  using dispatcher_type = Dispatcher;
  using expert_type = Expert;

  DeviceMoELayer(const Config& cfg, Router router, cudaStream_t stream = nullptr,
                 DeviceLayerResources resources = {})
      : DeviceMoELayerCore(
            (detail::check_policies_match<Router, Dispatcher, Expert>(cfg), cfg),
            std::make_unique<detail::device_router_hooks_impl<Router>>(std::move(router), stream),
            std::make_unique<detail::device_expert_hooks_impl<Expert>>(), stream, resources) {}
};

/// A device layer for a runtime config: every router (TopK<K, Softmax | PreSoftmax | Sigmoid |
/// SqrtSoftplus>, Sinkhorn<K>, K = 1..8) and expert policy make_layer() offers.
inline std::unique_ptr<DeviceMoELayerCore> make_device_layer(const Config& c,
                                                             cudaStream_t stream = nullptr,
                                                             DeviceLayerResources resources = {}) {
  DeviceMoELayerCore::check_supported(c, resources.comms);
  auto router = with_router(c, [&](auto r) -> std::unique_ptr<detail::device_router_hooks> {
    return std::make_unique<detail::device_router_hooks_impl<decltype(r)>>(std::move(r), stream);
  });
  auto experts = visit_expert_policy(c, [](auto p) -> std::unique_ptr<detail::device_expert_hooks> {
    return std::make_unique<detail::device_expert_hooks_impl<decltype(p)>>();
  });
  return std::make_unique<DeviceMoELayerCore>(c, std::move(router), std::move(experts), stream,
                                              resources);
}

}  // namespace switchyard
