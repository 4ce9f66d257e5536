#pragma once
/// \file Score-function tags of the top-k router (REFERENCE §2). A tag is a type, so each router
/// is specialised at compile time: `TopK<2, Softmax>`, `TopK<8, Sigmoid>`.

#include <concepts>
#include <string_view>

#include "switchyard/config/enums.hpp"

namespace switchyard {

/// Softmax, top-k first (the default): select the k largest logits, softmax over those k.
struct Softmax {
  static constexpr ScoreFunction function = ScoreFunction::softmax;
  static constexpr bool pre_softmax = false;
  static constexpr std::string_view name = "softmax";
};

/// Softmax first: softmax over all E, select the k largest probabilities, no renormalisation.
struct PreSoftmax {
  static constexpr ScoreFunction function = ScoreFunction::softmax;
  static constexpr bool pre_softmax = true;
  static constexpr std::string_view name = "pre_softmax";
};

/// s = σ(z); select top-k of s + β; weights s / Σ_selected s when k > 1.
struct Sigmoid {
  static constexpr ScoreFunction function = ScoreFunction::sigmoid;
  static constexpr bool pre_softmax = false;
  static constexpr std::string_view name = "sigmoid";
};

/// s = sqrt(softplus(z)); otherwise as Sigmoid.
struct SqrtSoftplus {
  static constexpr ScoreFunction function = ScoreFunction::sqrtsoftplus;
  static constexpr bool pre_softmax = false;
  static constexpr std::string_view name = "sqrtsoftplus";
};

/// One of the four score tags above.
template <class S>
concept ScoreTag = std::same_as<S, Softmax> || std::same_as<S, PreSoftmax> ||
                   std::same_as<S, Sigmoid> || std::same_as<S, SqrtSoftplus>;

/// True for the softmax family (whose aux-loss scores are softmax over all E).
template <ScoreTag S>
inline constexpr bool is_softmax_score = S::function == ScoreFunction::softmax;

}  // namespace switchyard
