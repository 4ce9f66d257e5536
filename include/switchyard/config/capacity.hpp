#pragma once
/// \file Expert capacity for each training stack's formula (REFERENCE §4), plus the
/// recommended device count of torsh.

#include <cmath>
#include <cstdint>
#include <optional>

#include "switchyard/config/config_types.hpp"
#include "switchyard/config/rules.hpp"
#include "switchyard/core/error.hpp"

namespace switchyard {

namespace detail {
/// A formula's capacity, computed in floating point, as an integer: a config_error naming
/// capacity_factor when it is beyond max_expert_capacity (or not finite), instead of an
/// out-of-range conversion.
inline std::int64_t capacity_value(double v, double cf, std::int64_t tokens) {
  if (!(v >= 0 && v <= static_cast<double>(max_expert_capacity)))
    throw config_error(concat(
        "capacity_factor: ", cf, " gives a capacity of ", v, " tokens per expert for ", tokens,
        " tokens, more than the largest Switchyard computes with (", max_expert_capacity, ")"));
  return static_cast<std::int64_t>(v);
}
}  // namespace detail

/// Capacity for `tokens` tokens on one rank with the given formula. std::nullopt when the formula
/// makes the capacity depend on the routing (tutel with capacity_factor 0: dynamic, the largest
/// count, so nothing is dropped). Tutel's bounded dynamic capacity (capacity_factor < 0) is not
/// built: a config_error, as rule capacity_factor_positive says.
/// min_capacity is applied to every formula (C = max(C, min_capacity)).
inline std::optional<std::int64_t> capacity_for(CapacityFormula formula, std::int64_t tokens,
                                                std::int64_t experts, std::int64_t k, double cf,
                                                std::int64_t ep, std::int64_t min_capacity) {
  if (!std::isfinite(cf))
    throw config_error(detail::concat("capacity_factor: ", cf, " is not a finite number"));
  std::int64_t c = 0;
  switch (formula) {
    case CapacityFormula::megatron:
      // Megatron-Core get_capacity(num_tokens * topk, E, cf): ceil((T·k / E) · cf) in float64.
      c = detail::capacity_value(
          std::ceil((static_cast<double>(tokens * k) / static_cast<double>(experts)) * cf), cf,
          tokens);
      break;
    case CapacityFormula::deepspeed: {
      // DeepSpeed _capacity: ceil(f32(T/E) · f32(cf·k)), the product rounded to float32.
      const float per_expert = static_cast<float>(static_cast<double>(tokens) /
                                                  static_cast<double>(experts));
      const float factor = static_cast<float>(cf * static_cast<double>(k));
      const float product = per_expert * factor;
      c = detail::capacity_value(std::ceil(static_cast<double>(product)), cf, tokens);
      break;
    }
    case CapacityFormula::tutel: {
      if (cf == 0) return std::nullopt;
      if (cf < 0)
        throw config_error(
            detail::concat("capacity_factor: ", cf,
                           " (tutel's bounded dynamic capacity, capacity_factor < 0) is not "
                           "built: use 0 (dynamic, dropless) or a factor > 0"));
      const std::int64_t per_expert = (tokens + experts - 1) / experts;
      c = detail::capacity_value(
          static_cast<double>(k) * std::trunc(cf * static_cast<double>(per_expert)), cf, tokens);
      break;
    }
    case CapacityFormula::megablocks:
      c = detail::capacity_value(
          std::trunc(cf * static_cast<double>(k) * static_cast<double>(tokens) *
                     static_cast<double>(ep) / static_cast<double>(experts)),
          cf, tokens);
      break;
    case CapacityFormula::torsh: {
      // torsh calculate_expert_capacity: ceil(f32(floor(T·k/E)) · cf) in float32.
      const float per_expert = static_cast<float>((tokens * k) / experts);
      c = detail::capacity_value(
          std::ceil(static_cast<double>(per_expert * static_cast<float>(cf))), cf, tokens);
      break;
    }
  }
  if (min_capacity > max_expert_capacity)
    throw config_error(detail::concat(
        "min_capacity: ", min_capacity,
        " is more than the largest capacity Switchyard computes with (", max_expert_capacity, ")"));
  return c < min_capacity ? min_capacity : c;
}

/// The config's capacity for `tokens` tokens on one rank, or std::nullopt when dispatch is
/// dropless (or tutel-dynamic).
inline std::optional<std::int64_t> capacity(const Config& c, std::int64_t tokens) {
  if (c.token_dispatch == TokenDispatch::dropless) return std::nullopt;
  return capacity_for(c.capacity_formula, tokens, c.num_experts, c.num_experts_per_token,
                      c.capacity_factor, c.expert_parallel_size, c.min_capacity);
}

/// torsh's recommended_num_devices(): 1 for DataParallel, min(E, 64) for ModelParallel,
/// clamp(E/4, 2, 16) for Hybrid and clamp(E/2, 4, 32) for Dynamic.
constexpr std::int64_t recommended_num_devices(const Config& c) {
  const auto clamp = [](std::int64_t v, std::int64_t lo, std::int64_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
  };
  switch (c.sharding_strategy) {
    case ShardingStrategy::DataParallel: return 1;
    case ShardingStrategy::ModelParallel: return c.num_experts < 64 ? c.num_experts : 64;
    case ShardingStrategy::Hybrid: return clamp(c.num_experts / 4, 2, 16);
    case ShardingStrategy::Dynamic: return clamp(c.num_experts / 2, 4, 32);
  }
  return 1;
}

}  // namespace switchyard
