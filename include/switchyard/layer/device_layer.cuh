#pragma once
/// \file The MoE layer on one GPU (nvcc only), float32: the CUDA pieces chained as the host layer
/// chains its host pieces (layer/moe_layer.hpp):
///
///   x [T,H] -> router linear -> logits -> TopK / Sinkhorn + losses -> device plan -> permute
///     -> grouped experts (cuBLAS) -> combine weights -> unpermute -> y [T,H]
///
/// Everything stays in device memory except what the host must see: one explicit
/// synchronisation per forward brings back the expert offsets [E+1] (cuBLAS takes the per-expert
/// row counts on the host), the routed and kept counts, the loss values, the Sinkhorn iteration
/// count and the two status words (NaN/Inf logits, an out-of-range expert). Backward copies
/// nothing to the host.
///
/// Not built here: expert parallelism over NCCL (expert_parallel_size must be 1), data-parallel
/// groups (the losses and counts are those of this GPU's tokens), tensor-parallel experts;
/// bf16/fp16 storage (the kernels have it, this layer is float32). The device buffers are owned
/// by the returned values (cudaMalloc per call), not carved from a caller's workspace yet; the
/// cudaFree of a call's temporaries waits for the device, so forward and backward also block
/// there until a two-phase workspace replaces them.
///
/// This code has been compiled (nvcc, sm_90a) but not yet run on a GPU.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "switchyard/config/validate.hpp"
#include "switchyard/dispatch/dispatch_types.hpp"
#include "switchyard/dispatch/permute.cuh"
#include "switchyard/dispatch/plan.cuh"
#include "switchyard/dispatch/renormalize.cuh"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/exec/device_buffer.cuh"
#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/layer/detail/device_hooks.cuh"
#include "switchyard/layer/detail/initialize.hpp"
#include "switchyard/layer/detail/metrics.hpp"
#include "switchyard/layer/layer_types.hpp"
#include "switchyard/layer/moe_layer.hpp"
#include "switchyard/routing/from_config.hpp"
#include "switchyard/routing/router_linear.cuh"
#include "switchyard/sharding/placement.hpp"

namespace switchyard {

/// The weights (or gradients) of a device layer, in device memory with the shapes and layouts
/// of MoEParams<float>.
struct DeviceMoEParams : detail::param_set<DeviceMoEParams, float> {
  device_buffer<float> router_weight, fc1, fc2, fc1_bias, fc2_bias;

  DeviceMoEParams() = default;
  /// Buffers with the shapes of MoEParams<float>(E, E_local, H, F, fc1_mult, with_bias), zeroed
  /// on `stream`.
  DeviceMoEParams(index_t E, index_t E_local, index_t H, index_t F, int fc1_mult, bool with_bias,
                  cudaStream_t stream)
      : param_set(E, E_local, H, F, fc1_mult, with_bias) {
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
                           stream);
  }
  /// Zero host parameters with the same shapes.
  MoEParams<float> host_zeros() const {
    return MoEParams<float>(num_experts, local_experts, hidden, ffn_hidden, fc1_multiplier, bias);
  }

  /// Copies host parameters of the same shapes in (synchronises `stream`).
  void upload(const MoEParams<float>& h, cudaStream_t stream) {
    const std::vector<float>* src[] = {&h.router_weight, &h.fc1, &h.fc2, &h.fc1_bias, &h.fc2_bias};
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
    std::vector<float>* dst[] = {&h.router_weight, &h.fc1, &h.fc2, &h.fc1_bias, &h.fc2_bias};
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

/// Everything a device forward keeps for its backward (device memory, plus the host offsets).
struct DeviceMoESaved {
  index_t tokens = 0;
  device_buffer<float> x;         ///< layer input [T][H]
  device_buffer<float> x_router;  ///< router input with jitter [T][H]; empty without it
  device_buffer<float> logits;    ///< [T][E]
  device_buffer<std::int32_t> topk_indices;
  device_buffer<float> topk_probs;  ///< [T][k]
  device_buffer<float> weights;     ///< combine weights [T][k] with renormalize_kept, else empty
  device_buffer<std::byte> loss_workspace, plan_workspace;
  DevicePlan plan;                         ///< pointers into plan_workspace
  std::vector<index_t> offsets;            ///< host copy of plan.expert_offsets [E+1]
  device_buffer<float> rows_in, rows_out;  ///< expert inputs and outputs [R][H]
  device_buffer<std::byte> expert_workspace;
  expert_options expert_opts;
  bool used = false;

  const float* router_input() const { return x_router.empty() ? x.data() : x_router.data(); }
  /// The combine weights unpermute used: the router's probs unless renormalised.
  const float* combine() const { return weights.empty() ? topk_probs.data() : weights.data(); }
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
}  // namespace kernels

/// The device layer body, independent of the policy types (they come in through the device
/// hooks). Use it through DeviceMoELayer<Router, Dispatcher, Expert> or make_device_layer().
class DeviceMoELayerCore {
 public:
  /// Throws config_error for what one GPU cannot run yet (expert_parallel_size, data- or
  /// tensor-parallel sizes other than 1). `stream` is used for the set-up copies.
  DeviceMoELayerCore(const Config& cfg, std::unique_ptr<detail::device_router_hooks> router,
                     std::unique_ptr<detail::device_expert_hooks> experts,
                     cudaStream_t stream = nullptr)
      : cfg_((check_supported(cfg), cfg)),
        placement_(cfg_),
        router_(std::move(router)),
        experts_(std::move(experts)) {
    if (router_->k() != cfg_.num_experts_per_token)
      throw config_error(
          detail::concat("num_experts_per_token: the config has k = ", cfg_.num_experts_per_token,
                         " but the router has k = ", router_->k()));
    params_ =
        DeviceMoEParams(cfg_.num_experts, cfg_.num_experts, cfg_.hidden_size, cfg_.ffn_hidden_size,
                        experts_->fc1_multiplier(), cfg_.add_bias_linear, stream);
    SY_CUDA_TRY(cudaStreamSynchronize(stream));
  }

  /// Throws config_error unless one GPU runs this config (see the class comment).
  static void check_supported(const Config& c) {
    require_valid(c);
    if (c.expert_parallel_size != 1)
      throw config_error(detail::concat(
          "expert_parallel_size: ", c.expert_parallel_size,
          " (the CUDA layer runs on one GPU: expert parallelism over NCCL is not built yet; use 1 "
          "or the host layer under mpirun)"));
    if (c.tensor_parallel_size != 1)
      throw config_error(detail::concat(
          "tensor_parallel_size: ", c.tensor_parallel_size,
          " (the MoE layer does not split experts over tensor-parallel ranks yet: use 1)"));
    if (c.dp() != 1)
      throw config_error(detail::concat(
          "data_parallel_size: ", c.dp(),
          " (the CUDA layer has no data-parallel communicator yet: its losses and counts are one "
          "GPU's; use 1 or the host layer under mpirun)"));
  }

  const Config& config() const { return cfg_; }
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
  /// The host layer's initialisation for the same seed (drawn on the host, then copied).
  void initialize(std::uint64_t seed, cudaStream_t stream) {
    MoEParams<float> h = host_params();
    detail::initialize_params(h, cfg_, placement_, 0, *experts_->host(), seed);
    params_.upload(h, stream);
  }
  void set_params(const MoEParams<float>& h, cudaStream_t stream) { params_.upload(h, stream); }
  MoEParams<float> get_params(cudaStream_t stream) {
    MoEParams<float> h = host_params();
    params_.download(h, stream);
    return h;
  }

  /// y = MoE(x) for x [T][H] in device memory, on `stream`. Synchronises once (see the file
  /// comment); throws numeric_error naming the first token whose router logits are not finite.
  DeviceMoEForward forward(const float* x, index_t T, cudaStream_t stream,
                           const DeviceForwardOptions& opt = {}) {
    const exec::Cuda cuda{stream};
    const index_t H = cfg_.hidden_size, E = cfg_.num_experts;
    const int k = router_->k();
    const LossParams& lp = router_->losses();
    for (const BalanceLoss& bl : lp.balance)
      if (bl.type == LoadBalancingType::global_aux_loss)
        SY_EXPECTS(opt.global_aux && opt.global_aux->count_sum,
                   "global_aux_loss needs a DeviceGlobalAux accumulator in DeviceForwardOptions");
    DeviceMoEForward out;
    DeviceMoESaved& s = out.saved;
    s.tokens = T;
    const auto TH = static_cast<std::size_t>(T * H), Tk = static_cast<std::size_t>(T * k);
    // Sizes first: a bad token count (seq_aux_loss) fails before any launch.
    s.loss_workspace = device_buffer<std::byte>(router_->loss_workspace_bytes(T));
    const DispatchOptions dopt = dispatch_options(cfg_, T);
    s.plan_workspace = device_buffer<std::byte>(plan_workspace_bytes<float>(cuda, T, k, dopt));

    s.x = device_buffer<float>(TH);
    s.x.copy_from_device(x, stream);
    if (opt.training && cfg_.input_jitter_eps) {
      s.x_router = device_buffer<float>(TH);
      s.x_router.copy_from_device(x, stream);
      apply_input_jitter<float>(cuda, matrix_view<float>(s.x_router.data(), T, H),
                                JitterParams{*cfg_.input_jitter_eps, opt.seed, opt.step, 0});
    }
    s.logits = device_buffer<float>(static_cast<std::size_t>(T * E));
    router_linear_forward<float>(cuda, matrix_view<const float>(s.router_input(), T, H),
                                 params_.router(), nullptr,
                                 matrix_view<float>(s.logits.data(), T, E));

    // Route: indices and weights, the status word (NaN/Inf logits), the Sinkhorn iteration count
    // and the loss values, all on the device.
    device_buffer<unsigned long long> status(1);
    reset_routing_status(cuda, status.data());
    device_buffer<int> iterations(1);
    device_buffer<double> loss_values(lp.balance.size() + 1);
    device_buffer<std::byte> scratch(router_->scratch_bytes(T, opt.training));
    s.topk_indices = device_buffer<std::int32_t>(Tk);
    s.topk_probs = device_buffer<float>(Tk);
    const matrix_view<const float> logits(s.logits.data(), T, E);
    router_->forward(cuda, {logits, opt.training, scratch.data(), s.topk_indices.data(),
                            s.topk_probs.data(), iterations.data(), status.data(),
                            s.loss_workspace.data(), loss_values.data(), opt.global_aux});

    // Plan over experts (one rank: slot = expert).
    s.plan = build_plan<float>(cuda, dopt, s.topk_indices.data(), s.topk_probs.data(), T, k,
                               s.plan_workspace.data(), s.plan_workspace.size());

    // The one synchronisation: offsets for cuBLAS, counts and losses for the metrics, statuses.
    std::vector<std::int64_t> routed(static_cast<std::size_t>(E)), kept(routed.size());
    s.offsets.assign(static_cast<std::size_t>(E) + 1, 0);
    std::vector<double> values(loss_values.size());
    unsigned long long route_status = routing_status_ok;
    int plan_status = 0, iters = 0;
    const auto d2h = [&](void* dst, const void* src, std::size_t bytes) {
      if (bytes) SY_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    };
    d2h(s.offsets.data(), s.plan.expert_offsets, s.offsets.size() * sizeof(std::int64_t));
    d2h(routed.data(), s.plan.routed_per_expert, routed.size() * sizeof(std::int64_t));
    d2h(kept.data(), s.plan.kept_per_expert, kept.size() * sizeof(std::int64_t));
    d2h(values.data(), loss_values.data(), values.size() * sizeof(double));
    d2h(&route_status, status.data(), sizeof(route_status));
    d2h(&plan_status, s.plan.status, sizeof(plan_status));
    d2h(&iters, iterations.data(), sizeof(iters));
    SY_CUDA_TRY(cudaStreamSynchronize(stream));
    throw_if_routing_failed(route_status);
    throw_if_plan_failed(plan_status, s.plan);

    // Experts over the kept rows, expert-major.
    const index_t R = s.offsets.back();
    s.rows_in = device_buffer<float>(static_cast<std::size_t>(R * H));
    permute(cuda, s.plan, s.x.data(), H, s.rows_in.data());
    s.rows_out = device_buffer<float>(static_cast<std::size_t>(R * H));
    s.expert_opts.dropout = expert_dropout{cfg_.expert_dropout, opt.seed, opt.step, opt.training};
    const expert_shape shape = expert_shape_of();
    s.expert_workspace = device_buffer<std::byte>(experts_->workspace_bytes(shape, R));
    experts_->forward(cuda, res_, shape, std::as_const(params_).experts(),
                      matrix_view<const float>(s.rows_in.data(), R, H), s.offsets,
                      matrix_view<float>(s.rows_out.data(), R, H),
                      std::span<std::byte>(s.expert_workspace.data(), s.expert_workspace.size()),
                      s.expert_opts);

    // Combine: y[t] = Σ_j w[t,j]·out[t,j]; w = prob unless DeepSpeed renormalises the kept ones.
    if (s.plan.renormalize_kept) {
      s.weights = device_buffer<float>(Tk);
      combine_weights(cuda, s.plan, s.topk_probs.data(), s.weights.data());
    }
    out.y = device_buffer<float>(TH);
    unpermute(cuda, s.plan, s.rows_out.data(), s.combine(), H, out.y.data());

    double aux = 0.0;
    for (std::size_t i = 0; i < lp.balance.size(); ++i) aux += values[i];
    detail::set_metrics(out.metrics, std::move(routed), std::move(kept), T, lp, aux, values.back(),
                        iters, dopt.capacity);
    return out;
  }

  /// dx [T][H] (device) for dy [T][H] (device) on `stream`; ADDS the router and expert gradients
  /// into `grads`. Consumes `s` (its expert buffers are released as backward goes).
  device_buffer<float> backward(DeviceMoESaved& s, const float* dy, cudaStream_t stream,
                                DeviceMoEGrads& grads) {
    SY_EXPECTS(!s.used,
               "DeviceMoELayer::backward: this forward's saved state was already consumed");
    s.used = true;
    const exec::Cuda cuda{stream};
    const index_t T = s.tokens, H = cfg_.hidden_size, E = cfg_.num_experts;
    const int k = router_->k();
    const index_t R = s.offsets.back();
    const auto Tk = static_cast<std::size_t>(T * k), TH = static_cast<std::size_t>(T * H);

    device_buffer<float> d_rows(static_cast<std::size_t>(R * H)), d_weight(Tk);
    unpermute_backward(cuda, s.plan, s.rows_out.data(), s.combine(), dy, H, d_rows.data(),
                       d_weight.data());
    device_buffer<float> d_prob;
    if (s.plan.renormalize_kept) {
      d_prob = device_buffer<float>(Tk);
      combine_weights_backward(cuda, s.plan, s.topk_probs.data(), d_weight.data(), d_prob.data());
    } else {
      d_prob = std::move(d_weight);  // unpermute_backward already gives 0 for dropped routes
    }
    s.rows_out = {};

    device_buffer<float> d_in(static_cast<std::size_t>(R * H));
    experts_->backward(cuda, res_, expert_shape_of(), std::as_const(params_).experts(),
                       matrix_view<const float>(s.rows_in.data(), R, H), s.offsets,
                       matrix_view<const float>(d_rows.data(), R, H),
                       matrix_view<float>(d_in.data(), R, H), grads.experts(),
                       std::span<std::byte>(s.expert_workspace.data(), s.expert_workspace.size()),
                       s.expert_opts);
    device_buffer<float> dx(TH);
    permute_backward(cuda, s.plan, d_in.data(), H, dx.data());

    // Router: d prob -> d logits (with the losses) -> dx, dW_r.
    device_buffer<float> dlogits(static_cast<std::size_t>(T * E));
    router_->backward(cuda, matrix_view<const float>(s.logits.data(), T, E), s.topk_indices.data(),
                      d_prob.data(), dlogits.data(), s.loss_workspace.data());
    device_buffer<float> dx_router(TH), dw(static_cast<std::size_t>(E * H));
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
    // The temporaries above are freed by cudaFree, which waits for the device: they are not
    // released while the kernels that read them are still queued.
    return dx;
  }

  /// Aux-loss-free balancing (REFERENCE §5) from the kept_per_expert of a global batch.
  void update_expert_bias(std::span<const std::int64_t> counts, cudaStream_t stream) {
    router_->update_expert_bias(counts, stream);
  }
  std::vector<double> expert_bias() const { return router_->expert_bias(); }

 private:
  expert_shape expert_shape_of() const {
    return {cfg_.num_experts, cfg_.hidden_size, cfg_.ffn_hidden_size, cfg_.add_bias_linear};
  }

  Config cfg_;
  ExpertPlacementMap placement_;
  std::unique_ptr<detail::device_router_hooks> router_;
  std::unique_ptr<detail::device_expert_hooks> experts_;
  DeviceMoEParams params_;
  cuda_expert_resources res_;
};

/// The device layer with its policies fixed at compile time (the config must select them):
///
///     using Layer = sy::DeviceMoELayer<sy::TopK<2, sy::Softmax>, sy::Capacity<sy::DropByProbs>,
///                                      sy::GLU<sy::SiLU>>;
///     Layer layer(cfg, sy::TopK<2, sy::Softmax>(sy::router_params(cfg)), stream);
template <RouterPolicy Router, DispatchPolicy Dispatcher, ExpertPolicy Expert>
class DeviceMoELayer : public DeviceMoELayerCore {
  static_assert(!(detail::is_sinkhorn_router<Router> && Dispatcher::has_capacity),
                "DeviceMoELayer: Sinkhorn routing cannot be combined with a Capacity dispatcher "
                "(REFERENCE 3): use Dropless");

 public:
  DeviceMoELayer(const Config& cfg, Router router, cudaStream_t stream = nullptr)
      : DeviceMoELayerCore(
            (detail::check_policies_match<Router, Dispatcher, Expert>(cfg), cfg),
            std::make_unique<detail::device_router_hooks_impl<Router>>(std::move(router), stream),
            std::make_unique<detail::device_expert_hooks_impl<Expert>>(), stream) {}
};

/// A device layer for a runtime config: every router (TopK<K, Softmax | PreSoftmax | Sigmoid |
/// SqrtSoftplus>, Sinkhorn<K>, K = 1..8) and expert policy make_layer() offers.
inline std::unique_ptr<DeviceMoELayerCore> make_device_layer(const Config& c,
                                                             cudaStream_t stream = nullptr) {
  DeviceMoELayerCore::check_supported(c);
  auto router = with_router(c, [&](auto r) -> std::unique_ptr<detail::device_router_hooks> {
    return std::make_unique<detail::device_router_hooks_impl<decltype(r)>>(std::move(r), stream);
  });
  auto experts = visit_expert_policy(c, [](auto p) -> std::unique_ptr<detail::device_expert_hooks> {
    return std::make_unique<detail::device_expert_hooks_impl<decltype(p)>>();
  });
  return std::make_unique<DeviceMoELayerCore>(c, std::move(router), std::move(experts), stream);
}

}  // namespace switchyard
