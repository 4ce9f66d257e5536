#pragma once
/// \file Memory estimate for one rank: local expert parameters, their gradients and optimizer
/// state, the router, and the activations the MoE layers keep for backward (docs/config.md,
/// "Memory estimate", says what each term counts).

#include <cstdint>

#include "switchyard/config/capacity.hpp"
#include "switchyard/config/config_types.hpp"
#include "switchyard/config/layout.hpp"

namespace switchyard {

namespace detail {
/// A byte or element count of the memory estimate whose products and sums are checked: a
/// numeric_error instead of a wrapped count. Rules tokens_fit and sizes_fit keep a validated
/// config's counts below 2^62 (tests/config/memory_test.cpp checks it over random configs), so
/// this is the net under them.
struct estimate_count {
  std::int64_t v = 0;
  constexpr estimate_count(std::int64_t x) : v(x) {}  // NOLINT(google-explicit-constructor)
  friend estimate_count operator*(estimate_count a, estimate_count b) {
    std::int64_t r = 0;
    if (__builtin_mul_overflow(a.v, b.v, &r)) overflow();
    return r;
  }
  friend estimate_count operator+(estimate_count a, estimate_count b) {
    std::int64_t r = 0;
    if (__builtin_add_overflow(a.v, b.v, &r)) overflow();
    return r;
  }
  [[noreturn]] static void overflow() {
    throw numeric_error(
        "the memory estimate overflows 64-bit byte counts: a size product that rule sizes_fit "
        "does not bound (please report the config)");
  }
};
}  // namespace detail

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
inline std::int64_t moe_layers_on_stage(const Config& c, std::int64_t stage) {
  SY_EXPECTS(
      stage >= 0 && stage < c.pipeline_parallel_size,
      detail::concat("pipeline stage ", stage, " is outside 0..", c.pipeline_parallel_size - 1));
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
    using I = detail::estimate_count;
    return (I(expert_parameters) + expert_gradients + optimizer_state + router + shared_expert +
            activations)
        .v;
  }
  /// Whether one expert fits in the config's memory_per_expert_mb (compared in whole MiB,
  /// rounded up, so a large memory_per_expert_mb does not overflow).
  bool fits_memory_per_expert(const Config& c) const {
    constexpr std::int64_t mib = std::int64_t{1} << 20;
    return per_expert / mib + (per_expert % mib != 0 ? 1 : 0) <= c.memory_per_expert_mb;
  }
};

/// Estimate for `rank` of a validated config. Expert rows are the capacity rows this rank
/// receives (E·C over the EP group) with capacity dispatch, and the balanced T·k otherwise.
inline MemoryEstimate estimate_memory(const Config& c, std::int64_t rank = 0) {
  const Layout layout(c);
  const std::int64_t stage = layout.coords(rank).pp;
  using I = detail::estimate_count;  // checked products and sums
  const I b = bytes_of(c.precision);
  // Optimizer bytes per parameter: AdamW keeps two fp32 moments; both keep an fp32 master copy
  // when the parameters are stored in 16 bits.
  const std::int64_t master = c.precision == Precision::float32 ? 0 : 4;
  const I opt = (c.optimizer == Optimizer::adamw ? 8 : 0) + master;

  MemoryEstimate m;
  m.moe_layers = moe_layers_on_stage(c, stage);
  m.local_experts = c.sharding_strategy == ShardingStrategy::DataParallel ? c.num_experts
                                                                          : c.local_experts();
  const I per_expert_params = expert_parameter_count(c);
  const I expert_params = I(m.moe_layers) * m.local_experts * per_expert_params;
  m.expert_parameters = (expert_params * b).v;
  m.expert_gradients = (expert_params * b).v;
  m.optimizer_state = (expert_params * opt).v;
  m.per_expert = (per_expert_params * (2 * b + opt)).v;
  m.router = (I(m.moe_layers) * c.num_experts * c.hidden_size * (2 * b + opt)).v;
  // The shared expert: fc1 [Fs1][H], fc2 [H][Fs] and the gate [H], replicated like the router;
  // with tensor parallelism each TP rank holds its F shard (Fs = its share) and the whole gate.
  const std::int64_t tp = c.tensor_parallel_size;
  const std::int64_t Fs = c.shared_expert_intermediate_size.value_or(0) / tp;
  const I Fs1 = c.gated ? 2 * Fs : Fs;
  const I H = c.hidden_size;
  const I shared_params =
      Fs > 0 ? Fs1 * H + H * Fs + (c.shared_expert_gate ? c.hidden_size : 0) : 0;
  m.shared_expert = (I(m.moe_layers) * shared_params * (2 * b + opt)).v;

  const I T = c.tokens_per_rank();  // below 2^62: rule tokens_fit
  const I E = c.num_experts, k = c.num_experts_per_token;
  const I F = c.ffn_hidden_size / c.tensor_parallel_size;
  const auto cap = capacity(c, T.v);
  // The shared expert's fc1 and activation outputs on its rows (with TP those of the whole TP
  // group, which it also keeps a copy of), its output, and its gate's [T].
  const I shared_rows = T * tp;
  const I shared_activations = Fs > 0 ? shared_rows * (Fs1 + Fs) * b +
                                            (tp > 1 ? shared_rows * H * b : I(0)) + T * H * b +
                                            (c.shared_expert_gate ? T * b : I(0))
                                      : I(0);
  // With tensor-parallel experts the TP ranks hold other tokens and each runs its F shard on
  // the rows of the whole TP group: tp times the rows of one rank.
  const I R = (cap ? E * *cap : T * k) * c.tensor_parallel_size;
  m.rows_per_layer = R.v;
  const I per_layer = T * H * b                        // layer input x
                      + 2 * T * E * 4                  // logits and scores, fp32
                      + T * k * (4 + 4)                // routes: expert index and weight
                      + R * H * b                      // expert input rows
                      + R * F * (c.gated ? 2 : 1) * b  // fc1 output
                      + R * F * b                      // activation output
                      + T * k * H * b                  // expert outputs back on this rank
                      + shared_activations;
  m.activations = (I(m.moe_layers) * per_layer).v;
  return m;
}

}  // namespace switchyard
