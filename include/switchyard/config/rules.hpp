#pragma once
/// \file Validation rules of Config as constexpr predicates. The same rules run at compile time
/// (config/static_check.hpp) and at run time (config/validate.hpp), with the same sentence.

#include <cstdint>
#include <limits>

#include "switchyard/config/config_types.hpp"

namespace switchyard {

// X(id, field, sentence): `field` is the field whose JSON path a problem is reported at.
#define SY_CONFIG_RULES(X)                                                                         \
  X(num_experts_positive, num_experts, "num_experts must be at least 1")                           \
  X(experts_fit, num_experts,                                                                      \
    "num_experts must be at most 16777216 (2^24): expert ids are 32-bit in the dispatch and "      \
    "every per-expert table (placement, counts, the router's scores) grows with it")               \
  X(topk_range, num_experts_per_token, "num_experts_per_token must be between 1 and num_experts")  \
  X(ep_positive, expert_parallel_size, "expert_parallel_size must be at least 1")                  \
  X(tp_positive, tensor_parallel_size, "tensor_parallel_size must be at least 1")                  \
  X(pp_positive, pipeline_parallel_size, "pipeline_parallel_size must be at least 1")              \
  X(dp_positive, data_parallel_size, "data_parallel_size must be at least 1")                      \
  X(world_product, world_size,                                                                     \
    "world_size must equal data_parallel_size x expert_parallel_size x tensor_parallel_size x "    \
    "pipeline_parallel_size")                                                                      \
  X(ranks_fit, world_size,                                                                         \
    "the layout has more ranks than the 1048576 (2^20) a Switchyard layout holds: lower "          \
    "data_parallel_size or world_size")                                                            \
  X(experts_divisible_by_ep, expert_parallel_size,                                                 \
    "num_experts must be a multiple of expert_parallel_size")                                      \
  X(data_parallel_sharding_ep1, sharding_strategy,                                                 \
    "DataParallel sharding replicates every expert on every rank: expert_parallel_size must be 1") \
  X(hybrid_sharding_not_built, sharding_strategy,                                                  \
    "Hybrid sharding (hot-expert replication) is not built yet: use ModelParallel, DataParallel "  \
    "or Dynamic (ModelParallel with expert migration)")                                            \
  X(migration_needs_model_parallel, enable_expert_migration,                                       \
    "expert migration moves experts between the ranks of the EP group, and DataParallel sharding " \
    "keeps every expert on every rank: use ModelParallel or Dynamic sharding")                     \
  X(migration_object_needs_model_parallel, migration,                                              \
    "the migration object asks for expert migration, which moves experts between the ranks of "    \
    "the EP group, and DataParallel sharding keeps every expert on every rank: use ModelParallel " \
    "or Dynamic sharding")                                                                         \
  X(capacity_factor_positive, capacity_factor,                                                     \
    "capacity_factor must be > 0 with capacity dispatch (the tutel formula also takes 0: "         \
    "dynamic, dropless; tutel's bounded dynamic capacity, < 0, is not built)")                     \
  X(aux_coeff_nonneg, load_balance_loss_coeff,                                                     \
    "load_balance_loss_coeff must be a number >= 0 that float32 holds, at most 3.4e38 (each "      \
    "entry)")                                                                                      \
  X(balancing_list_aux_only, load_balancing_type,                                                  \
    "a list in load_balancing_type combines 1 to 3 aux losses: each entry aux_loss, seq_aux_loss " \
    "or "                                                                                          \
    "global_aux_loss, no type twice")                                                              \
  X(balance_coeffs_paired, load_balance_loss_coeff,                                                \
    "load_balance_loss_coeff must hold one coefficient per entry of load_balancing_type (a "       \
    "list pairs with a list of the same length)")                                                  \
  X(z_coeff_nonneg, router_z_loss_coeff,                                                           \
    "router_z_loss_coeff must be a number >= 0 that float32 holds, at most 3.4e38")                \
  X(bias_rate_nonneg, expert_bias_update_rate,                                                     \
    "expert_bias_update_rate must be a number >= 0 that float32 holds, at most 3.4e38")            \
  X(learning_rate_positive, learning_rate, "learning_rate must be a finite number > 0")            \
  X(weight_decay_nonneg, weight_decay, "weight_decay must be a finite number >= 0")                \
  X(expert_dropout_range, expert_dropout, "expert_dropout is a probability: it must be in [0, 1]") \
  X(migration_threshold_range, migration_threshold,                                                \
    "migration_threshold is a fraction: it must be in [0, 1]")                                     \
  X(jitter_range, input_jitter_eps, "input_jitter_eps must be in (0, 1)")                          \
  X(sinkhorn_no_aux, load_balance_loss_coeff,                                                      \
    "sinkhorn balances by itself and takes no aux loss: set load_balance_loss_coeff to 0")         \
  X(sinkhorn_no_capacity, token_dispatch,                                                          \
    "sinkhorn routing cannot be combined with capacity dispatch")                                  \
  X(sinkhorn_plain, score_function,                                                                \
    "sinkhorn routing has its own weights (REFERENCE 3): score_function softmax, no "              \
    "pre_softmax, no groups, no expert bias and no topk_scaling_factor")                           \
  X(expert_bias_needs_sigmoid, enable_expert_bias,                                                 \
    "expert bias needs score_function sigmoid or sqrtsoftplus (with softmax it would change "      \
    "the weights)")                                                                                \
  X(expert_bias_length, expert_bias, "expert_bias must be empty or have num_experts entries")      \
  X(expert_bias_without_enable, expert_bias,                                                       \
    "expert_bias is given but enable_expert_bias is false")                                        \
  X(expert_bias_fits_float, expert_bias,                                                           \
    "expert_bias entries must be numbers that float32 holds, at most 3.4e38 in magnitude (the "    \
    "GPU routes in float32)")                                                                      \
  X(softmax_k1, num_experts_per_token,                                                             \
    "k = 1 with softmax top-k-first has a zero gradient: set pre_softmax true or use k >= 2")      \
  X(pre_softmax_needs_softmax, pre_softmax, "pre_softmax applies only to score_function softmax")  \
  X(scaling_positive, topk_scaling_factor,                                                         \
    "topk_scaling_factor must be a number > 0 that float32 holds, at most 3.4e38")                 \
  X(groups_pair, num_groups, "num_groups and group_topk must be given together")                   \
  X(groups_positive, num_groups, "num_groups and group_topk must be at least 1")                   \
  X(group_topk_le_groups, group_topk, "group_topk must not exceed num_groups")                     \
  X(experts_divisible_by_groups, num_groups, "num_experts must be a multiple of num_groups")       \
  X(groups_hold_k, group_topk,                                                                     \
    "the chosen groups must hold at least k experts: group_topk x num_experts / num_groups >= "    \
    "num_experts_per_token")                                                                       \
  X(balancing_disabled_conflict, enable_load_balancing,                                            \
    "enable_load_balancing false turns balancing off: load_balancing_type must be none and "       \
    "enable_expert_bias false")                                                                    \
  X(pad_needs_capacity, pad_to_capacity, "pad_to_capacity needs token_dispatch capacity")          \
  X(position_ties_apply, position_ties,                                                            \
    "position_ties token_order applies only where dropped tokens are chosen among ties: "          \
    "token_dispatch capacity with drop_policy position, under semantics megatron or deepspeed "    \
    "with k = 1")                                                                                  \
  X(deepspeed_router, semantics,                                                                   \
    "semantics deepspeed routes as DeepSpeed's gating: score_function softmax with pre_softmax "   \
    "true (softmax over every expert, then the top k), no groups, no expert bias and no "          \
    "topk_scaling_factor")                                                                         \
  X(deepspeed_balance, load_balancing_type,                                                        \
    "semantics deepspeed has DeepSpeed's aux loss only: load_balancing_type aux_loss or none")     \
  X(deepspeed_no_z_loss, router_z_loss_coeff,                                                      \
    "semantics deepspeed has no z-loss (DeepSpeed's gating has none): set router_z_loss_coeff to " \
    "0")                                                                                           \
  X(deepspeed_capacity_formula, capacity_formula,                                                  \
    "semantics deepspeed with capacity dispatch needs capacity_formula deepspeed")                 \
  X(deepspeed_drop_position, drop_policy,                                                          \
    "semantics deepspeed with k = 1 or 2 drops by position (DeepSpeed's top1gating and "           \
    "top2gating): set drop_policy position")                                                       \
  X(min_capacity_nonneg, min_capacity, "min_capacity must be >= 0")                                \
  X(capacity_fits, capacity_factor,                                                                \
    "the capacity per expert must stay below 2^30 tokens (Switchyard indexes rows in 32 bits): "   \
    "lower capacity_factor or min_capacity")                                                       \
  X(max_batch_positive, max_expert_batch_size, "max_expert_batch_size must be at least 1")         \
  X(shared_expert_positive, shared_expert_intermediate_size,                                       \
    "shared_expert_intermediate_size must be at least 1 (leave it out for no shared expert)")      \
  X(shared_gate_needs_shared, shared_expert_gate,                                                  \
    "shared_expert_gate gates the shared expert: it needs shared_expert_intermediate_size")        \
  X(shared_expert_no_bias, shared_expert_intermediate_size,                                        \
    "the shared expert has no biases (as Megatron-Core's SharedExpertMLP): add_bias_linear must "  \
    "be false")                                                                                    \
  X(shared_expert_divisible_by_tp, shared_expert_intermediate_size,                                \
    "shared_expert_intermediate_size must be a multiple of tensor_parallel_size (the shared "      \
    "expert splits its F over TP, as the experts do)")                                             \
  X(hidden_positive, hidden_size, "hidden_size must be at least 1")                                \
  X(ffn_positive, ffn_hidden_size, "ffn_hidden_size must be at least 1")                           \
  X(layers_positive, num_layers, "num_layers must be at least 1")                                  \
  X(frequency_positive, moe_layer_frequency, "moe_layer_frequency must be at least 1")             \
  X(pattern_length, moe_layer_pattern, "moe_layer_pattern must have one entry per layer")          \
  X(pattern_entries, moe_layer_pattern,                                                            \
    "moe_layer_pattern entries must be 1 (MoE layer) or 0 (dense layer)")                          \
  X(pattern_has_moe, moe_layer_pattern, "moe_layer_pattern must mark at least one MoE layer")      \
  X(pattern_or_frequency, moe_layer_pattern,                                                       \
    "give moe_layer_pattern or moe_layer_frequency, not both: leave moe_layer_frequency at 1")     \
  X(heads_divide_hidden, num_attention_heads,                                                      \
    "num_attention_heads must be at least 1 and divide hidden_size")                               \
  X(heads_divisible_by_tp, num_attention_heads,                                                    \
    "num_attention_heads must be a multiple of tensor_parallel_size")                              \
  X(ffn_divisible_by_tp, tensor_parallel_size,                                                     \
    "ffn_hidden_size must be a multiple of tensor_parallel_size (experts split F over TP)")        \
  X(layers_divisible_by_pp, pipeline_parallel_size,                                                \
    "num_layers must be a multiple of pipeline_parallel_size")                                     \
  X(batch_positive, batch_size_per_gpu, "batch_size_per_gpu must be at least 1")                   \
  X(tokens_fit, batch_size_per_gpu,                                                                \
    "the tokens of a step overflow 64-bit counts: lower batch_size_per_gpu, sequence_length or "   \
    "gradient_accumulation_steps")                                                                 \
  X(sizes_fit, hidden_size,                                                                        \
    "the sizes' products overflow 64-bit counts (nothing this large can be allocated): lower "     \
    "them")                                                                                        \
  X(sequence_positive, sequence_length, "sequence_length must be at least 1")                      \
  X(accumulation_steps_positive, gradient_accumulation_steps,                                      \
    "gradient_accumulation_steps must be at least 1")                                              \
  X(accumulation_steps_unused, gradient_accumulation_steps,                                        \
    "gradient_accumulation_steps has no effect unless enable_gradient_accumulation is true")       \
  X(sync_frequency_positive, sync_frequency, "sync_frequency must be at least 1")                  \
  X(sync_frequency_unused, sync_frequency,                                                         \
    "sync_frequency has no effect unless enable_expert_sync is true")                              \
  X(memory_per_expert_positive, memory_per_expert_mb, "memory_per_expert_mb must be at least 1")   \
  /* fields whose behaviour is not built yet: only their default is accepted */                    \
  X(gate_network_not_built, gate_network, "gate_network is not built yet: leave it null")          \
  X(load_balancing_needs_migration, load_balancing,                                                \
    "the load_balancing object schedules expert migration (load_balancing_type chooses the "       \
    "loss): set sharding_strategy Dynamic, enable_expert_migration or a migration object, or "     \
    "leave it null")                                                                               \
  X(load_balancing_threshold_range, load_balancing,                                                \
    "load_balancing.imbalance_threshold is a fraction: it must be in [0, 1]")                      \
  X(load_balancing_check_frequency_positive, load_balancing,                                       \
    "load_balancing.check_frequency must be at least 1 (optimizer steps between checks)")          \
  X(load_balancing_migrations_range, load_balancing,                                               \
    "load_balancing.max_concurrent_migrations must be at least 2 (every EP rank keeps its number " \
    "of experts, so a move trades experts between two ranks)")                                     \
  X(load_balancing_smoothing_range, load_balancing,                                                \
    "load_balancing.load_smoothing_factor must be in [0, 1) (the weight of the loads so far)")     \
  X(migration_threshold_twice, migration_threshold,                                                \
    "migration_threshold and load_balancing.imbalance_threshold differ: give the threshold once "  \
    "(the object's wins; leave migration_threshold at 0.3)")                                       \
  X(migration_object_enabled, migration,                                                           \
    "a migration object asks for expert migration: set migration.enable_migration true, or "       \
    "leave migration null")                                                                        \
  X(migration_object_unused, migration,                                                            \
    "load_balancing.enable_auto_balancing false keeps the experts where they start, so the "       \
    "migration object has no effect: leave migration null, or auto-balancing on")                  \
  X(migration_triggers_built, migration,                                                           \
    "migration.triggers: LoadImbalance and Periodic are built; MemoryPressure and "                \
    "PerformanceDegradation are not (nothing here measures memory pressure or step time)")         \
  X(migration_strategy_built, migration,                                                           \
    "migration.preferred_strategies takes one strategy, GradualMigration (at most "                \
    "max_concurrent_migrations experts per check) or CompleteMigration (any number: the "          \
    "balanced packing within max_migration_distance); "                                            \
    "LoadRedistribution and Hybrid are not built, and there is no fallback to list")               \
  X(migration_cooldown_nonneg, migration,                                                          \
    "migration.cooldown_period must be >= 0 (optimizer steps after a move before the next)")       \
  X(migration_distance_positive, migration,                                                        \
    "migration.max_migration_distance must be at least 1 (EP ranks an expert may move per "        \
    "check)")                                                                                      \
  X(migration_complete_limit, migration,                                                           \
    "CompleteMigration moves as many experts as the balance needs: "                               \
    "load_balancing.max_concurrent_migrations has no effect with it (leave it at 2, or use "       \
    "GradualMigration)")                                                                           \
  X(migration_threshold_periodic, migration_threshold,                                             \
    "the Periodic trigger moves experts at every check whatever the imbalance: the threshold "     \
    "has no effect (leave migration_threshold and load_balancing.imbalance_threshold at 0.3, or "  \
    "use the LoadImbalance trigger alone)")                                                        \
  X(migration_threshold_unused, migration_threshold,                                               \
    "migration_threshold has no effect without expert migration (enable_expert_migration, "        \
    "sharding_strategy Dynamic or a migration object, and load_balancing.enable_auto_balancing "   \
    "not false): leave it at 0.3")                                                                 \
  X(load_balancing_fields_unused, load_balancing,                                                  \
    "load_balancing's fields are set but the object is absent (present false): set present, or "   \
    "leave them at torsh's defaults")                                                              \
  X(migration_fields_unused, migration,                                                            \
    "migration's fields are set but the object is absent (present false): set present, or leave "  \
    "them at torsh's defaults")

/// Identifies one validation rule.
enum class rule_id {
#define SY_DETAIL_RULE_ENUM(id, field, text) id,
  SY_CONFIG_RULES(SY_DETAIL_RULE_ENUM)
#undef SY_DETAIL_RULE_ENUM
};

/// The most ranks a layout holds (rule ranks_fit; Layout checks it too): 2^20, about ten times
/// the largest training clusters. `plan --json` lists every process group of the layout.
inline constexpr std::int64_t max_world_size = std::int64_t{1} << 20;

/// The largest capacity per expert Switchyard computes with (rows are indexed in 32 bits on the
/// device, and E·C·H must not overflow); rule capacity_fits keeps a config's capacity half below.
inline constexpr std::int64_t max_expert_capacity = 2147483647;

/// The most experts a config may have (rule experts_fit): expert ids and slots are int32 in the
/// dispatch, and plan lists per-expert tables.
inline constexpr std::int64_t max_experts = std::int64_t{1} << 24;

namespace detail {
/// Neither infinite nor NaN (constexpr, unlike std::isfinite in C++20; no arithmetic on an
/// infinity, which a constant expression may not evaluate).
constexpr bool finite(double x) {
  return x == x && x <= std::numeric_limits<double>::max() &&
         x >= std::numeric_limits<double>::lowest();
}

/// A number that rounds to a finite float: the values that the GPU routes and weighs with (loss
/// coefficients, the bias and its rate, the scaling factor) live there in float32. Below float's
/// largest value plus half its last unit (2^103), 3.4028235677973366e38: 3.4028235e38, as numpy
/// prints float32's maximum, rounds to it; the halfway point rounds (to even) to infinity.
constexpr bool fits_float(double x) {
  constexpr double limit = static_cast<double>(std::numeric_limits<float>::max()) + 0x1p103;
  return finite(x) && x < limit && x > -limit;
}

/// The largest double below 2^63 that the size checks compare with: 2^62 leaves room for the
/// sums that follow a product.
inline constexpr double size_limit = 4611686018427387904.0;  // 2^62

/// The size products that rules tokens_fit, sizes_fit and capacity_fits bound, computed in
/// double: every factor is an int64 (below 2^63) or a finite factor capped at 2^63, so a product
/// of a few of them is finite and a constant expression can evaluate it. Bytes and copies are a
/// factor 64.
struct size_products {
  double tokens = 0;    ///< batch x sequence x micro-batches: the tokens of a step on a rank
  double rows = 0;      ///< expert rows of one MoE layer on a rank (at most): tokens x k, or
                        ///< with capacity dispatch up to num_experts x capacity if more
  double capacity = 0;  ///< with capacity dispatch, the capacity per expert for the tokens of
                        ///< a micro-batch (about, from above)
  double routed = 0;    ///< rows x hidden_size x tensor_parallel_size x layers x 64
  double scores = 0;    ///< tokens x num_experts x layers x 64 (router logits and scores)
  double experts = 0;   ///< ffn x hidden x (2|3) x num_experts x layers x 64 (parameters)
  double hidden = 0;    ///< rows x ffn x (2|3) x layers x 64 (the experts' fc1 outputs)
  double shared = 0;    ///< shared size x (hidden + tokens) x 3 x layers x 64
};

/// data x expert x tensor x pipeline parallel sizes, in double (0 when one is below 1).
constexpr double ranks_product(const Config& c) {
  if (c.expert_parallel_size < 1 || c.tensor_parallel_size < 1 || c.pipeline_parallel_size < 1 ||
      c.dp() < 1)
    return 0;
  return static_cast<double>(c.dp()) * static_cast<double>(c.expert_parallel_size) *
         static_cast<double>(c.tensor_parallel_size) *
         static_cast<double>(c.pipeline_parallel_size);
}

/// Whether every size is at least 1 (else other rules report it, and no product is computed).
constexpr bool sizes_positive(const Config& c) {
  return c.batch_size_per_gpu >= 1 && c.sequence_length >= 1 && c.hidden_size >= 1 &&
         c.ffn_hidden_size >= 1 && c.num_experts >= 1 && c.num_experts_per_token >= 1 &&
         c.num_layers >= 1 && c.micro_batches_per_step() >= 1 && c.expert_parallel_size >= 1 &&
         c.tensor_parallel_size >= 1 && c.pipeline_parallel_size >= 1 && c.dp() >= 1 &&
         c.min_capacity >= 0 && c.shared_expert_intermediate_size.value_or(1) >= 1;
}

constexpr size_products size_products_of(const Config& c) {
  size_products p;
  const auto d = [](std::int64_t v) { return static_cast<double>(v); };
  if (c.batch_size_per_gpu >= 1 && c.sequence_length >= 1 && c.micro_batches_per_step() >= 1)
    p.tokens = d(c.batch_size_per_gpu) * d(c.sequence_length) * d(c.micro_batches_per_step());
  if (!sizes_positive(c)) return p;
  const double k = d(c.num_experts_per_token), E = d(c.num_experts), H = d(c.hidden_size);
  const double F = d(c.ffn_hidden_size), L = d(c.num_layers), tp = d(c.tensor_parallel_size);
  const double fc1 = c.gated ? 3 : 2;  // fc1 (F or 2F rows) and fc2 (F columns)
  p.rows = p.tokens * k;
  if (c.token_dispatch == TokenDispatch::capacity) {
    // Every formula (config/capacity.hpp) gives at most about cf·k·(T/E + 1) + 1 per expert
    // for the T = batch x sequence tokens of a micro-batch (megablocks: times ep; up to float32
    // rounding), and at least min_capacity.
    const double cap_limit = 9223372036854775808.0;  // 2^63: caps an infinite or huge factor
    double cf = c.capacity_factor < 0 ? -c.capacity_factor : c.capacity_factor;
    if (!(cf <= cap_limit)) cf = cap_limit;  // also NaN: a capacity beyond every limit
    if (c.capacity_formula == CapacityFormula::megablocks) cf *= d(c.expert_parallel_size);
    const double micro_batch = d(c.batch_size_per_gpu) * d(c.sequence_length);
    const double per_expert = cf * k * (micro_batch / E + 1) + 1;
    p.capacity = per_expert > d(c.min_capacity) ? per_expert : d(c.min_capacity);
    if (E * p.capacity > p.rows) p.rows = E * p.capacity;
  }
  p.routed = p.rows * H * tp * L * 64;
  p.scores = p.tokens * E * L * 64;
  p.experts = F * H * fc1 * E * L * 64;
  p.hidden = p.rows * F * fc1 * L * 64;
  if (c.shared_expert_intermediate_size)
    p.shared = d(*c.shared_expert_intermediate_size) * (H + p.tokens) * 3 * L * 64;
  return p;
}

/// The first of sizes_fit's products that reaches size_limit: 1 routed, 2 scores, 3 experts,
/// 4 hidden, 5 shared; 0 when none does.
constexpr int oversized_product(const Config& c) {
  const size_products p = size_products_of(c);
  const double in_order[] = {p.routed, p.scores, p.experts, p.hidden, p.shared};
  for (int i = 0; i < 5; ++i)
    if (in_order[i] >= size_limit) return i + 1;
  return 0;
}
}  // namespace detail

/// Whether Config `c` satisfies rule `r`. constexpr: usable in static_assert.
constexpr bool rule_ok(const Config& c, rule_id r) {
  using detail::finite;
  using detail::fits_float;
  using detail::oversized_product;
  const std::int64_t E = c.num_experts;
  const std::int64_t k = c.num_experts_per_token;
  const bool sinkhorn = c.load_balancing_type == LoadBalancingType::sinkhorn;
  const bool capacity = c.token_dispatch == TokenDispatch::capacity;
  const bool deepspeed = c.semantics == Semantics::deepspeed;
  switch (r) {
    case rule_id::num_experts_positive: return E >= 1;
    case rule_id::experts_fit: return E <= max_experts;
    case rule_id::topk_range: return k >= 1 && k <= E;
    case rule_id::ep_positive: return c.expert_parallel_size >= 1;
    case rule_id::tp_positive: return c.tensor_parallel_size >= 1;
    case rule_id::pp_positive: return c.pipeline_parallel_size >= 1;
    case rule_id::dp_positive: return c.dp() >= 1;
    case rule_id::ranks_fit:
      return detail::ranks_product(c) <= static_cast<double>(max_world_size) &&
             (!c.world_size || *c.world_size <= max_world_size);
    case rule_id::world_product:
      if (!c.world_size) return true;
      // A size below 1 (rules ep_positive, tp_positive, pp_positive, dp_positive) or a product
      // beyond 2^62 (rule ranks_fit) is reported by its own rule; the product below then fits.
      if (detail::ranks_product(c) == 0 || detail::ranks_product(c) >= detail::size_limit)
        return true;
      return *c.world_size ==
             c.dp() * c.expert_parallel_size * c.tensor_parallel_size * c.pipeline_parallel_size;
    case rule_id::experts_divisible_by_ep:
      return c.expert_parallel_size < 1 || E % c.expert_parallel_size == 0;
    case rule_id::data_parallel_sharding_ep1:
      return c.sharding_strategy != ShardingStrategy::DataParallel || c.expert_parallel_size == 1;
    case rule_id::hybrid_sharding_not_built: return c.sharding_strategy != ShardingStrategy::Hybrid;
    case rule_id::migration_needs_model_parallel:
      return !c.enable_expert_migration || c.sharding_strategy != ShardingStrategy::DataParallel;
    case rule_id::migration_object_needs_model_parallel:
      return !(c.migration.present && c.migration.enable_migration) ||
             c.sharding_strategy != ShardingStrategy::DataParallel;
    case rule_id::capacity_factor_positive:
      return !capacity || c.capacity_factor > 0 ||
             (c.capacity_factor == 0 && c.capacity_formula == CapacityFormula::tutel);
    case rule_id::aux_coeff_nonneg:
      for (const double a : c.load_balance_loss_coeff)
        if (!(a >= 0) || !fits_float(a)) return false;
      return true;
    case rule_id::balancing_list_aux_only: {
      if (!c.load_balancing_type.is_list()) return true;
      const auto& t = c.load_balancing_type;
      if (t.size() == 0) return false;  // an empty list (clear()) names no loss
      for (std::size_t i = 0; i < t.size(); ++i) {
        if (t[i] != LoadBalancingType::aux_loss && t[i] != LoadBalancingType::seq_aux_loss &&
            t[i] != LoadBalancingType::global_aux_loss)
          return false;
        for (std::size_t j = 0; j < i; ++j)
          if (t[j] == t[i]) return false;
      }
      return true;
    }
    case rule_id::balance_coeffs_paired:
      return c.load_balance_loss_coeff.size() == c.load_balancing_type.size();
    case rule_id::z_coeff_nonneg:
      return c.router_z_loss_coeff >= 0 && fits_float(c.router_z_loss_coeff);
    case rule_id::bias_rate_nonneg:
      return c.expert_bias_update_rate >= 0 && fits_float(c.expert_bias_update_rate);
    case rule_id::learning_rate_positive: return c.learning_rate > 0 && finite(c.learning_rate);
    case rule_id::weight_decay_nonneg: return c.weight_decay >= 0 && finite(c.weight_decay);
    case rule_id::expert_dropout_range: return c.expert_dropout >= 0 && c.expert_dropout <= 1;
    case rule_id::migration_threshold_range:
      return c.migration_threshold >= 0 && c.migration_threshold <= 1;
    case rule_id::jitter_range:
      return !c.input_jitter_eps || (*c.input_jitter_eps > 0 && *c.input_jitter_eps < 1);
    case rule_id::sinkhorn_no_aux: return !sinkhorn || c.load_balance_loss_coeff == 0;
    case rule_id::sinkhorn_no_capacity: return !sinkhorn || !capacity;
    case rule_id::sinkhorn_plain:
      return !sinkhorn || (c.score_function == ScoreFunction::softmax && !c.pre_softmax &&
                           !c.num_groups && !c.group_topk && !c.enable_expert_bias &&
                           !c.topk_scaling_factor);
    case rule_id::expert_bias_needs_sigmoid:
      return !c.enable_expert_bias || c.score_function != ScoreFunction::softmax;
    case rule_id::expert_bias_length:
      return c.expert_bias.empty() || static_cast<std::int64_t>(c.expert_bias.size()) == E;
    case rule_id::expert_bias_without_enable:
      return c.expert_bias.empty() || c.enable_expert_bias;
    case rule_id::expert_bias_fits_float:
      for (const double b : c.expert_bias)
        if (!fits_float(b)) return false;
      return true;
    case rule_id::softmax_k1:
      return !(k == 1 && c.score_function == ScoreFunction::softmax && !c.pre_softmax &&
               !sinkhorn);
    case rule_id::pre_softmax_needs_softmax:
      return !c.pre_softmax || c.score_function == ScoreFunction::softmax;
    case rule_id::scaling_positive:
      return !c.topk_scaling_factor ||
             (*c.topk_scaling_factor > 0 && fits_float(*c.topk_scaling_factor));
    case rule_id::groups_pair: return c.num_groups.has_value() == c.group_topk.has_value();
    case rule_id::groups_positive:
      return (!c.num_groups || *c.num_groups >= 1) && (!c.group_topk || *c.group_topk >= 1);
    case rule_id::group_topk_le_groups:
      return !c.num_groups || !c.group_topk || *c.group_topk <= *c.num_groups;
    case rule_id::experts_divisible_by_groups:
      return !c.num_groups || *c.num_groups < 1 || E % *c.num_groups == 0;
    case rule_id::groups_hold_k:  // group_topk x E/num_groups >= k, without the product
      return !c.num_groups || !c.group_topk || *c.num_groups < 1 ||
             (E / *c.num_groups > 0 &&
              *c.group_topk >= (k + E / *c.num_groups - 1) / (E / *c.num_groups));
    case rule_id::balancing_disabled_conflict:
      return c.enable_load_balancing ||
             (c.load_balancing_type == LoadBalancingType::none && !c.enable_expert_bias);
    case rule_id::pad_needs_capacity: return !c.pad_to_capacity || capacity;
    case rule_id::position_ties_apply:
      return c.position_ties == PositionTies::torch_cpu ||
             (capacity && c.drop_policy == DropPolicy::position && (!deepspeed || k == 1));
    case rule_id::deepspeed_router:
      return !deepspeed || (c.score_function == ScoreFunction::softmax && c.pre_softmax &&
                            !c.num_groups && !c.group_topk && !c.enable_expert_bias &&
                            !c.topk_scaling_factor);
    case rule_id::deepspeed_balance:
      return !deepspeed || c.load_balancing_type == LoadBalancingType::aux_loss ||
             c.load_balancing_type == LoadBalancingType::none;
    case rule_id::deepspeed_no_z_loss: return !deepspeed || c.router_z_loss_coeff == 0;
    case rule_id::deepspeed_capacity_formula:
      return !deepspeed || !capacity || c.capacity_formula == CapacityFormula::deepspeed;
    case rule_id::deepspeed_drop_position:
      return !deepspeed || !capacity || k > 2 || c.drop_policy == DropPolicy::position;
    case rule_id::min_capacity_nonneg: return c.min_capacity >= 0;
    case rule_id::capacity_fits:
      return !capacity ||
             detail::size_products_of(c).capacity <= static_cast<double>(max_expert_capacity / 2);
    case rule_id::max_batch_positive:
      return !c.max_expert_batch_size || *c.max_expert_batch_size >= 1;
    case rule_id::shared_expert_positive:
      return !c.shared_expert_intermediate_size || *c.shared_expert_intermediate_size >= 1;
    case rule_id::shared_gate_needs_shared:
      return !c.shared_expert_gate || c.shared_expert_intermediate_size.has_value();
    case rule_id::shared_expert_no_bias:
      return !c.shared_expert_intermediate_size || !c.add_bias_linear;
    case rule_id::shared_expert_divisible_by_tp:
      return !c.shared_expert_intermediate_size || c.tensor_parallel_size < 1 ||
             *c.shared_expert_intermediate_size % c.tensor_parallel_size == 0;
    case rule_id::hidden_positive: return c.hidden_size >= 1;
    case rule_id::ffn_positive: return c.ffn_hidden_size >= 1;
    case rule_id::layers_positive: return c.num_layers >= 1;
    case rule_id::frequency_positive: return c.moe_layer_frequency >= 1;
    case rule_id::pattern_length:
      return c.moe_layer_pattern.empty() ||
             static_cast<std::int64_t>(c.moe_layer_pattern.size()) == c.num_layers;
    case rule_id::pattern_entries:
      for (std::int64_t v : c.moe_layer_pattern)
        if (v != 0 && v != 1) return false;
      return true;
    case rule_id::pattern_has_moe:
      if (c.moe_layer_pattern.empty()) return true;
      for (std::int64_t v : c.moe_layer_pattern)
        if (v == 1) return true;
      return false;
    case rule_id::pattern_or_frequency:
      return c.moe_layer_pattern.empty() || c.moe_layer_frequency == 1;
    case rule_id::heads_divide_hidden:
      return !c.num_attention_heads ||
             (*c.num_attention_heads >= 1 && c.hidden_size % *c.num_attention_heads == 0);
    case rule_id::heads_divisible_by_tp:
      return !c.num_attention_heads || c.tensor_parallel_size < 1 ||
             *c.num_attention_heads % c.tensor_parallel_size == 0;
    case rule_id::ffn_divisible_by_tp:
      return c.tensor_parallel_size < 1 || c.ffn_hidden_size % c.tensor_parallel_size == 0;
    case rule_id::layers_divisible_by_pp:
      return c.pipeline_parallel_size < 1 || c.num_layers % c.pipeline_parallel_size == 0;
    case rule_id::batch_positive: return c.batch_size_per_gpu >= 1;
    case rule_id::tokens_fit: return detail::size_products_of(c).tokens < detail::size_limit;
    case rule_id::sizes_fit:  // reported only once the tokens fit
      return detail::size_products_of(c).tokens >= detail::size_limit || oversized_product(c) == 0;
    case rule_id::sequence_positive: return c.sequence_length >= 1;
    case rule_id::accumulation_steps_positive: return c.gradient_accumulation_steps >= 1;
    case rule_id::accumulation_steps_unused:
      return c.enable_gradient_accumulation || c.gradient_accumulation_steps == 1;
    case rule_id::sync_frequency_positive: return c.sync_frequency >= 1;
    case rule_id::sync_frequency_unused: return c.enable_expert_sync || c.sync_frequency == 100;
    case rule_id::memory_per_expert_positive: return c.memory_per_expert_mb >= 1;
    case rule_id::gate_network_not_built: return !c.gate_network.present;
    case rule_id::load_balancing_needs_migration:
      return !c.load_balancing.present || c.migration_requested();
    case rule_id::load_balancing_threshold_range:
      return c.load_balancing.imbalance_threshold >= 0 && c.load_balancing.imbalance_threshold <= 1;
    case rule_id::load_balancing_check_frequency_positive:
      return c.load_balancing.check_frequency >= 1;
    case rule_id::load_balancing_migrations_range:
      return c.load_balancing.max_concurrent_migrations >= 2;
    case rule_id::load_balancing_smoothing_range:
      return c.load_balancing.load_smoothing_factor >= 0 &&
             c.load_balancing.load_smoothing_factor < 1;
    case rule_id::migration_threshold_twice:
      return !c.load_balancing.present || c.migration_threshold == 0.3 ||
             c.migration_threshold == c.load_balancing.imbalance_threshold;
    case rule_id::migration_object_enabled:
      return !c.migration.present || c.migration.enable_migration;
    case rule_id::migration_object_unused:
      return !c.migration.present || !c.load_balancing.present ||
             c.load_balancing.enable_auto_balancing;
    case rule_id::migration_triggers_built:
      return !c.migration.triggers.contains(MigrationTrigger::MemoryPressure) &&
             !c.migration.triggers.contains(MigrationTrigger::PerformanceDegradation);
    case rule_id::migration_strategy_built:
      return c.migration.preferred_strategies.size() == 1 &&
             (c.migration.preferred_strategies[0] == MigrationStrategy::GradualMigration ||
              c.migration.preferred_strategies[0] == MigrationStrategy::CompleteMigration);
    case rule_id::migration_cooldown_nonneg: return c.migration.cooldown_period >= 0;
    case rule_id::migration_distance_positive: return c.migration.max_migration_distance >= 1;
    case rule_id::migration_complete_limit:
      return !c.migration.present || !c.load_balancing.present ||
             c.migration.preferred_strategies[0] != MigrationStrategy::CompleteMigration ||
             c.load_balancing.max_concurrent_migrations ==
                 load_balancing_object{}.max_concurrent_migrations;
    case rule_id::migration_threshold_periodic:
      return !c.migration_periodic() ||
             (c.migration_threshold == 0.3 &&
              (!c.load_balancing.present || c.load_balancing.imbalance_threshold == 0.3));
    case rule_id::migration_fields_unused:
      return c.migration.present || c.migration == migration_object{};
    case rule_id::migration_threshold_unused:
      return c.migrates_experts() || c.migration_threshold == 0.3;
    case rule_id::load_balancing_fields_unused:
      return c.load_balancing.present || c.load_balancing == load_balancing_object{};
  }
  return false;
}

/// True when every rule holds.
constexpr bool is_valid(const Config& c) {
#define SY_DETAIL_RULE_ALL(id, field, text) \
  if (!rule_ok(c, rule_id::id)) return false;
  SY_CONFIG_RULES(SY_DETAIL_RULE_ALL)
#undef SY_DETAIL_RULE_ALL
  return true;
}

}  // namespace switchyard
