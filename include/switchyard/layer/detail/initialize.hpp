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

/// One expert (a [1]-expert view `dst`: fc1 [1][m·Fs][H], fc2 [1][H][Fs], biases when `bias`)
/// drawn by `init` as TP rank `tp_rank` of `tp` holds it: with tp > 1 the whole expert of
/// F = Fs·tp is drawn (the init's fan-in and fan-out are the unsplit F's) and the rank keeps its
/// F columns (layer/detail/tensor_parallel.hpp: of each of fc1's m halves, GLU's gate then
/// linear, rows [tp_rank·Fs, +Fs); of fc2, columns [tp_rank·Fs, +Fs)); its biases start at
/// zero. `whole` is scratch for the drawn expert.
template <class T>
void initialize_expert_shard(const expert_hooks<T>& experts, const expert_init& init, index_t H,
                             index_t Fs, int m, bool bias, int tp_rank, std::int64_t tp,
                             expert_tensors<T> dst, std::vector<T>& whole) {
  if (tp == 1) {
    experts.initialize(expert_shape{1, H, Fs, bias}, init, dst);
    return;
  }
  const index_t F = Fs * tp;
  whole.assign(static_cast<std::size_t>((m + 1) * F * H), T(0));
  T* const fc1 = whole.data();
  T* const fc2 = fc1 + m * F * H;
  experts.initialize(
      expert_shape{1, H, F, false}, init,
      expert_tensors<T>{tensor3_view<T>(fc1, 1, m * F, H), tensor3_view<T>(fc2, 1, H, F), {}, {}});
  for (int half = 0; half < m; ++half)
    for (index_t f = 0; f < Fs; ++f)
      std::copy_n(fc1 + (half * F + tp_rank * Fs + f) * H, H, &dst.fc1(0, half * Fs + f, 0));
  for (index_t h = 0; h < H; ++h) std::copy_n(fc2 + h * F + tp_rank * Fs, Fs, &dst.fc2(0, h, 0));
  if (bias) {
    std::fill_n(&dst.fc1_bias(0, 0), m * Fs, T(0));
    std::fill_n(&dst.fc2_bias(0, 0), H, T(0));
  }
}

/// Router N(0, σ²) with σ = 0.02 (Megatron's init_method_std) drawn by Philox keyed by (seed,
/// element); the experts of `ep_rank` by the config's initialization_strategy, keyed by their
/// global id, so every layout gets the same weights; with tp > 1 TP rank `tp_rank` keeps its F
/// columns of each (initialize_expert_shard). The shared expert also follows the
/// initialization_strategy (as expert number E, so its draws are not a routed expert's), split
/// over TP the same way, and its gate is N(0, 0.02²) like the router (Megatron's init_method).
template <class T>
void initialize_params(MoEParams<T>& params, const Config& cfg, const ExpertPlacementMap& placement,
                       int ep_rank, const expert_hooks<T>& experts, std::uint64_t seed,
                       int tp_rank = 0, std::int64_t tp = 1) {
  const index_t H = cfg.hidden_size;
  const int m = params.fc1_multiplier;
  std::vector<T> whole;  // one whole expert when tp > 1
  expert_init init;
  init.strategy = cfg.initialization_strategy;
  init.seed = seed;
  initialize_normal_002(params.router_weight, seed, 0x526f7574u);
  if (params.has_shared_expert()) {
    init.first_expert = cfg.num_experts;
    initialize_expert_shard(experts, init, H, params.shared_ffn_hidden, m, false, tp_rank, tp,
                            params.shared_expert(), whole);
    initialize_normal_002(params.shared_gate, seed, 0x53686172u);
  }
  const index_t Fs = params.ffn_hidden;
  expert_tensors<T> all = params.experts();
  for (index_t le = 0; le < params.local_experts; ++le) {
    init.first_expert = placement.expert(ep_rank, le);
    const expert_tensors<T> one{
        tensor3_view<T>(&all.fc1(le, 0, 0), 1, m * Fs, H),
        tensor3_view<T>(&all.fc2(le, 0, 0), 1, H, Fs),
        params.bias ? matrix_view<T>(&all.fc1_bias(le, 0), 1, m * Fs) : matrix_view<T>(),
        params.bias ? matrix_view<T>(&all.fc2_bias(le, 0), 1, H) : matrix_view<T>()};
    initialize_expert_shard(experts, init, H, Fs, m, params.bias, tp_rank, tp, one, whole);
  }
}

}  // namespace switchyard::detail
