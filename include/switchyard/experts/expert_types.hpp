#pragma once
/// \file Plain parameter types of the experts: sizes, weight and gradient views, run options.
///
/// Weight layout of the E_local experts of one rank, contiguous and row-major (docs/experts.md):
///   fc1_weight [E_local][F1][H]   F1 = F (FFN) or 2F (GLU: gate rows [0,F), linear rows [F,2F))
///   fc2_weight [E_local][H][F]
///   fc1_bias   [E_local][F1]      optional (add_bias_linear)
///   fc2_bias   [E_local][H]       optional

#include <cstdint>

#include "switchyard/core/mdspan.hpp"

namespace switchyard {

/// Sizes of a rank's experts.
struct expert_shape {
  index_t num_experts = 0;  ///< E_local: experts held by this rank
  index_t hidden = 0;       ///< H
  index_t ffn_hidden = 0;   ///< F (per half for GLU)
  bool bias = false;        ///< fc1 and fc2 carry biases
};

/// Views of the four expert tensors in the layout above (weights, their gradients, or buffers
/// to initialise). The bias views are empty (null, extent 0) when the shape has no bias.
template <class T>
struct expert_tensors {
  tensor3_view<T> fc1;      ///< [E_local][F1][H]
  tensor3_view<T> fc2;      ///< [E_local][H][F]
  matrix_view<T> fc1_bias;  ///< [E_local][F1] or empty
  matrix_view<T> fc2_bias;  ///< [E_local][H] or empty
};

/// Read-only weights.
template <class T>
using expert_weights = expert_tensors<const T>;

/// Weight gradients. Backward ACCUMULATES into them (+=), like Megatron's main_grad: zero them
/// before the first micro-batch of a step.
template <class T>
using expert_grads = expert_tensors<T>;

/// Read-only view of mutable tensors.
template <class T>
expert_weights<T> as_const(const expert_tensors<T>& t) {
  return {t.fc1, t.fc2, t.fc1_bias, t.fc2_bias};
}

/// Expert dropout (docs/experts.md): inverted dropout on the expert hidden activations (the fc2
/// input), active only when `training` and p > 0. The keep mask is Philox keyed by (seed, step,
/// row_offset + row, column), so forward and backward (and host and device) draw the same mask.
struct expert_dropout {
  double p = 0.0;          ///< drop probability in [0, 1]
  std::uint64_t seed = 0;  ///< run seed
  std::uint32_t step = 0;  ///< training step (or micro-batch counter): a new mask each step
  bool training = false;   ///< eval: identity
  /// Key of this call's row 0: a layer that runs its rows in several calls (the host layer's own
  /// and received rows under expert parallelism) gives each call its own key range, so no two
  /// rows of a step share a mask.
  std::uint64_t row_offset = 0;
  constexpr bool active() const { return training && p > 0.0; }
};

/// How the host backend multiplies matrices.
enum class host_gemm {
  automatic,  ///< CBLAS when SWITCHYARD_HAS_CBLAS is defined, plain loops otherwise
  cblas,      ///< CBLAS; a precondition_error when Switchyard was built without it
  loops,      ///< plain loops (the fallback; also the portable reference)
};

/// Options of one expert forward/backward call.
struct expert_options {
  expert_dropout dropout{};
  host_gemm gemm = host_gemm::automatic;  ///< host backend only
};

}  // namespace switchyard
