#pragma once
/// \file Run-time validation: every broken rule of config/rules.hpp, each reported at the JSON
/// path where the user wrote the field (or would write it), with the values involved.

#include <cmath>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "switchyard/config/config_types.hpp"
#include "switchyard/config/format.hpp"
#include "switchyard/config/rules.hpp"
#include "switchyard/core/error.hpp"

namespace switchyard {

/// Maps a field name to the JSON path the user wrote it at (e.g. "expert_parallel_size" ->
/// "distributed.expert_parallel_size"). Fields not in the map are reported by their name.
using FieldPaths = std::map<std::string, std::string, std::less<>>;

/// One broken rule.
struct problem {
  std::string path;     ///< JSON path, as the user wrote it
  std::string message;  ///< "<path>: <what is wrong, with values> (<rule>)"
};

/// The sentence of a rule (the same text static_config prints).
constexpr std::string_view rule_text(rule_id r) {
  switch (r) {
#define SY_DETAIL_RULE_TEXT(id, field, text) \
  case rule_id::id: return text;
    SY_CONFIG_RULES(SY_DETAIL_RULE_TEXT)
#undef SY_DETAIL_RULE_TEXT
  }
  return {};
}

/// The field a rule is reported at.
constexpr std::string_view rule_field(rule_id r) {
  switch (r) {
#define SY_DETAIL_RULE_FIELD(id, field, text) \
  case rule_id::id: return #field;
    SY_CONFIG_RULES(SY_DETAIL_RULE_FIELD)
#undef SY_DETAIL_RULE_FIELD
  }
  return {};
}

namespace detail {

/// What is wrong, with the values involved, for rules whose sentence alone would not say.
inline std::string rule_detail(const Config& c, rule_id r) {
  using detail::concat;
  using detail::fits_float;
  switch (r) {
    case rule_id::experts_divisible_by_ep:
      return concat(c.num_experts, " experts cannot be split over ", c.expert_parallel_size,
                    " ranks");
    case rule_id::world_product:
      if (!c.data_parallel_size)  // products in double: ep x tp x pp may exceed the world
        return concat("world_size ", *c.world_size,
                      " is not a positive multiple of expert_parallel_size x tensor_parallel_size "
                      "x pipeline_parallel_size = ",
                      count_text(static_cast<double>(c.expert_parallel_size) *
                                 static_cast<double>(c.tensor_parallel_size) *
                                 static_cast<double>(c.pipeline_parallel_size)));
      return concat("world_size ", *c.world_size, " but ", c.dp(), " x ", c.expert_parallel_size,
                    " x ", c.tensor_parallel_size, " x ", c.pipeline_parallel_size, " = ",
                    count_text(ranks_product(c)));
    case rule_id::sinkhorn_plain: {  // what is set beside sinkhorn
      std::string set;
      const auto add = [&set](const std::string& what) {
        if (!set.empty()) set += ", ";
        set += what;
      };
      if (c.score_function != ScoreFunction::softmax)
        add(concat("score_function ", to_text(c.score_function)));
      if (c.pre_softmax) add("pre_softmax true");
      if (c.num_groups) add(concat("num_groups ", *c.num_groups));
      if (c.group_topk) add(concat("group_topk ", *c.group_topk));
      if (c.enable_expert_bias) add("enable_expert_bias true");
      if (c.topk_scaling_factor)
        add(concat("topk_scaling_factor ", to_text(*c.topk_scaling_factor)));
      return concat("load_balancing_type sinkhorn with ", set);
    }
    case rule_id::topk_range:
      return concat("k = ", c.num_experts_per_token, " with ", c.num_experts, " experts");
    case rule_id::experts_divisible_by_groups:
      return concat(c.num_experts, " experts cannot form ", *c.num_groups, " equal groups");
    case rule_id::groups_hold_k:
      return concat(*c.group_topk, " of ", *c.num_groups, " groups hold ",
                    count_text(static_cast<double>(*c.group_topk) *
                               static_cast<double>(c.num_experts / *c.num_groups)),
                    " experts, fewer than k = ", c.num_experts_per_token);
    case rule_id::expert_bias_length:
      return concat("expert_bias has ", c.expert_bias.size(), " entries for ", c.num_experts,
                    " experts");
    case rule_id::heads_divide_hidden:
      return concat("hidden_size ", c.hidden_size, " over ", to_text(c.num_attention_heads),
                    " heads");
    case rule_id::ffn_divisible_by_tp:
      return concat("ffn_hidden_size ", c.ffn_hidden_size, " over ", c.tensor_parallel_size,
                    " ranks");
    case rule_id::shared_expert_divisible_by_tp:
      return concat("shared_expert_intermediate_size ", to_text(c.shared_expert_intermediate_size),
                    " over ", c.tensor_parallel_size, " ranks");
    case rule_id::pattern_length:
      return concat("moe_layer_pattern has ", c.moe_layer_pattern.size(), " entries for ",
                    c.num_layers, " layers");
    case rule_id::pattern_entries:
      for (std::size_t i = 0; i < c.moe_layer_pattern.size(); ++i)
        if (c.moe_layer_pattern[i] != 0 && c.moe_layer_pattern[i] != 1)
          return concat("entry ", i, " is ", c.moe_layer_pattern[i]);
      return {};
    case rule_id::pattern_has_moe:
      return concat("none of the ", c.moe_layer_pattern.size(), " entries is 1");
    case rule_id::pattern_or_frequency:
      return concat("moe_layer_frequency ", c.moe_layer_frequency, " with a moe_layer_pattern");
    case rule_id::layers_divisible_by_pp:
      return concat(c.num_layers, " layers over ", c.pipeline_parallel_size, " stages");
    case rule_id::balance_coeffs_paired:
      return concat(c.load_balance_loss_coeff.size(),
                    c.load_balance_loss_coeff.size() == 1 ? " coefficient (" : " coefficients (",
                    to_text(c.load_balance_loss_coeff), ") for ", c.load_balancing_type.size(),
                    " load_balancing_type entries (", to_text(c.load_balancing_type), ")");
    case rule_id::tokens_fit:
      return concat("batch_size_per_gpu ", c.batch_size_per_gpu, " x sequence_length ",
                    c.sequence_length, " x ", c.micro_batches_per_step(),
                    " micro-batches = ", count_text(size_products_of(c).tokens), " tokens");
    case rule_id::sizes_fit: {
      const size_products p = size_products_of(c);
      const std::string tokens = concat(count_text(p.tokens), " tokens");
      const std::string rows =
          c.token_dispatch == TokenDispatch::capacity
              ? concat("up to ", count_text(p.rows), " expert rows (num_experts ", c.num_experts,
                       " x about ", count_text(std::ceil(p.capacity)), " per expert, or ", tokens,
                       " x k ", c.num_experts_per_token, ")")
              : concat(tokens, " x k ", c.num_experts_per_token, " expert rows");
      const std::string layers = concat(" x num_layers ", c.num_layers, " x 64 (bytes, copies) = ");
      switch (oversized_product(c)) {
        case 1:
          return concat(rows, " x hidden_size ", c.hidden_size, " x tensor_parallel_size ",
                        c.tensor_parallel_size, layers, count_text(p.routed),
                        " (the routed rows' values)");
        case 2:
          return concat(tokens, " x num_experts ", c.num_experts, layers, count_text(p.scores),
                        " (the router's scores)");
        case 3:
          return concat("ffn_hidden_size ", c.ffn_hidden_size, " x hidden_size ", c.hidden_size,
                        " x ", c.gated ? 3 : 2, " x num_experts ", c.num_experts, layers,
                        count_text(p.experts), " (the experts' parameters)");
        case 4:
          return concat(rows, " x ffn_hidden_size ", c.ffn_hidden_size, " x ", c.gated ? 3 : 2,
                        layers, count_text(p.hidden), " (the experts' hidden activations)");
        default:
          return concat("shared_expert_intermediate_size ",
                        to_text(c.shared_expert_intermediate_size), " x (hidden_size ",
                        c.hidden_size, " + ", tokens, ") x 3", layers, count_text(p.shared),
                        " (the shared expert's parameters and activations)");
      }
    }
    case rule_id::ranks_fit:
      return concat(c.world_size ? concat("world_size ", *c.world_size, ", ") : std::string(),
                    "data_parallel_size ", c.dp(), " x expert_parallel_size ",
                    c.expert_parallel_size, " x tensor_parallel_size ", c.tensor_parallel_size,
                    " x pipeline_parallel_size ", c.pipeline_parallel_size, " = ",
                    count_text(ranks_product(c)), " ranks");
    case rule_id::capacity_fits:
      return concat(c.capacity_factor, " x k ", c.num_experts_per_token, " x (",
                    count_text(static_cast<double>(c.batch_size_per_gpu) *
                               static_cast<double>(c.sequence_length)),
                    " tokens / ", c.num_experts, " experts + 1), or min_capacity ", c.min_capacity,
                    ": up to ", count_text(std::ceil(size_products_of(c).capacity)),
                    " tokens per expert");
    case rule_id::load_balancing_needs_migration:
      return concat("an object with sharding_strategy ", to_text(c.sharding_strategy),
                    " and enable_expert_migration false");
    case rule_id::migration_needs_model_parallel:
      return "enable_expert_migration true with sharding_strategy DataParallel";
    case rule_id::migration_object_needs_model_parallel:
      return "migration.enable_migration true with sharding_strategy DataParallel";
    case rule_id::expert_bias_fits_float:
      for (std::size_t i = 0; i < c.expert_bias.size(); ++i)
        if (!fits_float(c.expert_bias[i]))
          return concat("entry ", i, " is ", to_text(c.expert_bias[i]));
      return {};
    case rule_id::migration_fields_unused: {
      migration_object shown = c.migration;
      shown.present = true;
      return concat("fields ", to_text(shown), " with present false");
    }
    case rule_id::migration_object_enabled:
      return concat("migration.enable_migration false in ", to_text(c.migration));
    case rule_id::migration_triggers_built:
      return concat("triggers ", list_text(c.migration.triggers));
    case rule_id::migration_strategy_built:
      return concat("preferred_strategies ", list_text(c.migration.preferred_strategies));
    case rule_id::migration_cooldown_nonneg:
      return concat("cooldown_period ", c.migration.cooldown_period);
    case rule_id::migration_distance_positive:
      return concat("max_migration_distance ", c.migration.max_migration_distance);
    case rule_id::migration_complete_limit:
      return concat("CompleteMigration with load_balancing.max_concurrent_migrations ",
                    c.load_balancing.max_concurrent_migrations);
    case rule_id::migration_threshold_periodic:
      return concat("triggers ", list_text(c.migration.triggers), " with migration_threshold ",
                    to_text(c.migration_threshold),
                    c.load_balancing.present ? concat(" and load_balancing.imbalance_threshold ",
                                                      to_text(c.load_balancing.imbalance_threshold))
                                             : std::string());
    case rule_id::load_balancing_fields_unused: {
      load_balancing_object shown = c.load_balancing;
      shown.present = true;
      return concat("fields ", to_text(shown), " with present false");
    }
    case rule_id::load_balancing_threshold_range:
      return concat("imbalance_threshold ", to_text(c.load_balancing.imbalance_threshold));
    case rule_id::load_balancing_check_frequency_positive:
      return concat("check_frequency ", c.load_balancing.check_frequency);
    case rule_id::load_balancing_migrations_range:
      return concat("max_concurrent_migrations ", c.load_balancing.max_concurrent_migrations);
    case rule_id::load_balancing_smoothing_range:
      return concat("load_smoothing_factor ", to_text(c.load_balancing.load_smoothing_factor));
    case rule_id::migration_threshold_twice:
      return concat("migration_threshold ", to_text(c.migration_threshold),
                    " and load_balancing.imbalance_threshold ",
                    to_text(c.load_balancing.imbalance_threshold));
    case rule_id::dp_positive:
      if (!c.data_parallel_size && c.world_size)
        return concat("world_size ", *c.world_size, " leaves no room for data parallelism");
      return concat("got ", to_text(c.data_parallel_size));
    default: return concat("got ", field_text(c, rule_field(r)));
  }
}

}  // namespace detail

/// Every rule `c` breaks, in rule order. `paths` gives the JSON path of each field as written.
inline std::vector<problem> validate(const Config& c, const FieldPaths* paths = nullptr) {
  std::vector<problem> out;
#define SY_DETAIL_RULE_CHECK(id, field, text)                                         \
  if (!rule_ok(c, rule_id::id)) {                                                     \
    std::string path = #field;                                                        \
    if (paths) {                                                                      \
      if (auto it = paths->find(path); it != paths->end()) path = it->second;         \
    }                                                                                 \
    std::string msg = path + ": " + detail::rule_detail(c, rule_id::id) + " (" + text + ")"; \
    out.push_back(problem{std::move(path), std::move(msg)});                          \
  }
  SY_CONFIG_RULES(SY_DETAIL_RULE_CHECK)
#undef SY_DETAIL_RULE_CHECK
  return out;
}

/// Joins problems into one message, one per line.
inline std::string join_problems(const std::vector<problem>& problems) {
  std::string s;
  for (const auto& p : problems) s += (s.empty() ? "" : "\n") + p.message;
  return s;
}

/// Throws config_error listing every problem when `c` is invalid.
inline void require_valid(const Config& c, const FieldPaths* paths = nullptr) {
  const auto problems = validate(c, paths);
  if (!problems.empty()) throw config_error(join_problems(problems));
}

}  // namespace switchyard
