#pragma once
/// \file Memory estimate for one rank: local expert parameters, their gradients and optimizer
/// state, the router, and the activations the MoE layers keep for backward (docs/config.md,
/// "Memory estimate", says what each term counts).

#include <cstdint>

#include "switchyard/config/capacity.hpp"
#include "switchyard/config/config_types.hpp"
#include "switchyard/config/layout.hpp"

namespace switchyard {

/// Bytes of one element of the storage precision.
constexpr std::int64_t bytes_of(Precision p) {
  switch (p) {
    case Precision::float32: return 4;
    case Precision::bfloat16:
    case Precision::float16: return 2;
  }
  return 4;
}

/// Parameters of one expert on one rank: W1 [F/tp or 2F/tp, H] and W2 [H, F/tp], plus biases.
constexpr std::int64_t expert_parameter_count(const Config& c) {
  const std::int64_t f = c.ffn_hidden_size / c.tensor_parallel_size;
  const std::int64_t fc1_rows = c.gated ? 2 * f : f;
  std::int64_t n = fc1_rows * c.hidden_size + c.hidden_size * f;
  if (c.add_bias_linear) n += fc1_rows + c.hidden_size;
  return n;
}

/// MoE layers held by pipeline stage `stage`: layer i (0-based) is an MoE layer when
/// Config::is_moe_layer(i) (Megatron's moe_layer_freq: moe_layer_pattern[i] == 1, or
/// i % moe_layer_frequency == 0), and stage s holds layers [s·L/pp, (s+1)·L/pp).
constexpr std::int64_t moe_layers_on_stage(const Config& c, std::int64_t stage) {
  const std::int64_t per_stage = c.num_layers / c.pipeline_parallel_size;
  const std::int64_t lo = stage * per_stage, hi = (stage + 1) * per_stage;
  if (c.moe_layer_pattern.empty()) {  // the multiples of the frequency in [lo, hi), no loop
    const std::int64_t f = c.moe_layer_frequency;
    if (f <= 0 || hi <= lo) return 0;
    const auto below = [f](std::int64_t x) { return x <= 0 ? 0 : (x - 1) / f + 1; };
    return below(hi) - below(lo);
  }
  std::int64_t n = 0;  // a pattern has num_layers entries
  for (std::int64_t i = lo; i < hi; ++i)
    if (c.is_moe_layer(i)) ++n;
  return n;
}

/// Per-rank memory, in bytes.
struct MemoryEstimate {
  std::int64_t moe_layers = 0;         ///< MoE layers on this rank's pipeline stage
  std::int64_t local_experts = 0;      ///< experts per MoE layer on this rank
  std::int64_t rows_per_layer = 0;     ///< expert rows this rank computes in one MoE layer
  std::int64_t expert_parameters = 0;  ///< bytes of local expert weights, all MoE layers
  std::int64_t expert_gradients = 0;
  std::int64_t optimizer_state = 0;    ///< moments (AdamW) and fp32 master copies
  std::int64_t router = 0;             ///< router weights, gradients and optimizer state
  std::int64_t shared_expert = 0;      ///< shared expert (and gate): weights, gradients, state
  std::int64_t activations = 0;        ///< what the MoE layers keep for backward
  std::int64_t per_expert = 0;         ///< weights + gradients + optimizer state of one expert
  std::int64_t total() const {
    return expert_parameters + expert_gradients + optimizer_state + router + shared_expert +
           activations;
  }
  /// Whether one expert fits in the config's memory_per_expert_mb.
  bool fits_memory_per_expert(const Config& c) const {
    return per_expert <= c.memory_per_expert_mb * std::int64_t{1024} * 1024;
  }
};

/// Estimate for `rank` of a validated config. Expert rows are the capacity rows this rank
/// receives (E·C over the EP group) with capacity dispatch, and the balanced T·k otherwise.
inline MemoryEstimate estimate_memory(const Config& c, std::int64_t rank = 0) {
  const Layout layout(c);
  const std::int64_t stage = layout.coords(rank).pp;
  const std::int64_t b = bytes_of(c.precision);
  // Optimizer bytes per parameter: AdamW keeps two fp32 moments; both keep an fp32 master copy
  // when the parameters are stored in 16 bits.
  const std::int64_t master = c.precision == Precision::float32 ? 0 : 4;
  const std::int64_t opt = (c.optimizer == Optimizer::adamw ? 8 : 0) + master;

  MemoryEstimate m;
  m.moe_layers = moe_layers_on_stage(c, stage);
  m.local_experts = c.sharding_strategy == ShardingStrategy::DataParallel ? c.num_experts
                                                                          : c.local_experts();
  const std::int64_t per_expert_params = expert_parameter_count(c);
  const std::int64_t expert_params = m.moe_layers * m.local_experts * per_expert_params;
  m.expert_parameters = expert_params * b;
  m.expert_gradients = expert_params * b;
  m.optimizer_state = expert_params * opt;
  m.per_expert = per_expert_params * (2 * b + opt);
  m.router = m.moe_layers * c.num_experts * c.hidden_size * (2 * b + opt);
  // The shared expert: fc1 [Fs1][H], fc2 [H][Fs] and the gate [H], replicated like the router;
  // with tensor parallelism each TP rank holds its F shard (Fs = its share) and the whole gate.
  const std::int64_t tp = c.tensor_parallel_size;
  const std::int64_t Fs = c.shared_expert_intermediate_size.value_or(0) / tp;
  const std::int64_t Fs1 = c.gated ? 2 * Fs : Fs;
  const std::int64_t shared_params =
      Fs > 0 ? Fs1 * c.hidden_size + c.hidden_size * Fs + (c.shared_expert_gate ? c.hidden_size : 0)
             : 0;
  m.shared_expert = m.moe_layers * shared_params * (2 * b + opt);

  const std::int64_t T = c.tokens_per_rank();
  const std::int64_t H = c.hidden_size, E = c.num_experts, k = c.num_experts_per_token;
  const std::int64_t F = c.ffn_hidden_size / c.tensor_parallel_size;
  const auto cap = capacity(c, T);
  // The shared expert's fc1 and activation outputs on its rows (with TP those of the whole TP
  // group, which it also keeps a copy of), its output, and its gate's [T].
  const std::int64_t shared_rows = T * tp;
  const std::int64_t shared_activations =
      Fs > 0 ? shared_rows * (Fs1 + Fs) * b + (tp > 1 ? shared_rows * H * b : 0) + T * H * b +
                   (c.shared_expert_gate ? T * b : 0)
             : 0;
  // With tensor-parallel experts the TP ranks hold other tokens and each runs its F shard on
  // the rows of the whole TP group: tp times the rows of one rank.
  m.rows_per_layer = (cap ? E * *cap : T * k) * c.tensor_parallel_size;
  const std::int64_t R = m.rows_per_layer;
  const std::int64_t per_layer = T * H * b                        // layer input x
                                 + 2 * T * E * 4                  // logits and scores, fp32
                                 + T * k * (4 + 4)                // routes: expert index and weight
                                 + R * H * b                      // expert input rows
                                 + R * F * (c.gated ? 2 : 1) * b  // fc1 output
                                 + R * F * b                      // activation output
                                 + T * k * H * b  // expert outputs back on this rank
                                 + shared_activations;
  m.activations = m.moe_layers * per_layer;
  return m;
}

}  // namespace switchyard
