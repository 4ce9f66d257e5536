#pragma once
/// \file Plain types of the MoE layer: parameters and gradients (owning, host memory), the
/// communicators it runs on, per-forward options and metrics.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "switchyard/config/config_types.hpp"
#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/experts/expert_types.hpp"
#include "switchyard/routing/routing_types.hpp"

namespace switchyard {

/// Views of expert tensors stored contiguously in the layout of experts/expert_types.hpp (host or
/// device memory); the bias views are empty without biases.
template <class T>
expert_tensors<T> expert_views(T* fc1, T* fc2, T* fc1_bias, T* fc2_bias, index_t local_experts,
                               index_t hidden, index_t ffn_hidden, int fc1_multiplier, bool bias) {
  const index_t F1 = fc1_multiplier * ffn_hidden;
  return {tensor3_view<T>(fc1, local_experts, F1, hidden),
          tensor3_view<T>(fc2, local_experts, hidden, ffn_hidden),
          bias ? matrix_view<T>(fc1_bias, local_experts, F1) : matrix_view<T>(),
          bias ? matrix_view<T>(fc2_bias, local_experts, hidden) : matrix_view<T>()};
}

namespace detail {
/// What every parameter set of a layer shares, host (MoEParams) or device (DeviceMoEParams):
/// its shapes, the element count of each tensor, and views of the tensors. Derived holds the
/// eight tensors (router_weight, fc1, fc2, fc1_bias, fc2_bias, shared_fc1, shared_fc2,
/// shared_gate) in anything with data(); the shared expert's are empty without one.
template <class Derived, class T>
struct param_set {
  index_t num_experts = 0, local_experts = 0, hidden = 0, ffn_hidden = 0;
  int fc1_multiplier = 1;  ///< 2 for GLU experts (the shared expert's too)
  bool bias = false;
  index_t shared_ffn_hidden = 0;    ///< F of the shared expert (with TP this rank's shard); 0: none
  bool shared_gate_weight = false;  ///< the shared expert's sigmoid gate [H]

  param_set() = default;
  param_set(index_t E, index_t E_local, index_t H, index_t F, int fc1_mult, bool with_bias,
            index_t shared_F = 0, bool shared_gate = false)
      : num_experts(E),
        local_experts(E_local),
        hidden(H),
        ffn_hidden(F),
        fc1_multiplier(fc1_mult),
        bias(with_bias),
        shared_ffn_hidden(shared_F),
        shared_gate_weight(shared_gate) {}

  /// Elements of each tensor, in for_each_tensor order: router [E][H], fc1 [E_local][F1][H],
  /// fc2 [E_local][H][F], fc1_bias [E_local][F1], fc2_bias [E_local][H], shared_fc1 [Fs1][H],
  /// shared_fc2 [H][Fs], shared_gate [H] (Fs1 = fc1_multiplier·Fs).
  std::array<std::size_t, 8> sizes() const {
    const auto u = [](index_t n) { return static_cast<std::size_t>(n); };
    const index_t F1 = fc1_multiplier * ffn_hidden;
    return {u(num_experts * hidden),
            u(local_experts * F1 * hidden),
            u(local_experts * hidden * ffn_hidden),
            bias ? u(local_experts * F1) : 0,
            bias ? u(local_experts * hidden) : 0,
            u(fc1_multiplier * shared_ffn_hidden * hidden),
            u(hidden * shared_ffn_hidden),
            shared_ffn_hidden > 0 && shared_gate_weight ? u(hidden) : 0};
  }
  bool has_shared_expert() const { return shared_ffn_hidden > 0; }
  matrix_view<T> router() {
    return matrix_view<T>(self().router_weight.data(), num_experts, hidden);
  }
  matrix_view<const T> router() const { return const_cast<param_set*>(this)->router(); }
  expert_tensors<T> experts() {
    Derived& d = self();
    return expert_views(d.fc1.data(), d.fc2.data(), d.fc1_bias.data(), d.fc2_bias.data(),
                        local_experts, hidden, ffn_hidden, fc1_multiplier, bias);
  }
  expert_weights<T> experts() const {
    return as_const(const_cast<param_set*>(this)->experts());
  }
  /// The shared expert as one expert without biases (fc1 [1][Fs1][H], fc2 [1][H][Fs]).
  expert_tensors<T> shared_expert() {
    Derived& d = self();
    return expert_views(d.shared_fc1.data(), d.shared_fc2.data(), static_cast<T*>(nullptr),
                        static_cast<T*>(nullptr), 1, hidden, shared_ffn_hidden, fc1_multiplier,
                        false);
  }
  expert_weights<T> shared_expert() const {
    return as_const(const_cast<param_set*>(this)->shared_expert());
  }
  /// Every tensor, for element-wise loops (optimizers, reductions, copies).
  template <class F>
  void for_each_tensor(F&& f) {
    Derived& d = self();
    f(d.router_weight);
    for_each_expert_tensor(f);
    for_each_shared_expert_tensor(f);
    f(d.shared_gate);
  }
  /// The routed experts' tensors (fc1, fc2, fc1_bias, fc2_bias): this rank's shard, reduced and
  /// synchronised over the expert-data-parallel group.
  template <class F>
  void for_each_expert_tensor(F&& f) {
    Derived& d = self();
    f(d.fc1);
    f(d.fc2);
    f(d.fc1_bias);
    f(d.fc2_bias);
  }
  /// The shared expert's weights (shared_fc1, shared_fc2; empty without one): this rank's F
  /// shard with tensor parallelism, else all of it; the same on every rank of the dense
  /// data-parallel group, and reduced over that group every step.
  template <class F>
  void for_each_shared_expert_tensor(F&& f) {
    Derived& d = self();
    f(d.shared_fc1);
    f(d.shared_fc2);
  }
  /// The tensors every rank of the dense data-parallel group and of the TP group holds whole
  /// (router, the shared expert's gate): reduced over both groups every step.
  template <class F>
  void for_each_replicated_tensor(F&& f) {
    Derived& d = self();
    f(d.router_weight);
    f(d.shared_gate);
  }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
};
}  // namespace detail

/// The weights of one MoE layer on one rank: the router W_r [E][H] (replicated), the local
/// experts in the layout of experts/expert_types.hpp, and the shared expert (replicated over
/// the dense data-parallel group; with tensor parallelism each TP rank holds its F shard, as
/// of the experts; empty without one). MoEGrads has the same shapes.
template <class T>
struct MoEParams : detail::param_set<MoEParams<T>, T> {
  std::vector<T> router_weight;  ///< [E][H]
  std::vector<T> fc1, fc2;       ///< [E_local][F1][H], [E_local][H][F]
  std::vector<T> fc1_bias, fc2_bias;
  /// [Fs1][H], [H][Fs] (Megatron's fc1 chunk order); with TP, Fs is this rank's shard
  std::vector<T> shared_fc1, shared_fc2;
  std::vector<T> shared_gate;             ///< [H] with shared_expert_gate, else empty

  MoEParams() = default;
  MoEParams(index_t E, index_t E_local, index_t H, index_t F, int fc1_mult, bool with_bias,
            index_t shared_F = 0, bool shared_gate_on = false)
      : detail::param_set<MoEParams<T>, T>(E, E_local, H, F, fc1_mult, with_bias, shared_F,
                                           shared_gate_on) {
    const auto n = this->sizes();
    std::size_t i = 0;
    this->for_each_tensor([&](std::vector<T>& v) { v.assign(n[i++], T(0)); });
  }

  /// Same shapes, every value zero (gradients).
  MoEParams zeros_like() const {
    return MoEParams(this->num_experts, this->local_experts, this->hidden, this->ffn_hidden,
                     this->fc1_multiplier, this->bias, this->shared_ffn_hidden,
                     this->shared_gate_weight);
  }
  void set_zero() {
    this->for_each_tensor([](std::vector<T>& v) { std::fill(v.begin(), v.end(), T(0)); });
  }
};

template <class T>
using MoEGrads = MoEParams<T>;

/// The process groups a layer runs on (ARCHITECTURE.md, config/layout.hpp): the token
/// all-to-all over the expert-parallel group, router gradients, global counts and losses over the
/// dense data-parallel group, expert gradients over the expert-data-parallel group. With
/// tensor_parallel_size > 1 also the TP group (tensor-parallel experts; the router gradients,
/// counts and losses then sum over the dense data-parallel group and the TP group); it may stay
/// null when tensor_parallel_size is 1.
template <class Comm>
struct MoEComms {
  Comm* expert_parallel;
  Comm* dense_data_parallel;
  Comm* expert_data_parallel;
  Comm* tensor_parallel = nullptr;
};

/// Per-call options of a forward.
struct ForwardOptions {
  bool training = true;          ///< jitter and expert dropout apply; Sinkhorn selects by P
  std::uint64_t seed = 0;        ///< run seed of jitter and dropout draws
  std::uint32_t step = 0;        ///< step (or micro-batch counter) of the draws
  GlobalAuxLoss* global_aux = nullptr;  ///< accumulator of global_aux_loss
};

/// What one forward measured. Counts and losses are global: summed over the dense data-parallel
/// group and the TP group (the same on every rank of them).
struct MoEMetrics {
  std::int64_t tokens = 0;                         ///< tokens of the group in this forward
  std::vector<std::int64_t> tokens_per_expert;     ///< [E] routed, before dropping
  std::vector<std::int64_t> kept_per_expert;       ///< [E] after dropping
  std::int64_t dropped = 0;                        ///< dropped routes
  double dropped_fraction = 0;                     ///< dropped / routes
  double load_cv = 0;                              ///< std/mean of tokens_per_expert
  double max_over_mean = 0;                        ///< max/mean of tokens_per_expert
  std::optional<double> aux_loss;                  ///< coefficient included; none when off
  std::optional<double> z_loss;                    ///< coefficient included; none when off
  int sinkhorn_iterations = 0;                     ///< Sinkhorn routers
  std::int64_t bytes_sent = 0;                     ///< this rank, token all-to-all, forward
  std::int64_t bytes_received = 0;
  std::int64_t tp_bytes_sent = 0;  ///< this rank, TP gather and reduce-scatter of rows, forward
  std::int64_t tp_bytes_received = 0;
  std::optional<std::int64_t> capacity;            ///< C per expert on this rank; none: dropless
};

}  // namespace switchyard
