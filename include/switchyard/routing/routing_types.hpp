#pragma once
/// \file Plain parameter and result types of the routers (no CUDA): what a router is built from
/// (RouterParams, LossParams), what forward returns and backward consumes (Routing<T>), and the
/// explicit accumulator of the global aux loss (GlobalAuxLoss).

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "switchyard/config/enums.hpp"
#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"

namespace switchyard {

/// One load-balancing loss and its coefficient α. `type` is aux_loss, seq_aux_loss or
/// global_aux_loss (REFERENCE §5).
struct BalanceLoss {
  LoadBalancingType type = LoadBalancingType::aux_loss;
  double coeff = 0.0;
};

/// The losses a router adds; several balance losses may be active at once, each with its α.
struct LossParams {
  std::vector<BalanceLoss> balance;  ///< empty: no balance loss
  double z_loss_coeff = 0.0;         ///< c_z; 0: z-loss off
  TokenLayout token_layout = TokenLayout::seq_batch;  ///< which tokens form a sequence
  index_t sequence_length = 0;  ///< S of the sequence aux loss; T must be a multiple of it
  /// The balance losses count each token's first choice only, with k = 1 in the divisor
  /// (DeepSpeed's top2gating: c_e counts the tokens whose top expert is e).
  bool aux_first_choice_only = false;
};

/// Running mean of the expert counts over the micro-batches of one global batch (REFERENCE §5,
/// global aux loss). The caller owns it, passes it to every forward, and calls reset() at each
/// global batch; counts must already be summed over the data-parallel group when there is one.
class GlobalAuxLoss {
 public:
  /// Adds one micro-batch's counts [E].
  void accumulate(const std::vector<std::int64_t>& counts) {
    if (sum_.empty()) sum_.assign(counts.size(), 0.0);
    SY_EXPECTS(sum_.size() == counts.size(),
               detail::concat("GlobalAuxLoss: ", counts.size(), " experts after ", sum_.size()));
    for (std::size_t e = 0; e < counts.size(); ++e) sum_[e] += static_cast<double>(counts[e]);
    ++micro_batches_;
  }
  /// Mean counts over the micro-batches seen since the last reset.
  std::vector<double> mean_counts() const {
    std::vector<double> m(sum_.size(), 0.0);
    for (std::size_t e = 0; e < sum_.size(); ++e)
      m[e] = sum_[e] / static_cast<double>(micro_batches_);
    return m;
  }
  std::int64_t micro_batches() const { return micro_batches_; }
  /// Starts a new global batch.
  void reset() {
    sum_.clear();
    micro_batches_ = 0;
  }

 private:
  std::vector<double> sum_;
  std::int64_t micro_batches_ = 0;
};

/// Per-call context of a router forward (not part of the router's identity).
struct RouteContext {
  bool training = true;                 ///< Sinkhorn selects by P only when training
  GlobalAuxLoss* global_aux = nullptr;  ///< needed by global_aux_loss
  /// Sums a vector in place over the loss's reduction group (e.g. an all_reduce over the dense
  /// data-parallel group). When set, the balance losses sum their expert counts and token
  /// counts over the group before forming the weights (REFERENCE §5: "c_e is summed over the
  /// reduction group and T is the group's token count"); empty: this rank alone.
  std::function<void(std::span<double>)> group_sum;
};

/// Runtime numbers of a router (REFERENCE §2): everything except K and the score function.
struct RouterParams {
  index_t num_experts = 0;
  std::optional<double> topk_scaling_factor;  ///< γ
  std::optional<int> num_groups;              ///< G, with group_topk
  std::optional<int> group_topk;              ///< G_k
  std::vector<double> expert_bias;            ///< β [E] (sigmoid family only) or empty
  double expert_bias_update_rate = 1e-3;      ///< u of the aux-loss-free update
  LossParams losses;
};

namespace detail {
/// What backward needs of one balance loss: per-sequence weights w[b][e] (REFERENCE §8).
struct balance_state {
  index_t num_sequences = 1;
  TokenLayout token_layout = TokenLayout::seq_batch;
  index_t sequence_length = 0;
  std::vector<double> weights;  ///< [num_sequences][E]
};
}  // namespace detail

/// What a router forward returns and its backward consumes. Row-major buffers:
/// topk_indices int32 [T][k] and topk_probs T [T][k] are the input of the dispatcher.
template <class T>
struct Routing {
  index_t num_tokens = 0;
  index_t num_experts = 0;
  int k = 0;
  std::vector<T> logits;                        ///< [T][E] copy: backward recomputes from it
  std::vector<std::int32_t> topk_indices;       ///< [T][k], descending selection score
  std::vector<T> topk_probs;                    ///< [T][k], γ applied
  std::vector<std::int64_t> tokens_per_expert;  ///< [E] routes per expert (no capacity yet)
  std::optional<double> aux_loss;               ///< Σ of the balance losses (α included)
  std::optional<double> z_loss;                 ///< c_z included
  std::vector<double> balance_losses;           ///< each balance loss, in LossParams order
  int sinkhorn_iterations = 0;                  ///< Sinkhorn only
  double loss_tokens = 0;                       ///< T of the z-loss mean (the group's tokens)
  std::vector<detail::balance_state> balance;   ///< backward state of each balance loss

  matrix_view<const std::int32_t> indices() const {
    return matrix_view<const std::int32_t>(topk_indices.data(), num_tokens, k);
  }
  matrix_view<const T> probs() const {
    return matrix_view<const T>(topk_probs.data(), num_tokens, k);
  }
  /// Dense [T][E] weights: 0 where a token is not routed.
  std::vector<T> dense_probs() const {
    std::vector<T> d(static_cast<std::size_t>(num_tokens * num_experts), T(0));
    for (index_t t = 0; t < num_tokens; ++t)
      for (int j = 0; j < k; ++j)
        d[static_cast<std::size_t>(t * num_experts + topk_indices[t * k + j])] =
            topk_probs[t * k + j];
    return d;
  }
};

}  // namespace switchyard
