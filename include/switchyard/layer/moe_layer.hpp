#pragma once
/// \file MoELayer<Router, Dispatcher, Expert>: one MoE layer with expert parallelism on the host
/// backend (ARCHITECTURE.md, "One layer forward, as data flows"):
///
///   x [T,H] -> router linear -> logits -> router -> routes -> dispatch plan -> permute
///     -> (count exchange) all_to_all_v over the EP group -> grouped experts
///     -> reverse all_to_all_v -> unpermute (prob-weighted, fp32/double) -> y [T,H]
///
/// forward() returns y, the metrics and everything backward() needs (no hidden state);
/// backward() returns dx and ACCUMULATES the router and local expert gradients;
/// reduce_gradients() sums them over their data-parallel groups once per optimizer step (with
/// enable_expert_sync the experts' stay per replica and sync_expert_weights() averages the
/// weights every sync_frequency steps).
///
/// Losses and counts in a multi-rank layer are those of the dense data-parallel group: the count
/// map is summed over it and T is its token count (REFERENCE §5), so the per-rank loss terms sum
/// to the loss of the group's whole batch and the summed gradients equal one rank's gradients on
/// that batch (tested under mpirun). Capacity dispatch over more than one EP rank pads each
/// expert's rows to C (padding rows are zero and weigh 0); C comes from the rank's own T, so the
/// block sizes are exchanged as in dropless dispatch (ranks may hold different T, or none).
///
/// Tensor-parallel experts (tensor_parallel_size > 1, MoEComms::tensor_parallel): each rank holds
/// F/tp of every local expert (layer/detail/tensor_parallel.hpp); the TP ranks hold different
/// tokens, so the loss group is the dense data-parallel group times the TP group.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/comm/communicator.hpp"
#include "switchyard/comm/compression.hpp"
#include "switchyard/config/format.hpp"
#include "switchyard/config/validate.hpp"
#include "switchyard/core/philox.hpp"
#include "switchyard/dispatch/dispatch_types.hpp"
#include "switchyard/dispatch/permute.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/dispatch/renormalize.hpp"
#include "switchyard/dispatch/telemetry.hpp"
#include "switchyard/layer/detail/buffer_cache.hpp"
#include "switchyard/layer/detail/exchange.hpp"
#include "switchyard/layer/detail/expert_sync.hpp"
#include "switchyard/layer/detail/hooks.hpp"
#include "switchyard/layer/detail/initialize.hpp"
#include "switchyard/layer/detail/metrics.hpp"
#include "switchyard/layer/detail/tensor_parallel.hpp"
#include "switchyard/layer/layer_types.hpp"
#include "switchyard/routing/from_config.hpp"
#include "switchyard/routing/router_linear.hpp"
#include "switchyard/sharding/placement.hpp"

namespace switchyard {

namespace detail {
/// FNV-1a of every config field as text: what the ranks of a layer compare before the first
/// exchange (require_agreement).
inline std::uint64_t config_fingerprint(const Config& c) {
  std::string text;
#define SY_DETAIL_FINGERPRINT(type, name, def, section) \
  text += #name "=" + field_text(c, #name) + ";";
  SY_CONFIG_FIELDS(SY_DETAIL_FINGERPRINT)
#undef SY_DETAIL_FINGERPRINT
  return fnv1a64(text);
}

/// Throws config_error unless communicator `c` (host or device) has `expected` ranks.
template <class Comm>
void check_comm_size(const Comm& c, std::int64_t expected, const char* what) {
  if (c.size() != expected)
    throw config_error(concat("the ", what, " communicator has ", c.size(),
                              " ranks but the config needs ", expected));
}
}  // namespace detail

/// Everything forward keeps for backward.
template <class T>
struct MoESaved {
  index_t tokens = 0;
  std::vector<T> x;         ///< layer input [T][H]
  std::vector<T> x_router;  ///< router input x·u with input jitter [T][H]; empty without it
  /// The router's input: x with jitter applied, else x itself.
  const std::vector<T>& router_input() const { return x_router.empty() ? x : x_router; }
  Routing<T> routing;
  std::vector<std::int32_t> slots;  ///< routes relabelled to placement slots [T][k]
  DispatchPlan plan;                ///< over slots
  std::vector<T> weights;           ///< combine weights [T][k] (dispatch/renormalize.hpp)
  std::vector<std::int64_t> send_rows, recv_rows;  ///< [ep][E_local] rows per block
  /// Rows at this rank's experts, in two segments: [0] this rank's own tokens (never sent),
  /// [1] the rows received from the other EP ranks. Each is expert-major with its offsets
  /// [E_local + 1] and keeps its own expert workspace for backward; the workspace goes back to
  /// the layer's cache when backward has used it or this state is dropped (move-only). With
  /// tensor-parallel experts `in` holds the segment's rows of the whole TP group (`tp`).
  struct segment {
    std::vector<T> in;
    std::vector<index_t> offsets;  ///< this rank's rows
    detail::tp_rows tp;            ///< the TP group's rows; empty without tensor parallelism
    detail::cached_buffer workspace;
    /// Offsets of the rows the experts run on (`in`).
    const std::vector<index_t>& expert_offsets() const {
      return tp.offsets.empty() ? offsets : tp.offsets;
    }
  };
  segment local, remote;
  std::vector<T> rows_out;          ///< expert outputs back in plan order [R][H]
  /// The shared expert (empty without one): its output [T][H] before the gate, the gate's
  /// sigmoid [T] (empty without shared_expert_gate) and its workspace for backward. With
  /// tensor parallelism its F shard runs on the rows of the whole TP group: `shared_in` holds
  /// them (x of every TP rank, `shared_tp` their counts); without TP it runs on `x`.
  std::vector<T> shared_out, shared_scale, shared_in;
  detail::tp_rows shared_tp;
  detail::cached_buffer shared_workspace;
  expert_options expert_opts;
  bool used = false;                ///< backward consumes the expert workspace once
  std::uint64_t placement_moves = 0;  ///< the layer's moves when forward ran (move_experts)
};

/// What forward returns.
template <class T>
struct MoEForward {
  std::vector<T> y;  ///< [T][H]
  MoEMetrics metrics;
  MoESaved<T> saved;
};

/// The layer body, independent of the policy types (they come in through the hooks). Use it
/// through MoELayer<Router, Dispatcher, Expert> (compile-time policies) or make_layer() (a
/// runtime config).
template <class T, Communicator Comm>
class MoELayerCore {
  static_assert(HostCommunicator<Comm>,
                "MoELayer: the host layer exchanges host memory, and this communicator moves "
                "device memory (NcclComm): use DeviceMoELayer with DeviceMoEComms "
                "(layer/device_layer.cuh)");

 public:
  MoELayerCore(const Config& cfg, MoEComms<Comm> comms,
               std::unique_ptr<detail::router_hooks<T>> router,
               std::unique_ptr<detail::expert_hooks<T>> experts)
      : cfg_(cfg),
        comms_(comms),
        placement_(cfg),
        migration_(cfg),
        router_(std::move(router)),
        experts_(std::move(experts)) {
    require_valid(cfg_);
    SY_EXPECTS(comms.expert_parallel && comms.dense_data_parallel && comms.expert_data_parallel,
               "MoELayer needs its three communicators (use the same LocalComm for one rank)");
    const std::int64_t tp = cfg_.tensor_parallel_size;
    if (tp > 1 && !comms.tensor_parallel)
      throw config_error(detail::concat(
          "tensor_parallel_size: ", tp,
          " needs MoEComms::tensor_parallel, the communicator of this rank's TP group"));
    if (comms.tensor_parallel)
      detail::check_comm_size(*comms.tensor_parallel, tp, "tensor-parallel");
    if (cfg_.gradient_compression && !BfloatCommunicator<Comm>)
      throw config_error(
          "gradient_compression: this communicator cannot sum bfloat16 (its all_reduce takes no "
          "switchyard::bf16 elements; LocalComm and MpiComm can): leave it false");
    const std::int64_t ep = placement_.ep();
    const std::int64_t dense = cfg_.dp() * cfg_.expert_parallel_size;
    detail::check_comm_size(*comms.expert_parallel, ep, "expert-parallel");
    detail::check_comm_size(*comms.dense_data_parallel, dense, "dense data-parallel");
    detail::check_comm_size(*comms.expert_data_parallel, dense / ep, "expert-data-parallel");
    if (router_->k() != cfg_.num_experts_per_token)
      throw config_error(detail::concat("num_experts_per_token: the config has k = ",
                                        cfg_.num_experts_per_token, " but the router has k = ",
                                        router_->k()));
    // The loss group sums the router's forward makes (fixed by its losses and E), for a rank
    // whose router fails to join the ones it missed (forward).
    router_sums_ = router_->group_sums(cfg_.num_experts);
    const index_t El = placement_.local_experts();
    params_ = MoEParams<T>(cfg_.num_experts, El, cfg_.hidden_size, cfg_.ffn_hidden_size / tp,
                           experts_->fc1_multiplier(), cfg_.add_bias_linear,
                           cfg_.shared_expert_intermediate_size.value_or(0) / tp,
                           cfg_.shared_expert_gate);
    // fc2's bias is added once per row: by TP rank 0; the others add zeros in its place.
    if (tp > 1 && cfg_.add_bias_linear && tp_rank() != 0)
      zero_fc2_bias_.assign(static_cast<std::size_t>(El * cfg_.hidden_size), T(0));
    // Collective safety: every rank agrees on the config before any exchange. With TP, over
    // the dense group and then the TP group, which first hears whether the dense stage failed
    // (so no rank waits in the TP stage for a peer that has thrown).
    const std::uint64_t fingerprint = detail::config_fingerprint(cfg_);
    agree_in_group(fingerprint, "layer config");
  }

  const Config& config() const { return cfg_; }
  MoEParams<T>& params() { return params_; }
  const MoEParams<T>& params() const { return params_; }
  const ExpertPlacementMap& placement() const { return placement_; }
  /// Expert migration's record of the steps so far (the smoothed loads; migrate_experts).
  const migration_schedule& migration() const { return migration_; }
  int ep_rank() const { return comms_.expert_parallel->rank(); }
  /// This rank's place in its TP group: it holds F columns [tp_rank·F/tp, (tp_rank+1)·F/tp).
  int tp_rank() const { return tensor_parallel() ? comms_.tensor_parallel->rank() : 0; }
  /// Gradients with this layer's shapes, zero.
  MoEGrads<T> make_grads() const { return params_.zeros_like(); }

  /// Seeded initialisation: router N(0, σ²) with σ = 0.02 (Megatron's init_method_std) drawn by
  /// Philox keyed by (seed, element); experts by the config's initialization_strategy, keyed by
  /// their global id, so every layout gets the same weights.
  void initialize(std::uint64_t seed) {
    detail::initialize_params(params_, cfg_, placement_, ep_rank(), *experts_, seed, tp_rank(),
                              cfg_.tensor_parallel_size);
  }

  /// y = MoE(x) for x [T][H] (T may be 0 on some ranks: every rank joins every collective).
  MoEForward<T> forward(matrix_view<const T> x, const ForwardOptions& opt = {}) {
    const index_t Tn = x.extent(0), H = cfg_.hidden_size, E = cfg_.num_experts;
    const int k = router_->k();
    MoEForward<T> out;
    MoESaved<T>& s = out.saved;
    std::vector<T> logits;
    RouteContext ctx;
    ctx.training = opt.training;
    ctx.global_aux = opt.global_aux;
    // The local stage: a failure here (a wrong shape, NaN or Inf in x·W_r, out of memory) on
    // any rank is an error on every rank before the first collective (fail_together), never a
    // hang. The outputs are allocated here too: after the exchanges only the metrics' reduction
    // is left, which a rank failing then would leave its peers waiting in.
    std::exception_ptr failed;
    std::vector<double> sum_zeros;  // what a rank whose router failed sends in the sums it missed
    // Dispatch over placement slots, so the rows of each EP rank are contiguous; the capacity
    // comes from this rank's T (a capacity too large for it fails here, with its group).
    const std::int64_t ep = placement_.ep(), El = placement_.local_experts();
    DispatchOptions dopt;
    detail::keep_failure(failed, [&] {
      SY_EXPECTS(x.extent(1) == H, detail::concat("MoELayer::forward: x has ", x.extent(1),
                                                  " columns, hidden_size is ", H));
      dopt = dispatch_options(cfg_, Tn);
      if (dopt.capacity && ep > 1) dopt.pad_to_capacity = true;  // C rows per expert, as Megatron
      if (router_sums_ && !router_sums_->empty())
        sum_zeros.resize(*std::max_element(router_sums_->begin(), router_sums_->end()));
      s.tokens = Tn;
      s.placement_moves = placement_moves_;
      s.x.assign(x.data_handle(), x.data_handle() + Tn * H);
      out.y.resize(static_cast<std::size_t>(Tn * H));
      s.weights.resize(static_cast<std::size_t>(Tn * k));
      logits.resize(static_cast<std::size_t>(Tn * E));
      if (opt.training && cfg_.input_jitter_eps) {
        s.x_router = s.x;
        JitterParams j{*cfg_.input_jitter_eps, opt.seed, opt.step,
                       static_cast<std::uint32_t>(token_group_rank() * Tn)};
        apply_input_jitter(exec::Host{}, matrix_view<T>(s.x_router.data(), Tn, H), j);
      }
      router_linear_forward(exec::Host{}, matrix_view<const T>(s.router_input().data(), Tn, H),
                            std::as_const(params_).router(), vector_view<const T>(),
                            matrix_view<T>(logits.data(), Tn, E));
      check_logits_finite(matrix_view<const T>(logits.data(), Tn, E));
      check_balance_inputs(loss_params(cfg_), Tn, ctx);
    });
    fail_together_in_group(failed, "MoELayer::forward");

    // Group statistics for the losses (REFERENCE §5): counts and T over the dense DP group (and
    // the TP group, whose ranks hold other tokens). A failure inside one of the library's
    // routers (out of memory for its [T][E] arrays) is kept: the rank joins the group sums it
    // missed, with zeros, and sends no rows, and the group fails together at the next check. A
    // failed sum (the communicator's error), sums other than the router's known ones, or a
    // router whose sums are not known: the failure is thrown at once. (A GlobalAuxLoss passed
    // in ForwardOptions may then hold this micro-batch on some ranks and not on others: reset
    // it after a failed forward, docs/reliability.md.)
    const std::optional<std::vector<std::size_t>>& sums = router_sums_;
    std::size_t sums_made = 0;
    bool summing = false, sums_as_known = sums.has_value();
    ctx.group_sum = [&](std::span<double> v) {
      if (sums_as_known && (sums_made >= sums->size() || v.size() != (*sums)[sums_made]))
        sums_as_known = false;
      summing = true;
      group_all_reduce(v.data(), static_cast<std::int64_t>(v.size()), ReduceOp::sum);
      summing = false;
      ++sums_made;
    };
    detail::keep_failure(failed, [&] {
      s.routing = router_->forward(matrix_view<const T>(logits.data(), Tn, E), ctx);
    });
    if (failed) {
      if (summing || !sums_as_known) std::rethrow_exception(failed);
      for (; sums_made < sums->size(); ++sums_made) {
        std::fill(sum_zeros.begin(), sum_zeros.end(), 0.0);  // the last sum overwrote them
        group_all_reduce(sum_zeros.data(), static_cast<std::int64_t>((*sums)[sums_made]),
                         ReduceOp::sum);
      }
    }

    // The shared expert (its TP collectives agree on failures within the TP group), then the
    // dispatch. A failure in either (out of memory for the rows) is kept (keep_failure): the
    // rank sends no rows and the group fails together before any row moves (exchange_apply), or
    // with one EP rank after the experts.
    detail::tp_traffic tp_moved;
    if (params_.has_shared_expert()) shared_forward(s, x, failed, &tp_moved);
    std::vector<T> rows;
    detail::keep_failure(failed, [&] {
      s.slots.resize(s.routing.topk_indices.size());
      for (std::size_t i = 0; i < s.slots.size(); ++i)
        s.slots[i] = static_cast<std::int32_t>(placement_.slot(s.routing.topk_indices[i]));
      s.plan =
          build_plan(exec::Host{}, dopt, matrix_view<const std::int32_t>(s.slots.data(), Tn, k),
                     s.routing.probs());
      rows.resize(static_cast<std::size_t>(s.plan.rows() * H));
      permute(exec::Host{}, s.plan, x, matrix_view<T>(rows.data(), s.plan.rows(), H));
      // Rows per (peer, local expert) both ways.
      s.send_rows.assign(static_cast<std::size_t>(ep * El), 0);
      for (std::int64_t slot = 0; slot < ep * El; ++slot)
        s.send_rows[static_cast<std::size_t>(slot)] = s.plan.rows_of(slot);
    });
    if (failed) {  // no rows leave this rank
      std::vector<T>().swap(rows);
      s.send_rows.assign(static_cast<std::size_t>(ep * El), 0);
    }
    const index_t R = s.plan.rows();
    if (ep == 1) {
      s.recv_rows = s.send_rows;
    } else {
      // Counts both ways also for padded capacity blocks: C comes from each rank's own T, and T
      // may differ across the EP group (a rank with no tokens has C = min_capacity).
      s.recv_rows.assign(static_cast<std::size_t>(ep * El), 0);
      const std::vector<std::int64_t> per_peer(static_cast<std::size_t>(ep), El);
      comms_.expert_parallel->all_to_all_v(s.send_rows.data(), per_peer, s.recv_rows.data(),
                                           per_peer);
    }
    s.expert_opts.dropout = expert_dropout{cfg_.expert_dropout, opt.seed, opt.step, opt.training};
    const expert_shape shape{El, H, params_.ffn_hidden, params_.bias};
    // With EP the group checks before the first rows move (the dispatch, its buffers); with one
    // EP rank nothing waits for this rank until the check after the experts.
    s.rows_out = exchange_apply(
        std::move(rows), s, H, failed, ep > 1 ? "MoELayer::forward: dispatch" : nullptr,
        &out.metrics, [&](int seg, std::vector<T> in) {
          typename MoESaved<T>::segment& g = seg == 0 ? s.local : s.remote;
          if (tensor_parallel()) {  // the segment's rows of the whole TP group
            g.tp = detail::tp_gather_counts(*comms_.tensor_parallel, g.offsets);
            g.in = detail::tp_gather_rows(*comms_.tensor_parallel, g.tp, in, H, failed,
                                          "MoELayer::forward: TP gather", &tp_moved);
          } else {
            g.in = std::move(in);
          }
          const std::vector<index_t>& off = g.expert_offsets();
          const index_t n = off.back();
          std::vector<T> y;
          detail::keep_failure(failed, [&] {
            g.workspace = workspace_cache_.take(experts_->workspace_bytes(shape, n));
            y.resize(static_cast<std::size_t>(n * H));
            experts_->forward(shape, forward_weights(), matrix_view<const T>(g.in.data(), n, H),
                              off, matrix_view<T>(y.data(), n, H), g.workspace,
                              segment_options(s, seg));
          });
          // After a failure: zero rows of the sizes the peers expect, in memory already held
          // (with TP this rank's own rows, which the reduce-scatter fills when it runs).
          std::vector<T>& result = tensor_parallel() ? in : y;
          if (tensor_parallel())
            detail::tp_reduce_scatter(*comms_.tensor_parallel, g.tp, y, in, H, failed,
                                      "MoELayer::forward: TP reduce-scatter", &tp_moved);
          else if (failed)
            y = std::move(g.in);
          if (failed) std::fill(result.begin(), result.end(), T(0));
          return std::move(result);
        });
    fail_together_in_group(
        failed, ep > 1 ? "MoELayer::forward: experts" : "MoELayer::forward: dispatch and experts");
    out.metrics.tp_bytes_sent = tp_moved.sent;
    out.metrics.tp_bytes_received = tp_moved.received;

    combine_weights(exec::Host{}, s.plan, s.routing.probs(),
                    matrix_view<T>(s.weights.data(), Tn, k));
    unpermute(exec::Host{}, s.plan, matrix_view<const T>(s.rows_out.data(), R, H),
              matrix_view<const T>(s.weights.data(), Tn, k), matrix_view<T>(out.y.data(), Tn, H));
    if (params_.has_shared_expert()) {  // y = routed experts + gate · shared expert
      for (index_t t = 0; t < Tn; ++t) {
        const T g = s.shared_scale.empty() ? T(1) : s.shared_scale[static_cast<std::size_t>(t)];
        const std::size_t row = static_cast<std::size_t>(t * H);
        for (index_t h = 0; h < H; ++h) out.y[row + h] += g * s.shared_out[row + h];
      }
    }
    fill_metrics(s, dopt, out.metrics);
    return out;
  }

  /// dx [T][H] for dy [T][H]; adds the router and local expert gradients into `grads`.
  std::vector<T> backward(MoESaved<T>& s, matrix_view<const T> dy, MoEGrads<T>& grads) {
    const index_t Tn = s.tokens, H = cfg_.hidden_size, E = cfg_.num_experts;
    const int k = router_->k();
    const index_t R = s.plan.rows();
    std::vector<T> d_rows;  // takes over the expert outputs' buffer (unpermute_backward allows it)
    std::vector<T> d_weight, d_prob, dx, dlogits, dx_router, dw;
    std::vector<T> dx_shared, d_shared_gate;  // the shared expert's dx and gate gradient
    // The local stage, failing together as in forward (the check runs in exchange_apply, after
    // the exchange's buffers are allocated). The router's part runs here (d prob comes from the
    // combine alone): no collective follows the experts' check, so a rank failing after it
    // (out of memory inside the router's backward) would throw alone and leave its peers
    // waiting in the step's next collective. Its weight gradient is added after the check.
    std::exception_ptr failed;
    detail::keep_failure(failed, [&] {
      SY_EXPECTS(!s.used, "MoELayer::backward: this forward's saved state was already consumed");
      SY_EXPECTS(s.placement_moves == placement_moves_,
                 "MoELayer::backward: the experts moved (move_experts) after this forward: its "
                 "saved rows belong to the old placement");
      SY_EXPECTS(dy.extent(0) == Tn && dy.extent(1) == H,
                 detail::concat("MoELayer::backward: dy is [", dy.extent(0), "][", dy.extent(1),
                                "], the forward had [", Tn, "][", H, "]"));
      for (std::vector<T>* v : {&d_weight, &d_prob}) v->resize(static_cast<std::size_t>(Tn * k));
      for (std::vector<T>* v : {&dx, &dx_router}) v->resize(static_cast<std::size_t>(Tn * H));
      dlogits.resize(static_cast<std::size_t>(Tn * E));
      dw.resize(static_cast<std::size_t>(E * H));
      s.used = true;  // from here on the saved state is consumed
      d_rows = std::move(s.rows_out);
      unpermute_backward(exec::Host{}, s.plan, matrix_view<const T>(d_rows.data(), R, H),
                         matrix_view<const T>(s.weights.data(), Tn, k), dy,
                         matrix_view<T>(d_rows.data(), R, H),
                         matrix_view<T>(d_weight.data(), Tn, k));
      combine_weights_backward(exec::Host{}, s.plan, s.routing.probs(),
                               matrix_view<const T>(d_weight.data(), Tn, k),
                               matrix_view<T>(d_prob.data(), Tn, k));
      // Router: d prob (0 for dropped routes) -> d logits (with the losses) -> dx, dW_r.
      router_->backward(s.routing, matrix_view<const T>(d_prob.data(), Tn, k),
                        matrix_view<T>(dlogits.data(), Tn, E));
      router_linear_backward(exec::Host{}, matrix_view<const T>(s.router_input().data(), Tn, H),
                             std::as_const(params_).router(),
                             matrix_view<const T>(dlogits.data(), Tn, E),
                             matrix_view<T>(dx_router.data(), Tn, H),
                             matrix_view<T>(dw.data(), E, H), vector_view<T>());
    });
    // The shared expert (with TP its collectives agree on failures within the TP group).
    if (params_.has_shared_expert())
      shared_backward(s, dy, grads, dx_shared, d_shared_gate, failed);
    const expert_shape shape{placement_.local_experts(), H, params_.ffn_hidden, params_.bias};
    // As in forward; a failure in the experts leaves this step's expert grads partial.
    const std::vector<T> d_rows_in = exchange_apply(
        std::move(d_rows), s, H, failed, "MoELayer::backward", nullptr,
        [&](int seg, std::vector<T> d_out) {
          typename MoESaved<T>::segment& g = seg == 0 ? s.local : s.remote;
          std::vector<T> gathered;  // with TP: dy of the TP group's rows, as forward gathered them
          if (tensor_parallel())
            gathered = detail::tp_gather_rows(*comms_.tensor_parallel, g.tp, d_out, H, failed,
                                              "MoELayer::backward: TP gather");
          std::vector<T>& d = tensor_parallel() ? gathered : d_out;
          const std::vector<index_t>& off = g.expert_offsets();
          const index_t n = off.back();
          // dx overwrites dy in place (the host experts read dy only before writing dx), and
          // the segment's inputs and workspace are released once used: backward keeps shrinking.
          detail::keep_failure(failed, [&] {
            experts_->backward(shape, std::as_const(params_).experts(),
                               matrix_view<const T>(g.in.data(), n, H), off,
                               matrix_view<const T>(d.data(), n, H), matrix_view<T>(d.data(), n, H),
                               grads.experts(), g.workspace, segment_options(s, seg));
          });
          std::vector<T>().swap(g.in);
          g.workspace.reset();  // back to the cache for the next forward
          if (tensor_parallel()) {  // each row's dx is the sum of its F shards' partials
            detail::tp_reduce_scatter(*comms_.tensor_parallel, g.tp, gathered, d_out, H, failed,
                                      "MoELayer::backward: TP reduce-scatter");
            if (failed) std::fill(d_out.begin(), d_out.end(), T(0));
          }
          return d_out;
        });
    fail_together_in_group(failed, "MoELayer::backward: experts");
    permute_backward(exec::Host{}, s.plan, matrix_view<const T>(d_rows_in.data(), R, H),
                     matrix_view<T>(dx.data(), Tn, H));
    const bool jitter = !s.x_router.empty();
    for (std::size_t i = 0; i < static_cast<std::size_t>(Tn * H); ++i)
      dx[i] += router_input_grad(dx_router[i], s.x[i], jitter ? &s.x_router[i] : nullptr);
    for (std::size_t i = 0; i < dw.size(); ++i) grads.router_weight[i] += dw[i];
    for (std::size_t i = 0; i < dx_shared.size(); ++i) dx[i] += dx_shared[i];
    for (std::size_t i = 0; i < d_shared_gate.size(); ++i) grads.shared_gate[i] += d_shared_gate[i];
    return dx;
  }

  /// Sums gradients over their groups (once per optimizer step, after the last micro-batch):
  /// the router's and the shared expert gate's over the dense data-parallel group and the TP
  /// group, the shared expert's (each TP rank's F shard) over the dense data-parallel group,
  /// the experts' (each rank's F shard) over the expert-data-parallel group. Collective.
  ///
  /// With enable_expert_sync the expert replicas (the ranks of the expert-data-parallel group)
  /// train apart between syncs: the experts' gradients are not summed over the group but scaled
  /// by its size D, so each replica steps with an estimate of the whole batch's gradient (the
  /// sum of the D replicas' gradients, which they approach on average); sync_expert_weights()
  /// then averages the weights every sync_frequency steps. With SGD and sync_frequency 1 this is
  /// the same update as without expert sync.
  ///
  /// With enable_expert_sync, reduce_gradients() throws precondition_error (on every rank, before
  /// any collective) when sync_frequency steps passed without sync_expert_weights() averaging:
  /// replicas that are never averaged would drift apart unnoticed.
  ///
  /// With gradient_compression every sum here runs in bfloat16 (comm/compression.hpp: each
  /// rank's gradient rounded to bfloat16, summed in rank order with every partial sum rounded,
  /// widened back), also over a group of one rank; with TP the replicated tensors are summed in
  /// bfloat16 over the dense group, then over the TP group. Expert gradients that expert sync
  /// scales instead of summing are not rounded.
  void reduce_gradients(MoEGrads<T>& g) {
    sync_clock_.count_reduction(cfg_, "MoELayer::reduce_gradients");
    const bool compress = cfg_.gradient_compression;
    // With compression, one bfloat16 buffer for the largest tensor, allocated first: the loss
    // group (every group below lies inside it) fails together on it, so no rank waits in a sum
    // a peer out of memory skips.
    std::vector<bf16> packed;
    if (compress) {
      std::size_t most = 0;
      g.for_each_tensor([&](std::vector<T>& v) { most = std::max(most, v.size()); });
      std::exception_ptr failed;
      detail::keep_failure(failed, [&] { packed.resize(most); });
      fail_together_in_group(failed, "MoELayer::reduce_gradients");
    }
    const auto sum_over = [&](Comm& c, std::vector<T>& v) {
      if (!v.empty())
        sum_gradients(c, v.data(), static_cast<std::int64_t>(v.size()), compress,
                      std::span<bf16>(packed));
    };
    g.for_each_replicated_tensor([&](std::vector<T>& v) {
      sum_over(*comms_.dense_data_parallel, v);
      if (tensor_parallel()) sum_over(*comms_.tensor_parallel, v);
    });
    g.for_each_shared_expert_tensor(
        [&](std::vector<T>& v) { sum_over(*comms_.dense_data_parallel, v); });
    Comm& replicas = *comms_.expert_data_parallel;
    const T D = static_cast<T>(replicas.size());
    g.for_each_expert_tensor([&](std::vector<T>& v) {
      if (!cfg_.enable_expert_sync)
        sum_over(replicas, v);
      else if (D != T(1))
        for (T& x : v) x *= D;
    });
  }

  /// Expert sync (enable_expert_sync): call after optimizer step `step` (counted from 1) on
  /// every rank. On every sync_frequency-th step it averages this rank's expert weights (its
  /// local experts, with TP its F shard; biases included) over the expert-data-parallel group,
  /// so the replicas hold the same experts again, and returns true; else, and always without
  /// enable_expert_sync, it does nothing and returns false. Optimizer state (e.g. AdamW's
  /// moments) is the caller's and stays per replica. Collective over the expert-data-parallel
  /// group on the steps it averages.
  bool sync_expert_weights(std::int64_t step) {
    if (!detail::expert_sync_clock::due(cfg_, step)) return false;
    average_expert_weights();
    return true;
  }
  /// Averages this rank's expert weights over the expert-data-parallel group now (what
  /// sync_expert_weights() does on its steps; also a way to re-synchronise replicas that were
  /// loaded apart). Collective over that group.
  void average_expert_weights() {
    sync_clock_.averaged();
    Comm& replicas = *comms_.expert_data_parallel;
    if (replicas.size() == 1) return;
    const T inv = T(1) / static_cast<T>(replicas.size());
    params_.for_each_expert_tensor([&](std::vector<T>& v) {
      if (v.empty()) return;
      replicas.all_reduce(v.data(), static_cast<std::int64_t>(v.size()), ReduceOp::sum);
      for (T& x : v) x *= inv;
    });
  }

  /// Expert migration (enable_expert_migration, sharding_strategy Dynamic or a migration
  /// object; docs/layer.md,
  /// "Expert migration"): call after each optimizer step on every rank, with the step's tokens
  /// per global expert [E] (the same numbers on every rank: e.g. kept_per_expert summed over the
  /// step's micro-batches) and every other tensor the caller keeps per local expert (leading
  /// dimension E_local: optimizer state such as AdamW's moments; gradients unless they are
  /// zero). The step is recorded in the layer's migration_schedule (the config's load_balancing
  /// object: loads smoothed over the steps, a check every check_frequency-th step; without one,
  /// a check after every step from its loads). At a check, when the EP ranks' imbalance under the
  /// current placement (the busiest rank's tokens over the mean, minus 1) is above the threshold
  /// and a better placement exists (migration_target: the balanced packing, or swaps when that
  /// would move more than max_concurrent_migrations experts), the experts move there
  /// (move_experts) and it returns true; otherwise nothing moves and it returns false. Without
  /// migration it returns false at once, with no collective. Collective over the loss group
  /// (dense data-parallel, then TP): the loads must agree on every rank (comm_error on every
  /// rank when they differ), and a move is an all-to-all over the EP group. Call it between
  /// steps: backward refuses a saved forward state from before a move (precondition_error).
  bool migrate_experts(std::span<const std::int64_t> load,
                       std::span<std::vector<T>* const> also = {}) {
    if (!cfg_.migrates_experts()) return false;
    // The decision comes from the loads and the schedule's record, made in the local stage
    // (whose failures, out of memory included, the group shares); the ranks then agree on the
    // loads, the steps recorded and the decision (a hash of the three) before anything moves.
    std::exception_ptr failed;
    std::uint64_t fingerprint = 0;
    std::optional<ExpertPlacementMap> next;
    detail::keep_failure(failed, [&] {
      next = migration_.decide(placement_, load);
      fingerprint = migration_.fingerprint();
    });
    fail_together_in_group(failed, "MoELayer::migrate_experts");
    agree_in_group(fingerprint, "expert loads of MoELayer::migrate_experts");
    if (next) move_experts(*next, also);  // fails together: then no rank records the step
    migration_.commit();
    return next.has_value();
  }

  /// Moves the experts to placement `to` (the same number of experts and EP ranks, and the same
  /// placement on every rank): each local-expert tensor of the parameters (fc1, fc2 and their
  /// biases; with TP the rank's F shard) and of `also` (leading dimension E_local, the same
  /// tensors in the same order on every rank) goes to the expert's new owner and local index,
  /// an all-to-all over the EP group; then placement() is `to`. Expert e keeps its weights
  /// (initialize() keys them by global id), so the layer computes what it did before, from other
  /// ranks (without expert_dropout: dropout masks follow row positions). Collective over the loss
  /// group: a buffer that cannot be allocated, a tensor that is not E_local experts' worth or is
  /// given twice, or ranks that disagree on `to` or on the tensors' sizes are an error on every
  /// rank before anything moves. A communicator error during the exchanges leaves the experts
  /// partly moved: abort then, as after any communicator error inside the layer.
  void move_experts(const ExpertPlacementMap& to, std::span<std::vector<T>* const> also = {}) {
    std::vector<std::vector<T>*> tensors;
    const std::int64_t El = placement_.local_experts();
    std::exception_ptr failed;
    std::vector<T> send, recv;
    expert_move_check check;  // what the ranks must agree on: `to`, then the sizes
    expert_move move;
    std::vector<std::int64_t> send_counts, recv_counts;
    detail::keep_failure(failed, [&] {
      move = plan_expert_move(placement_, to, ep_rank());
      params_.for_each_expert_tensor([&](std::vector<T>& v) {
        if (!v.empty()) tensors.push_back(&v);
      });
      for (std::vector<T>* v : also) {
        SY_EXPECTS(v != nullptr, "MoELayer::move_experts: a null tensor");
        SY_EXPECTS(std::find(tensors.begin(), tensors.end(), v) == tensors.end(),
                   "MoELayer::move_experts: a tensor given twice (or one of the layer's own "
                   "weights, which it moves itself)");
        if (!v->empty()) tensors.push_back(v);
      }
      std::vector<std::size_t> sizes;
      for (const std::vector<T>* v : tensors) sizes.push_back(v->size());
      check = check_expert_move(to, sizes, "MoELayer::move_experts");
      send.resize(check.most);
      recv.resize(check.most);
    });
    fail_together_in_group(failed, "MoELayer::move_experts");
    agree_in_group(check.fingerprint, "placement and tensors of MoELayer::move_experts");
    for (std::vector<T>* t : tensors) {
      std::vector<T>& v = *t;
      const auto n = static_cast<std::int64_t>(v.size()) / El;
      for (std::size_t i = 0; i < move.send_local.size(); ++i)
        std::copy_n(v.begin() + move.send_local[i] * n, n,
                    send.begin() + static_cast<std::int64_t>(i) * n);
      move.counts(n, send_counts, recv_counts);
      comms_.expert_parallel->all_to_all_v(send.data(), send_counts, recv.data(), recv_counts);
      for (std::size_t i = 0; i < move.recv_local.size(); ++i)
        std::copy_n(recv.begin() + static_cast<std::int64_t>(i) * n, n,
                    v.begin() + move.recv_local[i] * n);
    }
    placement_ = to;
    ++placement_moves_;
  }

  /// Aux-loss-free balancing (REFERENCE §5): β update from the dispatched (post-drop) tokens per
  /// expert of a global batch, e.g. the kept_per_expert metric summed over its micro-batches.
  void update_expert_bias(std::span<const std::int64_t> dispatched_counts) {
    router_->update_expert_bias(dispatched_counts);
  }
  std::vector<double> expert_bias() const { return router_->expert_bias(); }

  /// Bytes of expert workspace kept for the next forward (at most three buffers, given back by
  /// backward or by a dropped saved state: layer/detail/buffer_cache.hpp), and freeing them
  /// (e.g. before a phase that needs the memory).
  std::size_t cached_bytes() const { return workspace_cache_.bytes(); }
  void release_cached_memory() { workspace_cache_.clear(); }

 private:
  bool tensor_parallel() const { return cfg_.tensor_parallel_size > 1; }
  // The expert weights forward runs: with TP, fc2's bias on TP rank 0 only (the partial outputs
  // are summed). Backward needs no bias values: every TP rank gets fc2's whole bias gradient
  // (the column sums of the gathered dy), so the replicas stay equal.
  expert_weights<T> forward_weights() const {
    expert_weights<T> w = params_.experts();
    if (!zero_fc2_bias_.empty())
      w.fc2_bias =
          matrix_view<const T>(zero_fc2_bias_.data(), params_.local_experts, params_.hidden);
    return w;
  }
  // This rank among the ranks holding other tokens of the same model replica (dense DP × TP, in
  // world-rank order: rank = tp + tp_size·dense).
  std::int64_t token_group_rank() const {
    return static_cast<std::int64_t>(comms_.dense_data_parallel->rank()) *
               cfg_.tensor_parallel_size +
           tp_rank();
  }
  // The shared expert (Megatron-Core's SharedExpertMLP): an expert of F = shared FFN size over
  // every token, without biases or dropout, its output scaled by sigmoid(x·g) with the gate.
  // With tensor parallelism (Megatron's column- and row-parallel linears under sequence
  // parallelism) each TP rank runs its F shard on the rows of the whole TP group and each row's
  // partial outputs are summed back on its rank, as for the experts.
  expert_shape shared_shape() const {
    return expert_shape{1, params_.hidden, params_.shared_ffn_hidden, false};
  }
  // The shared expert's input rows and their offsets [0, rows]: s.shared_in with TP (the TP
  // group's rows), else x (`own` = {0, T}).
  struct shared_input {
    matrix_view<const T> rows;
    std::span<const index_t> offsets;
  };
  shared_input shared_rows(const MoESaved<T>& s, std::span<const index_t> own) const {
    const std::span<const index_t> off = tensor_parallel() ? s.shared_tp.offsets : own;
    const index_t n = off.empty() ? 0 : off.back();
    return {matrix_view<const T>(tensor_parallel() ? s.shared_in.data() : s.x.data(), n,
                                 params_.hidden),
            off};
  }
  // Forward: s.shared_out = shared(x), s.shared_scale = sigmoid(x·g). Keeps its failures in
  // `failed` (nothing runs once it holds one); with TP collective over the TP group.
  void shared_forward(MoESaved<T>& s, matrix_view<const T> x, std::exception_ptr& failed,
                      detail::tp_traffic* moved) {
    const index_t Tn = x.extent(0), H = params_.hidden;
    const index_t own[2] = {0, Tn};
    if (tensor_parallel()) {  // x of the whole TP group
      s.shared_tp = detail::tp_gather_counts(*comms_.tensor_parallel, own);
      s.shared_in = detail::tp_gather_rows(*comms_.tensor_parallel, s.shared_tp, s.x, H, failed,
                                           "MoELayer::forward: shared expert TP gather", moved);
    }
    const shared_input in = shared_rows(s, own);
    const index_t n = in.rows.extent(0);
    std::vector<T> out;  // the rows' outputs (with TP this rank's partials)
    detail::keep_failure(failed, [&] {
      s.shared_workspace = workspace_cache_.take(experts_->workspace_bytes(shared_shape(), n));
      out.resize(static_cast<std::size_t>(n * H));
      if (tensor_parallel()) s.shared_out.resize(static_cast<std::size_t>(Tn * H));
      experts_->forward(shared_shape(), std::as_const(params_).shared_expert(), in.rows, in.offsets,
                        matrix_view<T>(out.data(), n, H), s.shared_workspace, expert_options{});
      if (params_.shared_gate.empty()) return;
      s.shared_scale.resize(static_cast<std::size_t>(Tn));
      for (index_t t = 0; t < Tn; ++t) {
        T z = 0;
        for (index_t h = 0; h < H; ++h)
          z += x(t, h) * params_.shared_gate[static_cast<std::size_t>(h)];
        s.shared_scale[static_cast<std::size_t>(t)] = T(1) / (T(1) + std::exp(-z));
      }
    });
    if (tensor_parallel())
      detail::tp_reduce_scatter(*comms_.tensor_parallel, s.shared_tp, out, s.shared_out, H, failed,
                                "MoELayer::forward: shared expert TP reduce-scatter", moved);
    else
      s.shared_out = std::move(out);
  }
  // Backward: dx of the shared expert and its gate into `dx_shared`, the gate's gradient into
  // `d_gate` (both added to dx and grads by the caller), the shared expert's gradients into
  // `grads`. Failures and collectives as in shared_forward.
  void shared_backward(MoESaved<T>& s, matrix_view<const T> dy, MoEGrads<T>& grads,
                       std::vector<T>& dx_shared, std::vector<T>& d_gate,
                       std::exception_ptr& failed) {
    const index_t Tn = s.tokens, H = params_.hidden;
    const index_t own[2] = {0, Tn};
    const matrix_view<const T> x(s.x.data(), Tn, H);
    std::vector<T> d_logit;  // d z of the gate's sigmoid(z), z = x·g
    detail::keep_failure(failed, [&] {
      dx_shared.resize(static_cast<std::size_t>(Tn * H));
      d_logit.resize(s.shared_scale.size());
      d_gate.assign(params_.shared_gate.size(), T(0));
      for (index_t t = 0; t < Tn; ++t) {  // d shared_out = g·dy; d g = Σ_h dy·shared_out
        const std::size_t row = static_cast<std::size_t>(t * H);
        const T g = s.shared_scale.empty() ? T(1) : s.shared_scale[static_cast<std::size_t>(t)];
        T dg = 0;
        for (index_t h = 0; h < H; ++h) {
          dg += dy(t, h) * s.shared_out[row + h];
          dx_shared[row + h] = g * dy(t, h);
        }
        if (!d_logit.empty()) d_logit[static_cast<std::size_t>(t)] = dg * g * (T(1) - g);
      }
    });
    std::vector<T> gathered;  // with TP: d shared_out of the TP group's rows
    if (tensor_parallel())
      gathered = detail::tp_gather_rows(*comms_.tensor_parallel, s.shared_tp, dx_shared, H, failed,
                                        "MoELayer::backward: shared expert TP gather");
    std::vector<T>& d = tensor_parallel() ? gathered : dx_shared;
    const shared_input in = shared_rows(s, own);
    const index_t n = in.rows.extent(0);
    // dx overwrites d shared_out in place (the host experts read dy before writing dx).
    detail::keep_failure(failed, [&] {
      experts_->backward(shared_shape(), std::as_const(params_).shared_expert(), in.rows,
                         in.offsets, matrix_view<const T>(d.data(), n, H),
                         matrix_view<T>(d.data(), n, H), grads.shared_expert(), s.shared_workspace,
                         expert_options{});
    });
    if (!failed) {  // used: released (a backward that failed before using them keeps them)
      std::vector<T>().swap(s.shared_in);
      s.shared_workspace.reset();
    }
    if (tensor_parallel())  // each row's dx is the sum of its F shards' partials
      detail::tp_reduce_scatter(*comms_.tensor_parallel, s.shared_tp, gathered, dx_shared, H,
                                failed, "MoELayer::backward: shared expert TP reduce-scatter");
    if (failed) return;
    for (index_t t = 0; t < static_cast<index_t>(d_logit.size()); ++t) {
      const T dz = d_logit[static_cast<std::size_t>(t)];
      const std::size_t row = static_cast<std::size_t>(t * H);
      for (index_t h = 0; h < H; ++h) {
        dx_shared[row + h] += dz * params_.shared_gate[static_cast<std::size_t>(h)];
        d_gate[static_cast<std::size_t>(h)] += dz * x(t, h);
      }
    }
  }

  // An all_reduce over the loss group: the dense DP group, then the TP group.
  template <class U>
  void group_all_reduce(U* v, std::int64_t n, ReduceOp op) {
    comms_.dense_data_parallel->all_reduce(v, n, op);
    if (tensor_parallel()) comms_.tensor_parallel->all_reduce(v, n, op);
  }
  // Runs `dense_stage(where)`, a collective over the dense group that may throw (on all of its
  // ranks together), then, with TP, tells the TP group whether it threw: every rank joins both
  // stages and the loss group (dense x TP) throws together, so no rank waits for a peer that has
  // thrown. With TP the messages name the group ("<where>, TP group: rank 1 of 2 failed:
  // <where>, dense group: rank 3 of 4 failed: ..."): a failure may reach a rank through both.
  template <class Stage>
  void dense_then_tensor_parallel(Stage&& dense_stage, const char* where) {
    if (!tensor_parallel()) return dense_stage(std::string(where));
    std::exception_ptr outcome;
    detail::keep_failure(outcome, [&] { dense_stage(detail::concat(where, ", dense group")); });
    fail_together(*comms_.tensor_parallel, outcome, detail::concat(where, ", TP group"));
  }
  // require_agreement over the loss group: the dense group, then the TP group (which first hears
  // whether the dense group disagreed).
  void agree_in_group(std::uint64_t fingerprint, const char* what) {
    dense_then_tensor_parallel(
        [&](const std::string& w) {
          require_agreement(*comms_.dense_data_parallel, fingerprint, w);
        },
        what);
    if (tensor_parallel())
      require_agreement(*comms_.tensor_parallel, fingerprint, detail::concat(what, ", TP group"));
  }
  // fail_together over the loss group: a failure on any of its ranks is an error on all of them.
  void fail_together_in_group(const std::exception_ptr& failed, const char* where) {
    dense_then_tensor_parallel(
        [&](const std::string& w) { fail_together(*comms_.dense_data_parallel, failed, w); },
        where);
  }

  // The expert options of a segment: the received rows' dropout keys follow the own rows', so
  // no two rows of a step share a mask; each TP rank draws its F columns from its own stream.
  expert_options segment_options(const MoESaved<T>& s, int seg) const {
    expert_options o = s.expert_opts;
    o.dropout.row_offset =
        seg == 0 ? 0 : static_cast<std::uint64_t>(s.local.expert_offsets().back());
    o.dropout.seed += static_cast<std::uint64_t>(tp_rank()) * 0xD1B54A32D192ED03ull;
    return o;
  }

  // Runs `op(segment, rows)` on the rows of this rank's experts and brings the results back in
  // plan order (rows grouped by destination EP rank, then local expert). Segment 0 is this
  // rank's own block, which never leaves the rank: with communication_overlap the exchange of
  // the other blocks runs while op works on it, and the return exchange runs while op's local
  // result is copied back. Segment 1 is what the other ranks sent, expert-major.
  //
  // Every buffer of the exchange is allocated before the first row moves, under keep_failure
  // into `failed`; then, when `check` names it, the loss group fails together (fail_together:
  // out of memory on one rank is an error on every rank, not a peer waiting for rows that never
  // come). With EP `check` is required. The buffers serve both ways: the return exchange sends
  // from the received rows' buffer, lands in the sent rows' buffer, and the result takes the
  // place of `rows`. op keeps its own failures (keep_failure into `failed`) and returns rows of
  // the sizes its peers expect.
  template <class Op>
  std::vector<T> exchange_apply(std::vector<T> rows, MoESaved<T>& s, index_t H,
                                std::exception_ptr& failed, const char* check, MoEMetrics* m,
                                Op&& op) {
    const std::int64_t ep = placement_.ep(), El = placement_.local_experts();
    const std::int64_t self = ep == 1 ? 0 : comms_.expert_parallel->rank();
    // This rank's block in plan order, and the per-expert offsets of both segments.
    const std::int64_t self_off = detail::exchange_block_offsets(s.send_rows, ep, El)
                                      .source_major[static_cast<std::size_t>(self * El)];
    const std::span<const std::int64_t> own(s.send_rows.data() + self * El,
                                            static_cast<std::size_t>(El));
    s.local.offsets = detail::exchange_expert_offsets(own, 1, El);
    const std::int64_t self_rows = s.local.offsets.back();
    s.remote.offsets = detail::exchange_expert_offsets(s.recv_rows, ep, El, self);
    if (ep == 1) {  // one rank: every row is local, no copy
      if (check) fail_together_in_group(failed, check);
      return op(0, std::move(rows));
    }
    SY_EXPECTS(check, "MoELayer: an expert-parallel exchange needs its failure check");
    std::vector<std::int64_t> remote_block = s.recv_rows;  // [p][le], 0 for this rank
    std::fill_n(remote_block.begin() + self * El, El, std::int64_t{0});
    // Elements per peer both ways, this rank excluded.
    const std::vector<std::int64_t> send =
        detail::exchange_peer_elements(s.send_rows, ep, El, H, self);
    const std::vector<std::int64_t> recv =
        detail::exchange_peer_elements(s.recv_rows, ep, El, H, self);
    const std::int64_t total_recv = std::accumulate(recv.begin(), recv.end(), std::int64_t{0});
    std::vector<T> local_in, outgoing, by_source, expert_major;
    detail::keep_failure(failed, [&] {
      const auto self_begin = rows.begin() + self_off * H, self_end = self_begin + self_rows * H;
      local_in.assign(self_begin, self_end);
      outgoing.reserve(rows.size() - local_in.size());  // the rows to send, without our block
      outgoing.insert(outgoing.end(), rows.begin(), self_begin);
      outgoing.insert(outgoing.end(), self_end, rows.end());
      by_source.resize(static_cast<std::size_t>(total_recv));
      expert_major.resize(by_source.size());
    });
    fail_together_in_group(failed, check);
    if (m) {
      m->bytes_sent += static_cast<std::int64_t>(sizeof(T) * outgoing.size());
      m->bytes_received += static_cast<std::int64_t>(sizeof(T)) * total_recv;
    }
    auto incoming = start_exchange(outgoing.data(), send, by_source.data(), recv);
    std::vector<T> local_out = op(0, std::move(local_in));
    incoming.wait();
    detail::reorder_exchange_blocks(std::span<const T>(by_source), std::span<T>(expert_major),
                                    remote_block, ep, El, H, /*to_expert_major=*/true);
    const std::vector<T> remote_out = op(1, std::move(expert_major));
    detail::reorder_exchange_blocks(std::span<const T>(remote_out), std::span<T>(by_source),
                                    remote_block, ep, El, H, /*to_expert_major=*/false);
    auto back = start_exchange(by_source.data(), recv, outgoing.data(), send);
    std::copy(local_out.begin(), local_out.end(), rows.begin() + self_off * H);
    back.wait();
    std::copy(outgoing.begin(), outgoing.begin() + self_off * H, rows.begin());
    std::copy(outgoing.begin() + self_off * H, outgoing.end(),
              rows.begin() + (self_off + self_rows) * H);
    return rows;
  }

  // A started all_to_all_v: non-blocking when the config asks for overlap and the communicator
  // can (MpiComm), else done before it returns.
  struct done_exchange {
    void wait() {}
  };
  template <class U>
  auto start_exchange(const U* send, const std::vector<std::int64_t>& send_counts, U* recv,
                      const std::vector<std::int64_t>& recv_counts) {
    Comm& c = *comms_.expert_parallel;
    if constexpr (requires { c.all_to_all_v_start(send, std::span<const std::int64_t>(send_counts), recv, std::span<const std::int64_t>(recv_counts)); }) {
      auto pending = c.all_to_all_v_start(send, std::span<const std::int64_t>(send_counts), recv,
                                          std::span<const std::int64_t>(recv_counts));
      if (!cfg_.communication_overlap) pending.wait();  // waiting twice is harmless
      return pending;
    } else {
      c.all_to_all_v(send, send_counts, recv, recv_counts);
      return done_exchange{};
    }
  }

  void fill_metrics(const MoESaved<T>& s, const DispatchOptions& dopt, MoEMetrics& m) {
    const std::int64_t E = cfg_.num_experts;
    // Per global expert (the plan counts slots), then summed over the group, with the tokens,
    // the loss terms and the Sinkhorn iterations (max) in one reduction each.
    std::vector<double> v(static_cast<std::size_t>(2 * E + 3), 0.0);
    for (std::int64_t slot = 0; slot < E; ++slot) {
      const auto e = static_cast<std::size_t>(placement_.expert_of_slot(slot));
      v[e] = static_cast<double>(s.plan.routed_per_expert[static_cast<std::size_t>(slot)]);
      v[static_cast<std::size_t>(E) + e] =
          static_cast<double>(s.plan.kept_per_expert[static_cast<std::size_t>(slot)]);
    }
    v[static_cast<std::size_t>(2 * E)] = static_cast<double>(s.tokens);
    v[static_cast<std::size_t>(2 * E + 1)] = s.routing.aux_loss.value_or(0.0);
    v[static_cast<std::size_t>(2 * E + 2)] = s.routing.z_loss.value_or(0.0);
    group_all_reduce(v.data(), static_cast<std::int64_t>(v.size()), ReduceOp::sum);
    std::int64_t iterations = s.routing.sinkhorn_iterations;
    group_all_reduce(&iterations, 1, ReduceOp::max);
    std::vector<std::int64_t> routed(static_cast<std::size_t>(E)), kept(routed.size());
    for (std::size_t e = 0; e < routed.size(); ++e) {
      routed[e] = std::llround(v[e]);
      kept[e] = std::llround(v[static_cast<std::size_t>(E) + e]);
    }
    // The same config on every rank, so every rank has the same losses on (a rank with no
    // tokens contributes 0).
    detail::set_metrics(m, std::move(routed), std::move(kept),
                        std::llround(v[static_cast<std::size_t>(2 * E)]), loss_params(cfg_),
                        v[static_cast<std::size_t>(2 * E + 1)],
                        v[static_cast<std::size_t>(2 * E + 2)], static_cast<int>(iterations),
                        dopt.capacity);
  }

  Config cfg_;
  MoEComms<Comm> comms_;
  detail::expert_sync_clock sync_clock_;
  ExpertPlacementMap placement_;
  migration_schedule migration_;  ///< the loads seen and the checks' schedule (migrate_experts)
  std::uint64_t placement_moves_ = 0;  ///< move_experts calls so far (stale saved states fail)
  std::unique_ptr<detail::router_hooks<T>> router_;
  std::unique_ptr<detail::expert_hooks<T>> experts_;
  MoEParams<T> params_;
  detail::buffer_cache workspace_cache_;
  std::vector<T> zero_fc2_bias_;  ///< fc2's bias on TP ranks other than 0; else empty
  /// The lengths of the router's loss group sums in order (router_hooks::group_sums); nullopt
  /// for a router policy whose sums are not known.
  std::optional<std::vector<std::size_t>> router_sums_;
};

namespace detail {
/// Throws config_error unless the config selects exactly the compile-time policies.
template <RouterPolicy R, DispatchPolicy D, ExpertPolicy X>
void check_policies_match(const Config& c) {
  if (c.num_experts_per_token != R::k)
    throw config_error(concat("num_experts_per_token: the config has k = ",
                              c.num_experts_per_token, " but the layer is compiled for k = ", R::k));
  if (is_sinkhorn_router<R> != (c.load_balancing_type == LoadBalancingType::sinkhorn))
    throw config_error(concat("load_balancing_type: the config has ",
                              to_text(c.load_balancing_type), " but the layer's router is ",
                              is_sinkhorn_router<R> ? "Sinkhorn" : "TopK"));
  if (c.token_dispatch != D::dispatch)
    throw config_error(concat("token_dispatch: the config has ", enum_name(c.token_dispatch),
                              " but the layer is compiled for ", enum_name(D::dispatch)));
  if constexpr (D::has_capacity) {
    if (c.drop_policy != D::drop_policy::value)
      throw config_error(concat("drop_policy: the config has ", enum_name(c.drop_policy),
                                " but the layer is compiled for ",
                                enum_name(D::drop_policy::value)));
  }
  const bool same_expert =
      visit_expert_policy(c, [](auto p) { return std::is_same_v<decltype(p), X>; });
  if (!same_expert)
    throw config_error(concat("activation, gated: the config has ", enum_name(c.activation),
                              c.gated ? " gated (GLU)" : " (FFN)",
                              " but the layer is compiled for another expert policy"));
}
}  // namespace detail

/// One MoE layer with its policies fixed at compile time:
///
///     using Layer = sy::MoELayer<sy::TopK<2, sy::Softmax>, sy::Capacity<sy::DropByProbs>,
///                                sy::GLU<sy::SiLU>, float>;
///     sy::LocalComm one;
///     Layer layer(config, {&one, &one, &one}, router);
///
/// The config must select the same policies (checked: a config_error names the field).
template <RouterPolicy Router, DispatchPolicy Dispatcher, ExpertPolicy Expert, class T = float,
          Communicator Comm = LocalComm>
class MoELayer : public MoELayerCore<T, Comm> {
  static_assert(!(detail::is_sinkhorn_router<Router> && Dispatcher::has_capacity),
                "MoELayer: Sinkhorn routing cannot be combined with a Capacity dispatcher "
                "(REFERENCE 3): use Dropless");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "MoELayer: the host backend computes in float or double");

 public:
  using router_type = Router;
  using dispatcher_type = Dispatcher;
  using expert_type = Expert;

  MoELayer(const Config& cfg, MoEComms<Comm> comms, Router router)
      : MoELayerCore<T, Comm>(
            (detail::check_policies_match<Router, Dispatcher, Expert>(cfg), cfg), comms,
            std::make_unique<detail::router_hooks_impl<Router, T>>(std::move(router)),
            std::make_unique<detail::expert_hooks_impl<Expert, T>>()) {}
};

}  // namespace switchyard
