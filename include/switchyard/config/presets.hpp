#pragma once
/// \file The presets of torsh's ExpertParallelismConfig (seed 000).

#include "switchyard/config/config_types.hpp"

namespace switchyard::presets {

/// 8 experts, top-2, capacity factor 1.25, aux coefficient 0.01, experts replicated
/// (DataParallel): for models with 8-16 experts.
constexpr Config small_scale() {
  Config c;
  c.num_experts = 8;
  c.num_experts_per_token = 2;
  c.capacity_factor = 1.25;
  c.load_balance_loss_coeff = 0.01;
  c.sharding_strategy = ShardingStrategy::DataParallel;
  return c;
}

/// 128 experts, top-2, capacity factor 1.5, aux coefficient 0.001, experts partitioned
/// (ModelParallel), gradient accumulation over 4 steps, expert sync every 50 steps.
constexpr Config large_scale() {
  Config c;
  c.num_experts = 128;
  c.num_experts_per_token = 2;
  c.capacity_factor = 1.5;
  c.load_balance_loss_coeff = 0.001;
  c.sharding_strategy = ShardingStrategy::ModelParallel;
  c.enable_gradient_accumulation = true;
  c.gradient_accumulation_steps = 4;
  c.enable_expert_sync = true;
  c.sync_frequency = 50;
  return c;
}

/// Inference: no expert dropout, load balancing off (torsh), hence no balancing loss
/// (load_balancing_type none), no gradient accumulation, no expert sync.
constexpr Config inference() {
  Config c;
  c.expert_dropout = 0.0;
  c.enable_load_balancing = false;
  c.load_balancing_type = LoadBalancingType::none;
  c.enable_gradient_accumulation = false;
  c.enable_expert_sync = false;
  return c;
}

}  // namespace switchyard::presets
