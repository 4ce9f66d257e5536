#pragma once
// Shared by the layer tests: small configs and deterministic random tensors.

#include <cstdint>
#include <random>
#include <vector>

#include "switchyard/config.hpp"

namespace sy_test {

inline std::vector<double> random_vector(std::uint32_t seed, std::size_t n, double scale = 1.0) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

/// A small layer config: E experts, k, H, F, dispatch and expert kind.
inline switchyard::Config small_config(std::int64_t E, std::int64_t k, bool gated,
                                       switchyard::Activation act, bool capacity) {
  switchyard::Config c;
  c.num_experts = E;
  c.num_experts_per_token = k;
  c.hidden_size = 6;
  c.ffn_hidden_size = 5;
  c.gated = gated;
  c.activation = act;
  c.load_balance_loss_coeff = 0.01;
  c.router_z_loss_coeff = 0.001;
  if (capacity) {
    c.token_dispatch = switchyard::TokenDispatch::capacity;
    c.capacity_factor = 1.0;
  }
  return c;
}

}  // namespace sy_test
