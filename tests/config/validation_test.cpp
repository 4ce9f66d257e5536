#include <boost/test/unit_test.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "switchyard/config.hpp"
#include "switchyard/config/json.hpp"

namespace sy = switchyard;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();

// Expert migration over 2 EP ranks asked for by torsh's migration object alone.
void migrating(sy::Config& c) {
  c.expert_parallel_size = 2;
  c.migration.present = true;
  c.migration.enable_migration = true;
}

// Dynamic sharding over 2 EP ranks with torsh's default load_balancing object.
void dynamic_balancing(sy::Config& c) {
  c.expert_parallel_size = 2;
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  c.load_balancing.present = true;
}

struct rule_case {
  std::string name;
  std::function<void(sy::Config&)> mutate;
  sy::rule_id rule;
  std::string expected_text;  // a value-specific part of the message
};

// One failing config per rule, with the words its message must contain.
// DeepSpeed semantics as its rules require (softmax over every expert, no z-loss), with
// capacity dispatch by DeepSpeed's formula when `capacity`.
void deepspeed(sy::Config& c, bool capacity = false) {
  c.semantics = sy::Semantics::deepspeed;
  c.pre_softmax = true;
  c.router_z_loss_coeff = 0;
  if (capacity) {
    c.token_dispatch = sy::TokenDispatch::capacity;
    c.capacity_formula = sy::CapacityFormula::deepspeed;
  }
}

std::vector<rule_case> rule_cases() {
  using R = sy::rule_id;
  return {
      {"zero experts",
       [](sy::Config& c) {
         c.num_experts = 0;
         c.num_experts_per_token = 0;
       },
       R::num_experts_positive, "got 0"},
      {"k above E", [](sy::Config& c) { c.num_experts_per_token = 9; }, R::topk_range,
       "k = 9 with 8 experts"},
      {"k zero", [](sy::Config& c) { c.num_experts_per_token = 0; }, R::topk_range, "k = 0"},
      {"ep zero", [](sy::Config& c) { c.expert_parallel_size = 0; }, R::ep_positive, "got 0"},
      {"tp zero", [](sy::Config& c) { c.tensor_parallel_size = 0; }, R::tp_positive, "got 0"},
      {"pp zero", [](sy::Config& c) { c.pipeline_parallel_size = 0; }, R::pp_positive, "got 0"},
      {"dp zero", [](sy::Config& c) { c.data_parallel_size = 0; }, R::dp_positive, "got 0"},
      {"world mismatch",
       [](sy::Config& c) {
         c.world_size = 8;
         c.data_parallel_size = 3;
         c.expert_parallel_size = 2;
       },
       R::world_product, "world_size 8 but 3 x 2 x 1 x 1 = 6"},
      {"world not divisible",
       [](sy::Config& c) {
         c.world_size = 9;
         c.expert_parallel_size = 2;
       },
       R::world_product, "world_size 9 is not a positive multiple"},
      {"experts over ep",
       [](sy::Config& c) {
         c.num_experts = 64;
         c.expert_parallel_size = 3;
       },
       R::experts_divisible_by_ep, "64 experts cannot be split over 3 ranks"},
      {"data parallel with ep",
       [](sy::Config& c) {
         c.sharding_strategy = sy::ShardingStrategy::DataParallel;
         c.expert_parallel_size = 2;
       },
       R::data_parallel_sharding_ep1, "got DataParallel"},
      {"hybrid", [](sy::Config& c) { c.sharding_strategy = sy::ShardingStrategy::Hybrid; },
       R::hybrid_sharding_not_built, "got Hybrid"},
      {"migration under data-parallel sharding",
       [](sy::Config& c) {
         c.sharding_strategy = sy::ShardingStrategy::DataParallel;
         c.enable_expert_migration = true;
       },
       R::migration_needs_model_parallel,
       "enable_expert_migration true with sharding_strategy DataParallel"},
      {"migration object under data-parallel sharding",
       [](sy::Config& c) {
         c.sharding_strategy = sy::ShardingStrategy::DataParallel;
         c.migration.present = true;
         c.migration.enable_migration = true;
       },
       R::migration_object_needs_model_parallel,
       "migration.enable_migration true with sharding_strategy DataParallel"},
      {"capacity factor zero",
       [](sy::Config& c) {
         c.token_dispatch = sy::TokenDispatch::capacity;
         c.capacity_factor = 0;
       },
       R::capacity_factor_positive, "got 0"},
      {"too many experts", [](sy::Config& c) { c.num_experts = (std::int64_t{1} << 24) + 1; },
       R::experts_fit, "got 16777217"},
      {"tutel's bounded dynamic capacity",
       [](sy::Config& c) {
         c.token_dispatch = sy::TokenDispatch::capacity;
         c.capacity_formula = sy::CapacityFormula::tutel;
         c.capacity_factor = -1.5;
       },
       R::capacity_factor_positive, "got -1.5"},
      {"aux negative", [](sy::Config& c) { c.load_balance_loss_coeff = -0.1; }, R::aux_coeff_nonneg,
       "got -0.1"},
      {"z negative", [](sy::Config& c) { c.router_z_loss_coeff = -1; }, R::z_coeff_nonneg,
       "got -1"},
      {"bias rate negative", [](sy::Config& c) { c.expert_bias_update_rate = -1e-3; },
       R::bias_rate_nonneg, "got -0.001"},
      {"learning rate zero", [](sy::Config& c) { c.learning_rate = 0; }, R::learning_rate_positive,
       "got 0"},
      {"weight decay negative", [](sy::Config& c) { c.weight_decay = -0.1; },
       R::weight_decay_nonneg, "got -0.1"},
      // Infinity passes a bare sign check (1e999 in a JSON file reads as infinity).
      {"learning rate infinite", [](sy::Config& c) { c.learning_rate = inf; },
       R::learning_rate_positive, "got inf"},
      {"weight decay infinite", [](sy::Config& c) { c.weight_decay = inf; }, R::weight_decay_nonneg,
       "got inf"},
      {"aux coefficient infinite", [](sy::Config& c) { c.load_balance_loss_coeff = inf; },
       R::aux_coeff_nonneg, "got inf"},
      {"z coefficient infinite", [](sy::Config& c) { c.router_z_loss_coeff = inf; },
       R::z_coeff_nonneg, "got inf"},
      {"bias rate infinite", [](sy::Config& c) { c.expert_bias_update_rate = inf; },
       R::bias_rate_nonneg, "got inf"},
      {"scaling factor infinite", [](sy::Config& c) { c.topk_scaling_factor = inf; },
       R::scaling_positive, "got inf"},
      // Finite in double but not in float32, where the GPU keeps them.
      {"aux coefficient beyond float", [](sy::Config& c) { c.load_balance_loss_coeff = 1e39; },
       R::aux_coeff_nonneg, "got 1e+39"},
      {"z coefficient beyond float", [](sy::Config& c) { c.router_z_loss_coeff = 1e300; },
       R::z_coeff_nonneg, "got 1e+300"},
      {"bias rate beyond float", [](sy::Config& c) { c.expert_bias_update_rate = 1e308; },
       R::bias_rate_nonneg, "got 1e+308"},
      {"scaling factor beyond float", [](sy::Config& c) { c.topk_scaling_factor = 3.5e38; },
       R::scaling_positive, "got 3.5e+38"},
      {"expert bias beyond float",
       [](sy::Config& c) {
         c.score_function = sy::ScoreFunction::sigmoid;
         c.enable_expert_bias = true;
         c.expert_bias.assign(static_cast<std::size_t>(c.num_experts), 0.0);
         c.expert_bias[3] = -1e39;
       },
       R::expert_bias_fits_float, "entry 3 is -1e+39"},
      {"dropout above one", [](sy::Config& c) { c.expert_dropout = 1.5; }, R::expert_dropout_range,
       "got 1.5"},
      {"migration threshold", [](sy::Config& c) { c.migration_threshold = -0.5; },
       R::migration_threshold_range, "got -0.5"},
      {"jitter", [](sy::Config& c) { c.input_jitter_eps = 1.0; }, R::jitter_range, "got 1"},
      {"balancing list with sinkhorn",
       [](sy::Config& c) {
         c.load_balancing_type = {sy::LoadBalancingType::aux_loss, sy::LoadBalancingType::sinkhorn};
         c.load_balance_loss_coeff = {0.01, 0.0};
       },
       R::balancing_list_aux_only, "got [aux_loss, sinkhorn]"},
      {"balancing list empty",
       [](sy::Config& c) {
         c.load_balancing_type.clear();
         c.load_balance_loss_coeff.clear();
       },
       R::balancing_list_aux_only, "got []"},
      {"balancing list twice",
       [](sy::Config& c) {
         c.load_balancing_type = {sy::LoadBalancingType::seq_aux_loss,
                                  sy::LoadBalancingType::seq_aux_loss};
         c.load_balance_loss_coeff = {0.01, 0.01};
       },
       R::balancing_list_aux_only, "got [seq_aux_loss, seq_aux_loss]"},
      {"coefficients unpaired",
       [](sy::Config& c) {
         c.load_balancing_type = {sy::LoadBalancingType::aux_loss,
                                  sy::LoadBalancingType::global_aux_loss};
       },
       R::balance_coeffs_paired,
       "1 coefficient (0.01) for 2 load_balancing_type entries ([aux_loss, global_aux_loss])"},
      {"sinkhorn with aux",
       [](sy::Config& c) { c.load_balancing_type = sy::LoadBalancingType::sinkhorn; },
       R::sinkhorn_no_aux, "got 0.01"},
      {"sinkhorn with capacity",
       [](sy::Config& c) {
         c.load_balancing_type = sy::LoadBalancingType::sinkhorn;
         c.load_balance_loss_coeff = 0;
         c.token_dispatch = sy::TokenDispatch::capacity;
       },
       R::sinkhorn_no_capacity, "got capacity"},
      {"sinkhorn with sigmoid",
       [](sy::Config& c) {
         c.load_balancing_type = sy::LoadBalancingType::sinkhorn;
         c.load_balance_loss_coeff = 0;
         c.score_function = sy::ScoreFunction::sigmoid;
       },
       R::sinkhorn_plain, "load_balancing_type sinkhorn with score_function sigmoid"},
      {"sinkhorn with pre_softmax and groups",  // the detail names what is set, not "softmax"
       [](sy::Config& c) {
         c.load_balancing_type = sy::LoadBalancingType::sinkhorn;
         c.load_balance_loss_coeff = 0;
         c.pre_softmax = true;
         c.num_groups = 2;
         c.group_topk = 1;
         c.num_experts_per_token = 1;
       },
       R::sinkhorn_plain,
       "load_balancing_type sinkhorn with pre_softmax true, num_groups 2, group_topk 1"},
      {"bias with softmax", [](sy::Config& c) { c.enable_expert_bias = true; },
       R::expert_bias_needs_sigmoid, "got true"},
      {"bias length",
       [](sy::Config& c) {
         c.score_function = sy::ScoreFunction::sigmoid;
         c.enable_expert_bias = true;
         c.expert_bias = {0.0, 0.1};
       },
       R::expert_bias_length, "expert_bias has 2 entries for 8 experts"},
      {"bias without enable", [](sy::Config& c) { c.expert_bias.assign(8, 0.0); },
       R::expert_bias_without_enable, "got [0, 0"},
      {"softmax k1", [](sy::Config& c) { c.num_experts_per_token = 1; }, R::softmax_k1, "got 1"},
      {"pre_softmax with sigmoid",
       [](sy::Config& c) {
         c.score_function = sy::ScoreFunction::sigmoid;
         c.pre_softmax = true;
       },
       R::pre_softmax_needs_softmax, "got true"},
      {"scaling zero", [](sy::Config& c) { c.topk_scaling_factor = 0.0; }, R::scaling_positive,
       "got 0"},
      {"groups alone", [](sy::Config& c) { c.num_groups = 4; }, R::groups_pair, "got 4"},
      {"groups zero",
       [](sy::Config& c) {
         c.num_groups = 0;
         c.group_topk = 0;
       },
       R::groups_positive, "got 0"},
      {"group topk above groups",
       [](sy::Config& c) {
         c.num_groups = 2;
         c.group_topk = 3;
       },
       R::group_topk_le_groups, "got 3"},
      {"experts over groups",
       [](sy::Config& c) {
         c.num_groups = 3;
         c.group_topk = 1;
       },
       R::experts_divisible_by_groups, "8 experts cannot form 3 equal groups"},
      {"groups too small for k",
       [](sy::Config& c) {
         c.num_experts = 16;
         c.num_experts_per_token = 6;
         c.num_groups = 4;
         c.group_topk = 1;
       },
       R::groups_hold_k, "1 of 4 groups hold 4 experts, fewer than k = 6"},
      {"balancing off but aux", [](sy::Config& c) { c.enable_load_balancing = false; },
       R::balancing_disabled_conflict, "got false"},
      {"pad without capacity", [](sy::Config& c) { c.pad_to_capacity = true; },
       R::pad_needs_capacity, "got true"},
      {"position ties without the position policy",
       [](sy::Config& c) {
         c.token_dispatch = sy::TokenDispatch::capacity;
         c.position_ties = sy::PositionTies::token_order;
       },
       R::position_ties_apply, "got token_order"},
      {"position ties for DeepSpeed's top-2 (a cumsum: no ties)",
       [](sy::Config& c) {
         deepspeed(c, true);
         c.drop_policy = sy::DropPolicy::position;
         c.position_ties = sy::PositionTies::token_order;
       },
       R::position_ties_apply, "got token_order"},
      {"min capacity negative", [](sy::Config& c) { c.min_capacity = -1; }, R::min_capacity_nonneg,
       "got -1"},
      {"deepspeed with top-k-first softmax",
       [](sy::Config& c) {
         c.semantics = sy::Semantics::deepspeed;
         c.router_z_loss_coeff = 0;
       },
       R::deepspeed_router, "got deepspeed"},
      {"deepspeed with seq aux loss",
       [](sy::Config& c) {
         deepspeed(c);
         c.load_balancing_type = sy::LoadBalancingType::seq_aux_loss;
       },
       R::deepspeed_balance, "got seq_aux_loss"},
      {"deepspeed with z-loss",
       [](sy::Config& c) {
         c.semantics = sy::Semantics::deepspeed;
         c.pre_softmax = true;
       },
       R::deepspeed_no_z_loss, "got 0.001"},
      {"deepspeed with Megatron's capacity",
       [](sy::Config& c) {
         deepspeed(c, true);
         c.capacity_formula = sy::CapacityFormula::megatron;
         c.drop_policy = sy::DropPolicy::position;
       },
       R::deepspeed_capacity_formula, "got megatron"},
      {"deepspeed top-2 dropping by probs", [](sy::Config& c) { deepspeed(c, true); },
       R::deepspeed_drop_position, "got probs"},
      {"max batch zero", [](sy::Config& c) { c.max_expert_batch_size = 0; }, R::max_batch_positive,
       "got 0"},
      {"shared expert zero", [](sy::Config& c) { c.shared_expert_intermediate_size = 0; },
       R::shared_expert_positive, "got 0"},
      {"shared gate without a shared expert", [](sy::Config& c) { c.shared_expert_gate = true; },
       R::shared_gate_needs_shared, "got true"},
      {"shared expert with biases",
       [](sy::Config& c) {
         c.shared_expert_intermediate_size = 512;
         c.add_bias_linear = true;
       },
       R::shared_expert_no_bias, "got 512"},
      {"shared expert over tensor parallelism",
       [](sy::Config& c) {
         c.shared_expert_intermediate_size = 513;
         c.tensor_parallel_size = 2;
       },
       R::shared_expert_divisible_by_tp, "shared_expert_intermediate_size 513 over 2 ranks"},
      {"hidden zero", [](sy::Config& c) { c.hidden_size = 0; }, R::hidden_positive, "got 0"},
      {"ffn zero", [](sy::Config& c) { c.ffn_hidden_size = 0; }, R::ffn_positive, "got 0"},
      {"layers zero", [](sy::Config& c) { c.num_layers = 0; }, R::layers_positive, "got 0"},
      {"frequency zero", [](sy::Config& c) { c.moe_layer_frequency = 0; }, R::frequency_positive,
       "got 0"},
      {"pattern length",
       [](sy::Config& c) {
         c.num_layers = 4;
         c.moe_layer_pattern = {0, 1, 1};
       },
       R::pattern_length, "moe_layer_pattern has 3 entries for 4 layers"},
      {"pattern entries",
       [](sy::Config& c) {
         c.num_layers = 3;
         c.moe_layer_pattern = {1, 2, 0};
       },
       R::pattern_entries, "entry 1 is 2"},
      {"pattern without moe",
       [](sy::Config& c) {
         c.num_layers = 2;
         c.moe_layer_pattern = {0, 0};
       },
       R::pattern_has_moe, "none of the 2 entries is 1"},
      {"pattern and frequency",
       [](sy::Config& c) {
         c.num_layers = 2;
         c.moe_layer_pattern = {1, 0};
         c.moe_layer_frequency = 2;
       },
       R::pattern_or_frequency, "moe_layer_frequency 2 with a moe_layer_pattern"},
      {"heads", [](sy::Config& c) { c.num_attention_heads = 3; }, R::heads_divide_hidden,
       "hidden_size 1024 over 3 heads"},
      {"heads over tp",
       [](sy::Config& c) {
         c.num_attention_heads = 4;
         c.tensor_parallel_size = 8;
       },
       R::heads_divisible_by_tp, "got 4"},
      {"ffn over tp", [](sy::Config& c) { c.tensor_parallel_size = 3; }, R::ffn_divisible_by_tp,
       "ffn_hidden_size 4096 over 3 ranks"},
      {"layers over pp", [](sy::Config& c) { c.pipeline_parallel_size = 2; },
       R::layers_divisible_by_pp, "1 layers over 2 stages"},
      {"batch zero", [](sy::Config& c) { c.batch_size_per_gpu = 0; }, R::batch_positive, "got 0"},
      {"sequence zero", [](sy::Config& c) { c.sequence_length = 0; }, R::sequence_positive,
       "got 0"},
      {"accumulation steps zero", [](sy::Config& c) { c.gradient_accumulation_steps = 0; },
       R::accumulation_steps_positive, "got 0"},
      {"accumulation steps unused", [](sy::Config& c) { c.gradient_accumulation_steps = 4; },
       R::accumulation_steps_unused, "got 4"},
      {"sync frequency zero", [](sy::Config& c) { c.sync_frequency = 0; },
       R::sync_frequency_positive, "got 0"},
      {"sync frequency unused", [](sy::Config& c) { c.sync_frequency = 50; },
       R::sync_frequency_unused, "got 50"},
      {"memory per expert zero", [](sy::Config& c) { c.memory_per_expert_mb = 0; },
       R::memory_per_expert_positive, "got 0"},
      {"gate network", [](sy::Config& c) { c.gate_network.present = true; },
       R::gate_network_not_built, "got {...}"},
      {"load balancing object without migration",
       [](sy::Config& c) { c.load_balancing.present = true; }, R::load_balancing_needs_migration,
       "an object with sharding_strategy ModelParallel and enable_expert_migration false"},
      {"load balancing threshold",
       [](sy::Config& c) {
         dynamic_balancing(c);
         c.load_balancing.imbalance_threshold = 1.5;
       },
       R::load_balancing_threshold_range, "imbalance_threshold 1.5"},
      {"load balancing check frequency",
       [](sy::Config& c) {
         dynamic_balancing(c);
         c.load_balancing.check_frequency = 0;
       },
       R::load_balancing_check_frequency_positive, "check_frequency 0"},
      {"load balancing one migration",
       [](sy::Config& c) {
         dynamic_balancing(c);
         c.load_balancing.max_concurrent_migrations = 1;
       },
       R::load_balancing_migrations_range, "max_concurrent_migrations 1"},
      {"load balancing smoothing",
       [](sy::Config& c) {
         dynamic_balancing(c);
         c.load_balancing.load_smoothing_factor = 1;
       },
       R::load_balancing_smoothing_range, "load_smoothing_factor 1"},
      {"load balancing fields without the object",
       [](sy::Config& c) { c.load_balancing.check_frequency = 10; },
       R::load_balancing_fields_unused,
       "fields {enable_auto_balancing: true, imbalance_threshold: 0.3, check_frequency: 10, "
       "max_concurrent_migrations: 2, load_smoothing_factor: 0.9} with present false"},
      // Sizes whose products wrap 64 bits (plan printed a negative token count, train trained on
      // a wrapped one).
      {"tokens overflow",
       [](sy::Config& c) {
         c.batch_size_per_gpu = 4'000'000'000;
         c.sequence_length = 4'000'000'000;
       },
       R::tokens_fit,
       "batch_size_per_gpu 4000000000 x sequence_length 4000000000 x 1 micro-batches"},
      {"expert parameters overflow",
       [](sy::Config& c) { c.ffn_hidden_size = 10'000'000'000'000'000; }, R::sizes_fit,
       "ffn_hidden_size 10000000000000000 x hidden_size"},
      {"routed rows overflow",
       [](sy::Config& c) {
         c.batch_size_per_gpu = 1'000'000'000;
         c.num_layers = 1'000'000;
       },
       R::sizes_fit,
       "1024000000000 tokens x k 2 expert rows x hidden_size 1024 x tensor_parallel_size 1 x "
       "num_layers 1000000 x 64 (bytes, copies) = 1.34e+23 (the routed rows' values)"},
      // 65536 tokens x 2 x F 1e12 x 2 x 64 = 1.7e19, but the parameters 1e12 x 1024 x 2 x 8 x 64
      // = 1.0e18 fit.
      {"expert activations overflow",
       [](sy::Config& c) {
         c.batch_size_per_gpu = 64;
         c.ffn_hidden_size = 1'000'000'000'000;
       },
       R::sizes_fit,
       "65536 tokens x k 2 expert rows x ffn_hidden_size 1000000000000 x 2 x num_layers 1 x 64 "
       "(bytes, copies) = 1.68e+19 (the experts' hidden activations)"},
      {"shared expert overflow",
       [](sy::Config& c) { c.shared_expert_intermediate_size = std::int64_t{1} << 54; },
       R::sizes_fit,
       "shared_expert_intermediate_size 18014398509481984 x (hidden_size 1024 + 1024 tokens) x 3 "
       "x num_layers 1 x 64"},
      // 2^20 experts with capacity 2002.95 each: 2.1e9 rows per layer, over 1e5 layers.
      {"capacity rows overflow",
       [](sy::Config& c) {
         c.token_dispatch = sy::TokenDispatch::capacity;
         c.capacity_factor = 1000;
         c.num_experts = 1 << 20;
         c.num_layers = 100'000;
       },
       R::sizes_fit,
       "up to 2100248576 expert rows (num_experts 1048576 x about 2003 per expert, or 1024 tokens "
       "x k 2) x hidden_size 1024"},
      {"capacity beyond 2^30",
       [](sy::Config& c) {
         c.token_dispatch = sy::TokenDispatch::capacity;
         c.capacity_factor = 1e12;
       },
       R::capacity_fits,
       "1e+12 x k 2 x (1024 tokens / 8 experts + 1), or min_capacity 0: up to 258000000000001 "
       "tokens per expert"},
      {"infinite capacity factor",
       [](sy::Config& c) {
         c.token_dispatch = sy::TokenDispatch::capacity;
         c.capacity_factor = inf;
       },
       R::capacity_fits, "inf x k 2"},
      {"min capacity beyond 2^30",
       [](sy::Config& c) {
         c.token_dispatch = sy::TokenDispatch::capacity;
         c.min_capacity = std::int64_t{1} << 40;
       },
       R::capacity_fits,
       "1.25 x k 2 x (1024 tokens / 8 experts + 1), or min_capacity 1099511627776: up to "
       "1099511627776 tokens per expert"},
      {"too many ranks", [](sy::Config& c) { c.data_parallel_size = 1 << 30; }, R::ranks_fit,
       "data_parallel_size 1073741824 x expert_parallel_size 1 x tensor_parallel_size 1 x "
       "pipeline_parallel_size 1 = 1073741824 ranks"},
      // The product wraps 64 bits: world_product leaves it to ranks_fit.
      {"ranks product overflow",
       [](sy::Config& c) {
         c.world_size = 8;
         c.data_parallel_size = std::int64_t{1} << 62;
         c.expert_parallel_size = 2;
       },
       R::ranks_fit,
       "world_size 8, data_parallel_size 4611686018427387904 x expert_parallel_size 2 x "
       "tensor_parallel_size 1 x pipeline_parallel_size 1 = 9.22e+18 ranks"},
      {"two thresholds",
       [](sy::Config& c) {
         dynamic_balancing(c);
         c.migration_threshold = 0.2;
         c.load_balancing.imbalance_threshold = 0.1;
       },
       R::migration_threshold_twice,
       "migration_threshold 0.2 and load_balancing.imbalance_threshold 0.1"},
      {"migration object switched off",
       [](sy::Config& c) {
         c.expert_parallel_size = 2;
         c.migration.present = true;
       },
       R::migration_object_enabled,
       "migration.enable_migration false in {enable_migration: false, triggers: [LoadImbalance], "
       "preferred_strategies: [GradualMigration], cooldown_period: 100, max_migration_distance: "
       "1}"},
      {"migration object with auto-balancing off",
       [](sy::Config& c) {
         migrating(c);
         c.load_balancing.present = true;
         c.load_balancing.enable_auto_balancing = false;
       },
       R::migration_object_unused,
       "got {enable_migration: true, triggers: [LoadImbalance], preferred_strategies: "
       "[GradualMigration], cooldown_period: 100, max_migration_distance: 1}"},
      {"memory pressure trigger",
       [](sy::Config& c) {
         migrating(c);
         c.migration.triggers = {sy::MigrationTrigger::LoadImbalance,
                                 sy::MigrationTrigger::MemoryPressure};
       },
       R::migration_triggers_built, "triggers [LoadImbalance, MemoryPressure]"},
      {"hybrid strategy",
       [](sy::Config& c) {
         migrating(c);
         c.migration.preferred_strategies = sy::MigrationStrategy::Hybrid;
       },
       R::migration_strategy_built, "preferred_strategies [Hybrid]"},
      {"two strategies",
       [](sy::Config& c) {
         migrating(c);
         c.migration.preferred_strategies = {sy::MigrationStrategy::GradualMigration,
                                             sy::MigrationStrategy::CompleteMigration};
       },
       R::migration_strategy_built, "preferred_strategies [GradualMigration, CompleteMigration]"},
      {"negative cooldown",
       [](sy::Config& c) {
         migrating(c);
         c.migration.cooldown_period = -1;
       },
       R::migration_cooldown_nonneg, "cooldown_period -1"},
      {"zero distance",
       [](sy::Config& c) {
         migrating(c);
         c.migration.max_migration_distance = 0;
       },
       R::migration_distance_positive, "max_migration_distance 0"},
      {"complete migration with a limit",
       [](sy::Config& c) {
         migrating(c);
         c.migration.preferred_strategies = sy::MigrationStrategy::CompleteMigration;
         c.load_balancing.present = true;
         c.load_balancing.max_concurrent_migrations = 4;
       },
       R::migration_complete_limit,
       "CompleteMigration with load_balancing.max_concurrent_migrations 4"},
      {"periodic with a threshold",
       [](sy::Config& c) {
         migrating(c);
         c.migration.triggers = sy::MigrationTrigger::Periodic;
         c.load_balancing.present = true;
         c.load_balancing.imbalance_threshold = 0.1;
       },
       R::migration_threshold_periodic,
       "triggers [Periodic] with migration_threshold 0.3 and load_balancing.imbalance_threshold "
       "0.1"},
      {"migration fields without the object",
       [](sy::Config& c) { c.migration.cooldown_period = 5; }, R::migration_fields_unused,
       "fields {enable_migration: false, triggers: [LoadImbalance], preferred_strategies: "
       "[GradualMigration], cooldown_period: 5, max_migration_distance: 1} with present false"},
      {"migration threshold without migration", [](sy::Config& c) { c.migration_threshold = 0.5; },
       R::migration_threshold_unused, "got 0.5"},
  };
}

bool has_problem(const std::vector<sy::problem>& ps, const std::string& path,
                 const std::string& text) {
  for (const auto& p : ps)
    if (p.path == path && p.message.find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

BOOST_AUTO_TEST_CASE(default_config_is_valid_with_torsh_defaults) {
  const sy::Config c;
  BOOST_TEST(sy::validate(c).empty());
  BOOST_TEST(c.num_experts == 8);
  BOOST_TEST(c.num_experts_per_token == 2);
  BOOST_TEST(c.capacity_factor == 1.25);
  BOOST_TEST(c.load_balance_loss_coeff == 0.01);
  BOOST_TEST(c.router_z_loss_coeff == 0.001);
  BOOST_TEST(c.expert_dropout == 0.0);
  BOOST_TEST(c.enable_load_balancing);
  BOOST_TEST((c.sharding_strategy == sy::ShardingStrategy::ModelParallel));
  BOOST_TEST(!c.max_expert_batch_size.has_value());
  BOOST_TEST(!c.enable_gradient_accumulation);
  BOOST_TEST(c.gradient_accumulation_steps == 1);
  BOOST_TEST((c.initialization_strategy == sy::InitStrategy::Xavier));
  BOOST_TEST(!c.enable_expert_sync);
  BOOST_TEST(c.sync_frequency == 100);
  BOOST_TEST(!c.gate_network.present);
  BOOST_TEST(!c.load_balancing.present);
  BOOST_TEST(!c.migration.present);
  BOOST_TEST(!c.enable_expert_migration);
  BOOST_TEST(c.migration_threshold == 0.3);
  BOOST_TEST(c.memory_per_expert_mb == 512);
  BOOST_TEST(c.communication_overlap);
  BOOST_TEST(!c.gradient_compression);
  BOOST_TEST(c.expert_bias_update_rate == 1e-3);
}

// Expert migration: enable_expert_migration (ModelParallel) or sharding_strategy Dynamic, each
// with its own migration_threshold; Hybrid stays rejected.
BOOST_AUTO_TEST_CASE(expert_migration_configs_are_accepted) {
  sy::Config c;
  c.expert_parallel_size = 2;
  c.enable_expert_migration = true;
  c.migration_threshold = 0.1;
  BOOST_TEST(sy::validate(c).empty());
  BOOST_TEST(c.migrates_experts());
  c.enable_expert_migration = false;
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  BOOST_TEST(sy::validate(c).empty());
  BOOST_TEST(c.migrates_experts());
  c.sharding_strategy = sy::ShardingStrategy::ModelParallel;
  BOOST_TEST(!c.migrates_experts());
  BOOST_TEST(!sy::validate(c).empty());  // the threshold alone has no effect
}

// torsh's load_balancing object schedules migration: its defaults, its threshold (the same
// migration_threshold too, or the default one), and enable_auto_balancing false (the experts
// stay: migrates_experts() is false, and a migration_threshold would have no effect).
BOOST_AUTO_TEST_CASE(load_balancing_objects_schedule_migration) {
  sy::Config c;
  dynamic_balancing(c);
  BOOST_TEST(sy::validate(c).empty(), sy::join_problems(sy::validate(c)));
  BOOST_TEST(c.migrates_experts());
  BOOST_TEST(c.migration_imbalance_threshold() == 0.3);
  BOOST_TEST(c.migration_check_frequency() == 50);
  BOOST_TEST(c.migration_load_smoothing() == 0.9);
  BOOST_TEST(c.migration_move_limit() == 2);
  c.load_balancing.imbalance_threshold = 0.1;
  BOOST_TEST(sy::validate(c).empty());
  BOOST_TEST(c.migration_imbalance_threshold() == 0.1);
  c.migration_threshold = 0.1;
  BOOST_TEST(sy::validate(c).empty());
  c.migration_threshold = 0.3;
  c.load_balancing.enable_auto_balancing = false;
  BOOST_TEST(sy::validate(c).empty());
  BOOST_TEST(c.migration_requested());
  BOOST_TEST(!c.migrates_experts());
  c.migration_threshold = 0.1;
  BOOST_TEST(!sy::rule_ok(c, sy::rule_id::migration_threshold_unused));
  // The migration object: GradualMigration moves torsh's 2 experts per check without a
  // load_balancing object (its limit with one), CompleteMigration any number; Periodic makes
  // the threshold 0; the cooldown and the distance come from it alone.
  sy::Config m;
  migrating(m);
  BOOST_TEST(sy::validate(m).empty(), sy::join_problems(sy::validate(m)));
  BOOST_TEST(m.migrates_experts());
  BOOST_TEST(m.migration_move_limit() == 2);
  BOOST_TEST(m.migration_check_frequency() == 1);
  BOOST_TEST(m.migration_cooldown() == 100);
  BOOST_TEST(m.migration_max_distance() == 1);
  BOOST_TEST(m.migration_imbalance_threshold() == 0.3);
  m.load_balancing.present = true;
  m.load_balancing.max_concurrent_migrations = 5;
  BOOST_TEST(m.migration_move_limit() == 5);
  m.load_balancing.max_concurrent_migrations = 2;
  m.migration.preferred_strategies = sy::MigrationStrategy::CompleteMigration;
  BOOST_TEST(sy::validate(m).empty(), sy::join_problems(sy::validate(m)));
  BOOST_TEST(m.migration_move_limit() == 0);
  m.migration.triggers = {sy::MigrationTrigger::LoadImbalance, sy::MigrationTrigger::Periodic};
  BOOST_TEST(sy::validate(m).empty(), sy::join_problems(sy::validate(m)));
  BOOST_TEST(m.migration_imbalance_threshold() == 0.0);
  // Without the object: a check every step, on that step's loads, no limit.
  sy::Config plain;
  BOOST_TEST(plain.migration_cooldown() == 0);
  BOOST_TEST(plain.migration_max_distance() == 0);
  BOOST_TEST(plain.migration_check_frequency() == 1);
  BOOST_TEST(plain.migration_load_smoothing() == 0.0);
  BOOST_TEST(plain.migration_move_limit() == 0);
  BOOST_TEST(plain.migration_imbalance_threshold() == 0.3);
}

BOOST_AUTO_TEST_CASE(every_rule_has_a_failing_config_with_its_message) {
  std::set<sy::rule_id> covered;
  for (const auto& rc : rule_cases()) {
    BOOST_TEST_CONTEXT("case " << rc.name) {
      sy::Config c;
      rc.mutate(c);
      BOOST_TEST(!sy::rule_ok(c, rc.rule));
      const auto problems = sy::validate(c);
      const std::string field(sy::rule_field(rc.rule));
      BOOST_TEST(has_problem(problems, field, std::string(sy::rule_text(rc.rule))),
                 sy::join_problems(problems));
      BOOST_TEST(has_problem(problems, field, field + ": " + rc.expected_text),
                 sy::join_problems(problems));
      BOOST_TEST(!sy::is_valid(c));
      covered.insert(rc.rule);
    }
  }
  std::size_t n_rules = 0;
#define SY_COUNT_RULE(id, field, text) ++n_rules;
  SY_CONFIG_RULES(SY_COUNT_RULE)
#undef SY_COUNT_RULE
  BOOST_TEST(covered.size() == n_rules);
}

// Products a rule would take of sizes its neighbours reject, or of huge sizes, stay defined (the
// sanitizer build runs this): each config gets its own rules' messages, nothing more.
BOOST_AUTO_TEST_CASE(rules_on_huge_or_negative_sizes_report_without_overflow) {
  using R = sy::rule_id;
  const auto broken = [](const sy::Config& c) {
    std::set<R> out;
#define SY_BROKEN_RULE(id, field, text) \
  if (!sy::rule_ok(c, R::id)) out.insert(R::id);
    SY_CONFIG_RULES(SY_BROKEN_RULE)
#undef SY_BROKEN_RULE
    return out;
  };
  sy::Config c;
  c.world_size = 1;
  c.tensor_parallel_size = -(std::int64_t{1} << 32);
  c.pipeline_parallel_size = -(std::int64_t{1} << 32);
  auto b = broken(c);
  BOOST_TEST(b.count(R::tp_positive) == 1u);
  BOOST_TEST(b.count(R::pp_positive) == 1u);
  BOOST_TEST(b.count(R::world_product) == 0u);
  BOOST_TEST(!sy::validate(c).empty());

  c = sy::Config{};
  c.num_experts = std::int64_t{1} << 40;
  c.num_groups = 1;
  c.group_topk = std::int64_t{1} << 40;  // group_topk x E = 2^80
  b = broken(c);
  BOOST_TEST(b.count(R::groups_hold_k) == 0u);
  BOOST_TEST(b.count(R::group_topk_le_groups) == 1u);
  c.group_topk = 1;
  c.num_experts_per_token = 3;
  c.num_groups = std::int64_t{1} << 39;  // 2 experts per group, one group: 2 < k
  BOOST_TEST(broken(c).count(R::groups_hold_k) == 1u);
  BOOST_TEST(sy::join_problems(sy::validate(c))
                 .find("1 of 549755813888 groups hold 2 experts, "
                       "fewer than k = 3") != std::string::npos);

  // The capacity bound is per micro-batch: 1000 micro-batches of 4096 tokens with cf 1000 give
  // ceil(4096 x 2 / 8 x 1000) = 1024000 per expert, far below 2^30.
  c = sy::Config{};
  c.sequence_length = 4096;
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 1000;
  c.enable_gradient_accumulation = true;
  c.gradient_accumulation_steps = 1000;
  BOOST_TEST(sy::validate(c).empty(), sy::join_problems(sy::validate(c)));
  BOOST_TEST(*sy::capacity(c, c.tokens_per_rank()) == 1024000);
}

BOOST_AUTO_TEST_CASE(float32_range_is_the_limit_of_device_values) {
  // float32's largest value passes, and so does 3.4028235e38 (numpy's print of it), which rounds
  // to it; the halfway point to the next power of two rounds to infinity and fails.
  const double top = static_cast<double>(std::numeric_limits<float>::max());
  const double halfway = top + 0x1p103;
  BOOST_TEST(std::isfinite(static_cast<float>(3.4028235e38)));
  BOOST_TEST(std::isfinite(static_cast<float>(std::nextafter(halfway, 0.0))));
  for (const double v : {top, 3.4028235e38, std::nextafter(halfway, 0.0), halfway, 3.5e38}) {
    sy::Config c;
    c.router_z_loss_coeff = v;
    c.load_balance_loss_coeff = v;
    c.expert_bias_update_rate = v;
    c.topk_scaling_factor = v;
    c.score_function = sy::ScoreFunction::sigmoid;
    c.enable_expert_bias = true;
    c.expert_bias.assign(static_cast<std::size_t>(c.num_experts), -v);
    const bool fits = v < halfway;
    BOOST_TEST(sy::rule_ok(c, sy::rule_id::z_coeff_nonneg) == fits);
    BOOST_TEST(sy::rule_ok(c, sy::rule_id::aux_coeff_nonneg) == fits);
    BOOST_TEST(sy::rule_ok(c, sy::rule_id::bias_rate_nonneg) == fits);
    BOOST_TEST(sy::rule_ok(c, sy::rule_id::scaling_positive) == fits);
    BOOST_TEST(sy::rule_ok(c, sy::rule_id::expert_bias_fits_float) == fits);
  }
}

BOOST_AUTO_TEST_CASE(migration_problems_name_what_asked_for_migration) {
  // Each request is reported at its own path: the flag, the object, or both.
  sy::Config c;
  c.sharding_strategy = sy::ShardingStrategy::DataParallel;
  c.enable_expert_migration = true;
  c.migration.present = true;
  c.migration.enable_migration = true;
  const auto problems = sy::validate(c);
  BOOST_TEST(has_problem(problems, "enable_expert_migration", "enable_expert_migration true"));
  BOOST_TEST(has_problem(problems, "migration", "migration.enable_migration true"));
  c.enable_expert_migration = false;
  BOOST_TEST(sy::rule_ok(c, sy::rule_id::migration_needs_model_parallel));
  BOOST_TEST(!sy::rule_ok(c, sy::rule_id::migration_object_needs_model_parallel));
}

BOOST_AUTO_TEST_CASE(validation_returns_every_problem_at_once) {
  sy::Config c;
  c.num_experts = 64;
  c.expert_parallel_size = 3;
  c.router_z_loss_coeff = -1;
  c.num_experts_per_token = 65;
  const auto problems = sy::validate(c);
  BOOST_TEST(problems.size() == 3u);
}

BOOST_AUTO_TEST_CASE(messages_name_the_path_the_user_wrote) {
  const auto parsed = sy::parse_and_validate(R"({"model": {"moe": {"num_experts": 64}},
      "distributed": {"expert_parallel_size": 3}})");
  BOOST_TEST(parsed.problems.size() == 1u);
  BOOST_TEST(parsed.problems.at(0).message.rfind(
                 "distributed.expert_parallel_size: 64 experts cannot be split over 3 ranks", 0) ==
             0u);
  const auto legacy = sy::parse_and_validate(
      R"({"model_config": {"moe_layer_config": {"num_experts": 8, "top_k": 9}}})");
  BOOST_TEST(legacy.problems.size() == 1u);
  BOOST_TEST(legacy.problems.at(0).path == "model_config.moe_layer_config.top_k");
}

BOOST_AUTO_TEST_CASE(world_and_data_parallel_size_are_derived) {
  sy::Config c;
  c.data_parallel_size = 4;
  c.expert_parallel_size = 2;
  BOOST_TEST(c.world() == 8);
  BOOST_TEST(sy::validate(c).empty());
  sy::Config d;
  d.world_size = 16;
  d.expert_parallel_size = 8;
  BOOST_TEST(d.dp() == 2);
  BOOST_TEST(sy::validate(d).empty());
  sy::Config e;
  BOOST_TEST(e.world() == 1);
  BOOST_TEST(e.dp() == 1);
}

BOOST_AUTO_TEST_CASE(presets_follow_torsh) {
  const auto small = sy::presets::small_scale();
  BOOST_TEST(small.num_experts == 8);
  BOOST_TEST((small.sharding_strategy == sy::ShardingStrategy::DataParallel));
  BOOST_TEST(sy::validate(small).empty());
  const auto large = sy::presets::large_scale();
  BOOST_TEST(large.num_experts == 128);
  BOOST_TEST(large.capacity_factor == 1.5);
  BOOST_TEST(large.load_balance_loss_coeff == 0.001);
  BOOST_TEST(large.enable_gradient_accumulation);
  BOOST_TEST(large.gradient_accumulation_steps == 4);
  BOOST_TEST(large.micro_batches_per_step() == 4);
  BOOST_TEST(sy::Config{}.micro_batches_per_step() == 1);
  BOOST_TEST(large.enable_expert_sync);
  BOOST_TEST(large.sync_frequency == 50);
  // Both training-loop features are built: gradient accumulation (switchyard train's
  // micro-batches) and expert sync (the layer's sync_expert_weights).
  BOOST_TEST(sy::validate(large).empty());
  // sync_frequency is read only with expert sync on.
  auto sync_off = large;
  sync_off.enable_expert_sync = false;
  BOOST_TEST(has_problem(sy::validate(sync_off), "sync_frequency", "got 50"));
  const auto inf = sy::presets::inference();
  BOOST_TEST(inf.expert_dropout == 0.0);
  BOOST_TEST(!inf.enable_load_balancing);
  BOOST_TEST(!inf.enable_gradient_accumulation);
  BOOST_TEST(!inf.enable_expert_sync);
  BOOST_TEST(sy::validate(inf).empty());
}

// The same rules at compile time.
static_assert(sy::is_valid(sy::Config{}));
static_assert(sy::is_valid(sy::presets::small_scale()));
static_assert(sy::is_valid(sy::presets::large_scale()));
static_assert(!sy::rule_ok(
    [] {
      sy::Config c;
      c.num_experts = 64;
      c.expert_parallel_size = 3;
      return c;
    }(),
    sy::rule_id::experts_divisible_by_ep));
constexpr sy::Config mixtral_like = sy::static_config<[] {
  sy::Config c;
  c.num_experts = 8;
  c.expert_parallel_size = 4;
  c.data_parallel_size = 2;
  c.hidden_size = 4096;
  c.ffn_hidden_size = 14336;
  c.gated = true;
  c.activation = sy::Activation::silu;
  return c;
}>::value;
static_assert(mixtral_like.world() == 8);

BOOST_AUTO_TEST_CASE(static_config_gives_the_checked_value) {
  BOOST_TEST(mixtral_like.ffn_hidden_size == 14336);
  BOOST_TEST(sy::validate(mixtral_like).empty());
}
