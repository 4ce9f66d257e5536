#pragma once
/// \file Seeded initialisation of expert weights for every InitStrategy of the config
/// (docs/experts.md). Each element is a pure function of (seed, matrix, global expert, element),
/// drawn with Philox, so the result does not depend on the expert-parallel layout or the order of
/// the loops, and a device fill would draw the same numbers.
///
/// Fans, per logical matrix: fc1 (and each half of a GLU fc1) fan_in = H, fan_out = F; fc2
/// fan_in = F, fan_out = H.
///   Xavier           U(−a, a), a = √(6 / (fan_in + fan_out))     (Glorot & Bengio 2010)
///   Kaiming          N(0, σ²), σ = √(2 / fan_in)                 (He et al. 2015, fan_in, ReLU
///   gain) Normal           N(0, σ²), σ = expert_init::std (0.02: Megatron's init_method_std)
///   Uniform          U(−b, b), b = 1 / √fan_in                   (torch.nn.Linear's bound)
///   TruncatedNormal  N(0, σ²) restricted to [−2σ, 2σ] by redrawing; σ = expert_init::std
/// Biases start at zero (as in Megatron).

#include <cstdint>

#include <cuda/std/cmath>

#include "switchyard/config/enums.hpp"
#include "switchyard/core/error.hpp"
#include "switchyard/core/macros.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/core/philox.hpp"
#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/experts/expert_types.hpp"

namespace switchyard {

/// Parameters of an initialisation.
struct expert_init {
  InitStrategy strategy = InitStrategy::Xavier;
  std::uint64_t seed = 0;
  double std = 0.02;         ///< σ of Normal and TruncatedNormal
  index_t first_expert = 0;  ///< global index of local expert 0 (EP rank · E_local)
};

/// Which logical matrix an element belongs to (part of the Philox counter).
enum class expert_matrix : std::uint32_t { fc1_gate = 0, fc1_linear = 1, fc2 = 2 };

namespace detail {
inline constexpr double two_pi = 6.28318530717958647692;

/// Two independent uniforms from one Philox block: u1 in (0, 1], u2 in [0, 1).
SY_HD inline void init_uniforms(std::uint64_t seed, std::uint32_t matrix, std::uint64_t expert,
                                std::uint64_t element, std::uint32_t attempt, double& u1,
                                double& u2) {
  const philox4x32_ctr c = philox4x32<10>(
      philox4x32_ctr{static_cast<std::uint32_t>(element), static_cast<std::uint32_t>(element >> 32),
                     static_cast<std::uint32_t>(expert), (matrix << 16) | attempt},
      philox4x32_key{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
  u1 = (static_cast<double>(c.c0) + 1.0) * (1.0 / 4294967296.0);
  u2 = static_cast<double>(c.c1) * (1.0 / 4294967296.0);
}

/// Standard normal by Box–Muller from the uniforms of (…, attempt).
SY_HD inline double init_normal(std::uint64_t seed, std::uint32_t matrix, std::uint64_t expert,
                                std::uint64_t element, std::uint32_t attempt) {
  double u1 = 0, u2 = 0;
  init_uniforms(seed, matrix, expert, element, attempt, u1, u2);
  return cuda::std::sqrt(-2.0 * cuda::std::log(u1)) * cuda::std::cos(two_pi * u2);
}
}  // namespace detail

/// The initial value of one element. `element` is the row-major index inside the logical matrix
/// of one expert, `expert` the global expert index.
SY_HD inline double expert_init_value(InitStrategy strategy, std::uint64_t seed,
                                      expert_matrix matrix, std::uint64_t expert,
                                      std::uint64_t element, double fan_in, double fan_out,
                                      double std) {
  const auto m = static_cast<std::uint32_t>(matrix);
  double u1 = 0, u2 = 0;
  switch (strategy) {
    case InitStrategy::Xavier: {
      detail::init_uniforms(seed, m, expert, element, 0, u1, u2);
      const double a = cuda::std::sqrt(6.0 / (fan_in + fan_out));
      return a * (2.0 * u2 - 1.0);
    }
    case InitStrategy::Kaiming:
      return cuda::std::sqrt(2.0 / fan_in) * detail::init_normal(seed, m, expert, element, 0);
    case InitStrategy::Normal: return std * detail::init_normal(seed, m, expert, element, 0);
    case InitStrategy::Uniform: {
      detail::init_uniforms(seed, m, expert, element, 0, u1, u2);
      return (2.0 * u2 - 1.0) / cuda::std::sqrt(fan_in);
    }
    case InitStrategy::TruncatedNormal:
      // A draw falls outside ±2σ with probability 4.55%; 64 redraws all failing has probability
      // 0.0455^64 < 1e-85, and the last one is clamped so the bound always holds.
      for (std::uint32_t attempt = 0;; ++attempt) {
        const double z = detail::init_normal(seed, m, expert, element, attempt);
        if ((z >= -2.0 && z <= 2.0) || attempt == 63)
          return std * (z < -2.0 ? -2.0 : (z > 2.0 ? 2.0 : z));
      }
  }
  return 0.0;
}

/// Fills the weights of the E_local experts of `s` (biases to zero) with the strategy of `init`.
/// P decides whether fc1 has a gate and a linear half (each initialised as its own [F][H] matrix).
template <ExpertPolicy P, class T>
void initialize_expert_weights(P, const expert_shape& s, const expert_init& init,
                               const expert_tensors<T>& w) {
  const index_t E = s.num_experts, H = s.hidden, F = s.ffn_hidden, F1 = P::fc1_multiplier * F;
  SY_EXPECTS(w.fc1.extent(0) == E && w.fc1.extent(1) == F1 && w.fc1.extent(2) == H &&
                 w.fc2.extent(0) == E && w.fc2.extent(1) == H && w.fc2.extent(2) == F,
             detail::concat("initialize_expert_weights: fc1 must be [", E, "][", F1, "][", H,
                            "] and fc2 [", E, "][", H, "][", F, "]"));
  for (index_t e = 0; e < E; ++e) {
    const auto ge = static_cast<std::uint64_t>(init.first_expert + e);
    for (index_t r = 0; r < F1; ++r) {
      const bool linear = P::gated && r >= F;
      const auto m = linear ? expert_matrix::fc1_linear : expert_matrix::fc1_gate;
      const index_t rr = linear ? r - F : r;
      for (index_t c = 0; c < H; ++c)
        w.fc1(e, r, c) = static_cast<T>(expert_init_value(
            init.strategy, init.seed, m, ge, static_cast<std::uint64_t>(rr * H + c),
            static_cast<double>(H), static_cast<double>(F), init.std));
    }
    for (index_t r = 0; r < H; ++r)
      for (index_t c = 0; c < F; ++c)
        w.fc2(e, r, c) = static_cast<T>(expert_init_value(
            init.strategy, init.seed, expert_matrix::fc2, ge, static_cast<std::uint64_t>(r * F + c),
            static_cast<double>(F), static_cast<double>(H), init.std));
  }
  if (s.bias) {
    for (index_t e = 0; e < w.fc1_bias.extent(0); ++e)
      for (index_t j = 0; j < w.fc1_bias.extent(1); ++j) w.fc1_bias(e, j) = T(0);
    for (index_t e = 0; e < w.fc2_bias.extent(0); ++e)
      for (index_t j = 0; j < w.fc2_bias.extent(1); ++j) w.fc2_bias(e, j) = T(0);
  }
}

}  // namespace switchyard
