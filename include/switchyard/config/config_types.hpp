#pragma once
/// \file The runtime configuration: one plain aggregate with every field (the torsh
/// ExpertParallelismConfig fields, Megatron's routing and dispatch flags, model, parallel, token
/// and training sizes). It is a literal type: a Config can be built and validated at compile time
/// (see config/static_check.hpp). docs/config.md describes every field.

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <vector>

#include "switchyard/config/enums.hpp"

namespace switchyard {

/// A nested torsh object (gate_network) whose behaviour Switchyard does not build: only its absence
/// (JSON null) is valid; `present` records that one was given.
struct unbuilt_object {
  bool present = false;
  friend constexpr bool operator==(const unbuilt_object&, const unbuilt_object&) = default;
};

/// torsh's LoadBalancingConfig (the `load_balancing` field): how expert migration rebalances
/// (docs/config.md, docs/layer.md "Expert migration"). Valid only where the experts migrate;
/// null (`present` false) keeps the plain schedule: a check after every step, from that step's
/// loads, with no limit on the experts moved.
struct load_balancing_object {
  bool present = false;
  bool enable_auto_balancing = true;           ///< false: the experts stay where they start
  double imbalance_threshold = 0.3;            ///< migrate above this EP-rank imbalance, in [0, 1]
  std::int64_t check_frequency = 50;           ///< a check every this many optimizer steps, >= 1
  std::int64_t max_concurrent_migrations = 2;  ///< experts moved to another rank per check, >= 2
  double load_smoothing_factor = 0.9;          ///< f of the loads' moving average, in [0, 1)
  friend constexpr bool operator==(const load_balancing_object&,
                                   const load_balancing_object&) = default;
};

/// A field that holds one value or, in Megatron-Core's list form, up to N of them:
/// load_balancing_type and load_balance_loss_coeff name several aux losses at once, each with its
/// own coefficient. Built from one value (so `c.load_balancing_type =
/// LoadBalancingType::none` works); compares equal to one value only when it holds exactly that
/// value. A literal type, like Config.
template <class T, std::size_t N>
class one_or_more {
 public:
  constexpr one_or_more(T v = T{}) : v_{v}, n_(1) {}  // NOLINT(google-explicit-constructor)
  /// The list form: 1 to N values.
  constexpr one_or_more(std::initializer_list<T> values) : n_(0) {
    if (values.size() < 1 || values.size() > N)
      throw std::length_error("one_or_more: a list holds 1 to N values");
    for (const T& v : values) push_back(v);
  }
  /// Appends a value; false when N are held already. clear() first to build a list.
  constexpr bool push_back(T v) {
    if (n_ == N) return false;
    v_[n_++] = v;
    return true;
  }
  constexpr void clear() {
    v_ = {};
    n_ = 0;
  }
  constexpr std::size_t size() const { return n_; }
  constexpr bool is_list() const { return n_ != 1; }
  constexpr const T& operator[](std::size_t i) const { return v_[i]; }
  constexpr const T* begin() const { return v_.data(); }
  constexpr const T* end() const { return v_.data() + n_; }
  constexpr bool contains(const T& x) const {
    for (const T& v : *this)
      if (v == x) return true;
    return false;
  }
  friend constexpr bool operator==(const one_or_more&, const one_or_more&) = default;
  friend constexpr bool operator==(const one_or_more& a, const T& b) {
    return a.n_ == 1 && a.v_[0] == b;
  }

 private:
  std::array<T, N> v_{};  // unused entries stay T{} so that == compares the held values only
  std::size_t n_ = 1;
};

/// torsh's ExpertMigrationConfig (the `migration` field): what starts an expert migration and
/// how far it goes (docs/config.md, docs/layer.md "Expert migration"). Present, it asks for
/// migration (enable_migration must be true); its fields shape migration_schedule.
struct migration_object {
  bool present = false;
  bool enable_migration = false;  ///< must be true when the object is given
  /// LoadImbalance and/or Periodic (MemoryPressure, PerformanceDegradation: not built).
  one_or_more<MigrationTrigger, 4> triggers = MigrationTrigger::LoadImbalance;
  /// One entry: GradualMigration or CompleteMigration (LoadRedistribution, Hybrid: not built).
  one_or_more<MigrationStrategy, 4> preferred_strategies = MigrationStrategy::GradualMigration;
  std::int64_t cooldown_period = 100;       ///< optimizer steps after a move before the next, >= 0
  std::int64_t max_migration_distance = 1;  ///< EP ranks an expert may move per check, >= 1
  friend constexpr bool operator==(const migration_object&, const migration_object&) = default;
};

/// The aux losses Megatron-Core can combine (aux_loss, seq_aux_loss, global_aux_loss).
inline constexpr std::size_t max_balance_losses = 3;
using balancing_types = one_or_more<LoadBalancingType, max_balance_losses>;
using balance_coeffs = one_or_more<double, max_balance_losses>;

using opt_int = std::optional<std::int64_t>;
using opt_double = std::optional<double>;

// X(type, name, default value, section) for every field, in the order of docs/config.md.
// section names the group a field belongs to in the nested dialects (config/json.hpp).
#define SY_CONFIG_FIELDS(X)                                                                        \
  /* torsh ExpertParallelismConfig (seed 000), same names and defaults */                          \
  X(std::int64_t, num_experts, 8, moe)                                                             \
  X(std::int64_t, num_experts_per_token, 2, moe)                                                   \
  X(double, capacity_factor, 1.25, balance)                                                        \
  X(::switchyard::balance_coeffs, load_balance_loss_coeff, 0.01, balance)                          \
  X(double, router_z_loss_coeff, 0.001, balance)                                                   \
  X(double, expert_dropout, 0.0, moe)                                                              \
  X(bool, enable_load_balancing, true, balance)                                                    \
  X(::switchyard::ShardingStrategy, sharding_strategy,                                             \
    ::switchyard::ShardingStrategy::ModelParallel, distributed)                                    \
  X(::switchyard::opt_int, max_expert_batch_size, std::nullopt, moe)                               \
  X(bool, enable_gradient_accumulation, false, training)                                           \
  X(std::int64_t, gradient_accumulation_steps, 1, training)                                        \
  X(::switchyard::InitStrategy, initialization_strategy, ::switchyard::InitStrategy::Xavier, moe)  \
  X(bool, enable_expert_sync, false, distributed)                                                  \
  X(std::int64_t, sync_frequency, 100, distributed)                                                \
  X(::switchyard::unbuilt_object, gate_network, {}, moe)                                           \
  X(::switchyard::load_balancing_object, load_balancing, {}, balance)                              \
  X(::switchyard::migration_object, migration, {}, balance)                                        \
  X(bool, enable_expert_migration, false, balance)                                                 \
  X(double, migration_threshold, 0.3, balance)                                                     \
  X(std::int64_t, memory_per_expert_mb, 512, balance)                                              \
  X(bool, communication_overlap, true, distributed)                                                \
  X(bool, gradient_compression, false, distributed)                                                \
  /* routing (REFERENCE §1-3, §5) */                                                             \
  X(::switchyard::ScoreFunction, score_function, ::switchyard::ScoreFunction::softmax, moe)        \
  X(bool, pre_softmax, false, moe)                                                                 \
  X(::switchyard::opt_double, topk_scaling_factor, std::nullopt, moe)                              \
  X(::switchyard::opt_int, num_groups, std::nullopt, moe)                                          \
  X(::switchyard::opt_int, group_topk, std::nullopt, moe)                                          \
  X(bool, enable_expert_bias, false, moe)                                                          \
  X(std::vector<double>, expert_bias, {}, moe)                                                     \
  X(double, expert_bias_update_rate, 1e-3, moe)                                                    \
  X(::switchyard::balancing_types, load_balancing_type, ::switchyard::LoadBalancingType::aux_loss, \
    balance)                                                                                       \
  X(::switchyard::opt_double, input_jitter_eps, std::nullopt, moe)                                 \
  X(::switchyard::TokenLayout, token_layout, ::switchyard::TokenLayout::seq_batch, training)       \
  /* dispatch (REFERENCE §4) */                                                                   \
  X(::switchyard::TokenDispatch, token_dispatch, ::switchyard::TokenDispatch::dropless, moe)       \
  X(::switchyard::DropPolicy, drop_policy, ::switchyard::DropPolicy::probs, moe)                   \
  X(bool, pad_to_capacity, false, moe)                                                             \
  X(::switchyard::PositionTies, position_ties, ::switchyard::PositionTies::torch_cpu, moe)         \
  X(::switchyard::CapacityFormula, capacity_formula, ::switchyard::CapacityFormula::megatron,      \
    balance)                                                                                       \
  X(std::int64_t, min_capacity, 0, balance)                                                        \
  X(::switchyard::Semantics, semantics, ::switchyard::Semantics::megatron, moe)                    \
  /* model sizes */                                                                                \
  X(std::int64_t, hidden_size, 1024, model)                                                        \
  X(std::int64_t, ffn_hidden_size, 4096, model)                                                    \
  X(std::int64_t, num_layers, 1, model)                                                            \
  X(std::int64_t, moe_layer_frequency, 1, model)                                                   \
  X(std::vector<std::int64_t>, moe_layer_pattern, {}, model)                                       \
  X(::switchyard::Activation, activation, ::switchyard::Activation::gelu, model)                   \
  X(bool, gated, false, model)                                                                     \
  X(bool, add_bias_linear, false, model)                                                           \
  X(::switchyard::opt_int, shared_expert_intermediate_size, std::nullopt, moe)                     \
  X(bool, shared_expert_gate, false, moe)                                                          \
  X(::switchyard::opt_int, num_attention_heads, std::nullopt, model)                               \
  /* parallel sizes */                                                                             \
  X(::switchyard::opt_int, world_size, std::nullopt, distributed)                                  \
  X(::switchyard::opt_int, data_parallel_size, std::nullopt, distributed)                          \
  X(std::int64_t, expert_parallel_size, 1, distributed)                                            \
  X(std::int64_t, tensor_parallel_size, 1, distributed)                                            \
  X(std::int64_t, pipeline_parallel_size, 1, distributed)                                          \
  X(::switchyard::ExpertPlacement, expert_placement, ::switchyard::ExpertPlacement::contiguous,    \
    distributed)                                                                                   \
  X(::switchyard::DistributedBackend, distributed_backend,                                         \
    ::switchyard::DistributedBackend::automatic, distributed)                                      \
  /* tokens and training */                                                                        \
  X(std::int64_t, batch_size_per_gpu, 1, training)                                                 \
  X(std::int64_t, sequence_length, 1024, training)                                                 \
  X(::switchyard::Optimizer, optimizer, ::switchyard::Optimizer::adamw, training)                  \
  X(double, learning_rate, 1e-4, training)                                                         \
  X(double, weight_decay, 0.0, training)                                                           \
  X(::switchyard::Precision, precision, ::switchyard::Precision::float32, training)

/// Every runtime setting of a Switchyard MoE model. Plain aggregate; defaults are torsh's for its
/// fields and Megatron-Core's for the routing fields. Validate with switchyard::validate().
struct Config {
#define SY_DETAIL_DECLARE_FIELD(type, name, def, section) type name = def;
  SY_CONFIG_FIELDS(SY_DETAIL_DECLARE_FIELD)
#undef SY_DETAIL_DECLARE_FIELD

  friend constexpr bool operator==(const Config&, const Config&) = default;

  /// data_parallel_size as given, or derived from world_size / (ep·tp·pp), or 1.
  constexpr std::int64_t dp() const {
    if (data_parallel_size) return *data_parallel_size;
    if (!world_size) return 1;
    std::int64_t inner = 1;  // ep·tp·pp, without overflow: past the world there is no replica
    for (const std::int64_t f :
         {expert_parallel_size, tensor_parallel_size, pipeline_parallel_size}) {
      if (f < 1) return 1;  // rules ep_positive, tp_positive, pp_positive say so
      if (f > *world_size / inner) return 0;
      inner *= f;
    }
    return *world_size / inner;
  }
  /// world_size as given, or dp·ep·tp·pp.
  constexpr std::int64_t world() const {
    if (world_size) return *world_size;
    return dp() * expert_parallel_size * tensor_parallel_size * pipeline_parallel_size;
  }
  /// Whether block i (0-based) is an MoE layer: moe_layer_pattern[i] == 1 when the pattern is
  /// given (Megatron-Core's moe_layer_freq list), else i % moe_layer_frequency == 0.
  constexpr bool is_moe_layer(std::int64_t i) const {
    if (!moe_layer_pattern.empty())
      return i >= 0 && i < static_cast<std::int64_t>(moe_layer_pattern.size()) &&
             moe_layer_pattern[static_cast<std::size_t>(i)] == 1;
    return i >= 0 && moe_layer_frequency > 0 && i % moe_layer_frequency == 0;
  }
  /// Micro-batches per optimizer step (Megatron's num_microbatches): gradient_accumulation_steps
  /// when enable_gradient_accumulation is true, else 1. Read by the training loop (`switchyard
  /// train`) and `plan`; the layer's backward always adds into the gradients it is given.
  constexpr std::int64_t micro_batches_per_step() const {
    return enable_gradient_accumulation ? gradient_accumulation_steps : 1;
  }
  /// Whether expert migration is asked for: enable_expert_migration, sharding_strategy Dynamic
  /// (ModelParallel placement that migrates; layer.md, "Expert migration") or a migration object
  /// with enable_migration.
  constexpr bool migration_requested() const {
    return enable_expert_migration || sharding_strategy == ShardingStrategy::Dynamic ||
           (migration.present && migration.enable_migration);
  }
  /// Whether a migration object's Periodic trigger moves experts at every check, whatever the
  /// imbalance (the threshold is then 0).
  constexpr bool migration_periodic() const {
    return migration.present && migration.triggers.contains(MigrationTrigger::Periodic);
  }
  /// Whether the experts migrate between the EP ranks by load: asked for, and not turned off by
  /// load_balancing.enable_auto_balancing.
  constexpr bool migrates_experts() const {
    return migration_requested() &&
           (!load_balancing.present || load_balancing.enable_auto_balancing);
  }
  /// Expert migration's schedule (migration_schedule): the imbalance threshold
  /// (load_balancing.imbalance_threshold, else migration_threshold), the steps between checks,
  /// the smoothing factor of the loads and the most experts moved per check (0: no limit).
  constexpr double migration_imbalance_threshold() const {
    if (migration_periodic()) return 0.0;
    return load_balancing.present ? load_balancing.imbalance_threshold : migration_threshold;
  }
  constexpr std::int64_t migration_check_frequency() const {
    return load_balancing.present ? load_balancing.check_frequency : 1;
  }
  constexpr double migration_load_smoothing() const {
    return load_balancing.present ? load_balancing.load_smoothing_factor : 0.0;
  }
  /// The migration object's CompleteMigration: no limit; its GradualMigration: the
  /// load_balancing object's limit, or torsh's default 2 without one.
  constexpr std::int64_t migration_move_limit() const {
    if (migration.present &&
        migration.preferred_strategies[0] == MigrationStrategy::CompleteMigration)
      return 0;
    if (load_balancing.present) return load_balancing.max_concurrent_migrations;
    return migration.present ? load_balancing_object{}.max_concurrent_migrations : 0;
  }
  /// Optimizer steps after a move before the next may happen (the migration object's
  /// cooldown_period; 0 without one).
  constexpr std::int64_t migration_cooldown() const {
    return migration.present ? migration.cooldown_period : 0;
  }
  /// The most EP ranks an expert moves away from its rank in one check (the migration object's
  /// max_migration_distance; 0, any, without one).
  constexpr std::int64_t migration_max_distance() const {
    return migration.present ? migration.max_migration_distance : 0;
  }
  /// Tokens on one rank in one micro-batch: batch_size_per_gpu × sequence_length.
  constexpr std::int64_t tokens_per_rank() const { return batch_size_per_gpu * sequence_length; }
  /// Experts each EP rank holds (all of them under DataParallel sharding).
  constexpr std::int64_t local_experts() const {
    return expert_parallel_size > 0 ? num_experts / expert_parallel_size : 0;
  }
  /// True when load_balancing_type names one of the aux losses (REFERENCE §5).
  constexpr bool has_aux_loss() const {
    return load_balancing_type.contains(LoadBalancingType::aux_loss) ||
           load_balancing_type.contains(LoadBalancingType::seq_aux_loss) ||
           load_balancing_type.contains(LoadBalancingType::global_aux_loss);
  }
  /// The coefficient of aux loss `t` (0 when load_balancing_type does not name it), paired by
  /// position as in Megatron-Core's list form.
  constexpr double aux_loss_coeff(LoadBalancingType t) const {
    for (std::size_t i = 0; i < load_balancing_type.size() && i < load_balance_loss_coeff.size();
         ++i)
      if (load_balancing_type[i] == t) return load_balance_loss_coeff[i];
    return 0.0;
  }
};

}  // namespace switchyard
