#pragma once
/// \file Compile-time validation: `static_config<make>` runs every rule of config/rules.hpp on the
/// Config that the constexpr callable `make` returns, and fails to compile with the rule's
/// sentence (the same words the run-time validation prints) when one does not hold.
///
///     constexpr sy::Config cfg = sy::static_config<[] {
///       sy::Config c;
///       c.num_experts = 64;
///       c.expert_parallel_size = 8;
///       return c;
///     }>::value;

#include "switchyard/config/rules.hpp"

namespace switchyard {

template <auto Make>
struct static_config {
#define SY_DETAIL_STATIC_RULE(id, field, text) \
  static_assert(rule_ok(Make(), rule_id::id), #field ": " text);
  SY_CONFIG_RULES(SY_DETAIL_STATIC_RULE)
#undef SY_DETAIL_STATIC_RULE

  /// The checked config.
  static constexpr Config value = Make();
};

}  // namespace switchyard
