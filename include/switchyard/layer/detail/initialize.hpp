#pragma once
/// \file Seeded initialisation of a layer's parameters, shared by the host layer
/// (MoELayerCore::initialize) and the device layer (layer/device_layer.cuh), so both start from
/// the same weights for the same seed.

#include <cmath>
#include <cstdint>

#include "switchyard/config/config_types.hpp"
#include "switchyard/core/philox.hpp"
#include "switchyard/experts/init.hpp"
#include "switchyard/layer/detail/hooks.hpp"
#include "switchyard/layer/layer_types.hpp"
#include "switchyard/sharding/placement.hpp"

namespace switchyard::detail {

/// Router N(0, σ²) with σ = 0.02 (Megatron's init_method_std) drawn by Philox keyed by (seed,
/// element); the experts of `ep_rank` by the config's initialization_strategy, keyed by their
/// global id, so every layout gets the same weights.
template <class T>
void initialize_params(MoEParams<T>& params, const Config& cfg, const ExpertPlacementMap& placement,
                       int ep_rank, const expert_hooks<T>& experts, std::uint64_t seed) {
  const index_t E = cfg.num_experts, H = cfg.hidden_size;
  for (index_t i = 0; i < E * H; ++i) {
    const auto u1 =
        static_cast<double>(philox_uniform(seed, 0x526f7574u, static_cast<std::uint32_t>(i), 0));
    const auto u2 =
        static_cast<double>(philox_uniform(seed, 0x526f7574u, static_cast<std::uint32_t>(i), 1));
    params.router_weight[static_cast<std::size_t>(i)] =
        static_cast<T>(0.02 * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  const index_t El = params.local_experts, F = params.ffn_hidden;
  const index_t F1 = params.fc1_multiplier * F;
  expert_tensors<T> all = params.experts();
  for (index_t le = 0; le < El; ++le) {
    expert_init init;
    init.strategy = cfg.initialization_strategy;
    init.seed = seed;
    init.first_expert = placement.expert(ep_rank, le);
    const expert_shape one{1, H, F, params.bias};
    expert_tensors<T> w{
        tensor3_view<T>(&all.fc1(le, 0, 0), 1, F1, H), tensor3_view<T>(&all.fc2(le, 0, 0), 1, H, F),
        params.bias ? matrix_view<T>(&all.fc1_bias(le, 0), 1, F1) : matrix_view<T>(),
        params.bias ? matrix_view<T>(&all.fc2_bias(le, 0), 1, H) : matrix_view<T>()};
    experts.initialize(one, init, w);
  }
}

}  // namespace switchyard::detail
