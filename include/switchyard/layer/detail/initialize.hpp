#pragma once
/// \file Seeded initialisation of a layer's parameters, shared by the host layer
/// (MoELayerCore::initialize) and the device layer (layer/device_layer.cuh), so both start from
/// the same weights for the same seed.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "switchyard/config/config_types.hpp"
#include "switchyard/core/philox.hpp"
#include "switchyard/experts/init.hpp"
#include "switchyard/layer/detail/hooks.hpp"
#include "switchyard/layer/layer_types.hpp"
#include "switchyard/sharding/placement.hpp"

namespace switchyard::detail {

/// N(0, 0.02²) for every element of `w`, drawn by Philox keyed by (seed, `stream`, element).
template <class T>
void initialize_normal_002(std::vector<T>& w, std::uint64_t seed, std::uint32_t stream) {
  for (std::size_t i = 0; i < w.size(); ++i) {
    const auto u1 =
        static_cast<double>(philox_uniform(seed, stream, static_cast<std::uint32_t>(i), 0));
    const auto u2 =
        static_cast<double>(philox_uniform(seed, stream, static_cast<std::uint32_t>(i), 1));
    w[i] = static_cast<T>(0.02 * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
}

/// Router N(0, σ²) with σ = 0.02 (Megatron's init_method_std) drawn by Philox keyed by (seed,
/// element); the experts of `ep_rank` by the config's initialization_strategy, keyed by their
/// global id, so every layout gets the same weights. With tp > 1 the whole expert is drawn (the
/// init's fan-in and fan-out are the unsplit F's) and TP rank `tp_rank` keeps its F columns
/// (layer/detail/tensor_parallel.hpp); biases start at zero.
/// The shared expert also follows the initialization_strategy (as expert number E, so its
/// draws are not a routed expert's) and its gate is N(0, 0.02²) like the router (Megatron's
/// init_method).
template <class T>
void initialize_params(MoEParams<T>& params, const Config& cfg, const ExpertPlacementMap& placement,
                       int ep_rank, const expert_hooks<T>& experts, std::uint64_t seed,
                       int tp_rank = 0, std::int64_t tp = 1) {
  const index_t H = cfg.hidden_size;
  initialize_normal_002(params.router_weight, seed, 0x526f7574u);
  if (params.has_shared_expert()) {
    expert_init init;
    init.strategy = cfg.initialization_strategy;
    init.seed = seed;
    init.first_expert = cfg.num_experts;
    experts.initialize(expert_shape{1, H, params.shared_ffn_hidden, false}, init,
                       params.shared_expert());
    initialize_normal_002(params.shared_gate, seed, 0x53686172u);
  }
  const index_t El = params.local_experts, F = params.ffn_hidden * tp, Fs = params.ffn_hidden;
  const int m = params.fc1_multiplier;
  expert_tensors<T> all = params.experts();
  std::vector<T> fc1, fc2;  // one whole expert when tp > 1
  for (index_t le = 0; le < El; ++le) {
    expert_init init;
    init.strategy = cfg.initialization_strategy;
    init.seed = seed;
    init.first_expert = placement.expert(ep_rank, le);
    const expert_shape one{1, H, F, params.bias};
    if (tp == 1) {
      expert_tensors<T> w{
          tensor3_view<T>(&all.fc1(le, 0, 0), 1, m * F, H),
          tensor3_view<T>(&all.fc2(le, 0, 0), 1, H, F),
          params.bias ? matrix_view<T>(&all.fc1_bias(le, 0), 1, m * F) : matrix_view<T>(),
          params.bias ? matrix_view<T>(&all.fc2_bias(le, 0), 1, H) : matrix_view<T>()};
      experts.initialize(one, init, w);
      continue;
    }
    fc1.assign(static_cast<std::size_t>(m * F * H), T(0));
    fc2.assign(static_cast<std::size_t>(H * F), T(0));
    if (params.bias) {
      std::fill_n(&all.fc1_bias(le, 0), m * Fs, T(0));
      std::fill_n(&all.fc2_bias(le, 0), H, T(0));
    }
    experts.initialize(expert_shape{1, H, F, false}, init,
                       expert_tensors<T>{tensor3_view<T>(fc1.data(), 1, m * F, H),
                                         tensor3_view<T>(fc2.data(), 1, H, F),
                                         {},
                                         {}});
    // fc1 rows: each of the m halves (GLU: gate, then linear) gives rows [tp_rank·Fs, +Fs).
    for (int half = 0; half < m; ++half)
      for (index_t f = 0; f < Fs; ++f)
        std::copy_n(fc1.begin() + (half * F + tp_rank * Fs + f) * H, H,
                    &all.fc1(le, half * Fs + f, 0));
    for (index_t h = 0; h < H; ++h)
      std::copy_n(fc2.begin() + h * F + tp_rank * Fs, Fs, &all.fc2(le, h, 0));
  }
}

}  // namespace switchyard::detail
