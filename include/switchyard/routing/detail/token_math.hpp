#pragma once
/// \file Per-token router math as SY_HD functions: the host loops and the CUDA kernels both call
/// these, so the host result is the reference by construction. Every function reads one row of
/// logits z[0..E) and needs no scratch memory beyond a few registers (K ≤ 8, G ≤ 64).
/// Formulas: REFERENCE §2 (selection and weights), §3 (Sinkhorn weights), §5 (losses),
/// §8 (gradients).

#include <cstdint>
#include <type_traits>

#include "switchyard/core/macros.hpp"
#include "switchyard/core/math.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/routing/score.hpp"

namespace switchyard::detail {

/// Most groups group-limited routing supports: the chosen groups are a 64-bit mask.
inline constexpr int max_groups = 64;
/// Sigmoid-family weights divide by Σ s + this (REFERENCE §2).
inline constexpr double sigmoid_norm_eps = 1e-20;

/// Runtime numbers of one top-k routing call, in the compute type T (float or double).
template <class T>
struct route_args {
  index_t num_experts = 0;
  T scaling = T(1);                ///< γ; 1 when no topk_scaling_factor
  int num_groups = 1;              ///< G; 1 = no group limit
  int group_topk = 1;              ///< G_k
  const T* expert_bias = nullptr;  ///< β [E] (selection only), or null
};

/// Row max and Σ exp(z - max): softmax_e = exp(z_e - m) / sum.
template <class T>
struct row_softmax {
  T max;
  T sum;
};

template <class T>
SY_HD inline row_softmax<T> softmax_stats(const T* z, index_t E) {
  T m = z[0];
  for (index_t e = 1; e < E; ++e) m = z[e] > m ? z[e] : m;
  T s = T(0);
  for (index_t e = 0; e < E; ++e) s += math::exp(z[e] - m);
  return {m, s};
}

/// logsumexp of a row.
template <class T>
SY_HD inline T logsumexp(const T* z, index_t E) {
  const row_softmax<T> st = softmax_stats(z, E);
  return st.max + math::log(st.sum);
}

/// The score s = f(z) of the sigmoid family.
template <class Score, class T>
SY_HD inline T family_score(T z) {
  if constexpr (Score::function == ScoreFunction::sigmoid) {
    return math::sigmoid(z);
  } else {
    return math::sqrt(math::softplus(z));
  }
}

/// ds/dz of the sigmoid family: σ(1-σ) for sigmoid, σ(z)/(2s) for sqrtsoftplus (0 when s
/// underflows, the limit of e^{z/2}/2).
template <class Score, class T>
SY_HD inline T family_score_derivative(T z, T s) {
  if constexpr (Score::function == ScoreFunction::sigmoid) {
    return s * (T(1) - s);
  } else {
    return s > T(0) ? math::sigmoid(z) / (T(2) * s) : T(0);
  }
}

/// Selection score of expert e (REFERENCE §2): raw logit for top-k-first softmax, softmax prob
/// for pre-softmax, s + β for the sigmoid family.
template <class Score, class T>
SY_HD inline T selection_score(const T* z, index_t e, const row_softmax<T>& st, const T* bias) {
  if constexpr (std::is_same_v<Score, Softmax>) {
    return z[e];
  } else if constexpr (std::is_same_v<Score, PreSoftmax>) {
    return math::exp(z[e] - st.max) / st.sum;
  } else {
    const T s = family_score<Score>(z[e]);
    return bias ? s + bias[e] : s;
  }
}

/// The n ≤ K best (value, index) pairs seen so far, in descending value; among equal values the
/// earlier (lower) index ranks first, so a scan in index order gives the same list as n passes
/// of "first maximum wins". One pass over E with the list in registers (K is a template
/// argument, so the insertion loop is unrolled): O(E) instead of O(K·E) score evaluations.
template <int K, class T>
struct top_list {
  T value[K] = {};
  std::int32_t index[K] = {};
  int size = 0;

  /// Offers (v, e); n is the list length wanted (≤ K). Needs v not NaN.
  SY_HD void offer(T v, index_t e, int n) {
    if (size == n && !(v > value[n - 1])) return;
    int j = size < n ? size++ : n - 1;
    for (; j > 0 && v > value[j - 1]; --j) {
      value[j] = value[j - 1];
      index[j] = index[j - 1];
    }
    value[j] = v;
    index[j] = static_cast<std::int32_t>(e);
  }

  /// Writes idx[0..n) (and score[0..n) when not null); -1 / 0 past the entries found.
  SY_HD void write(int n, std::int32_t* idx, T* score) const {
    for (int j = 0; j < n; ++j) {
      idx[j] = j < size ? index[j] : -1;
      if (score) score[j] = j < size ? value[j] : T(0);
    }
  }
};

/// Selection scores computed on demand (the device path: nothing per expert in local memory).
template <class Score, class T>
struct computed_scores {
  const T* z;
  const row_softmax<T>* st;
  const T* bias;
  SY_HD T operator()(index_t e) const { return selection_score<Score>(z, e, *st, bias); }
};
/// Selection scores read from a buffer filled once per token (the host path).
template <class T>
struct buffered_scores {
  const T* score;
  SY_HD T operator()(index_t e) const { return score[e]; }
};

/// Top-n of score(e) over [begin, end); the first maximum wins, so equal scores go to the lower
/// index. Writes idx[0..n) in descending order (and the scores when `out` is not null).
template <int K, class T, class Scores>
SY_HD inline void select_top(const Scores& score, index_t begin, index_t end, int n,
                             std::int32_t* idx, T* out) {
  top_list<K, T> top;
  for (index_t e = begin; e < end; ++e) top.offer(score(e), e, n);
  top.write(n, idx, out);
}

/// Group-limited routing (REFERENCE §2): group score = sum of the top ⌊k/G_k⌋ selection scores
/// of the group; the G_k best groups stay (ties: lower group). Returns their bit mask.
template <int K, class T, class Scores>
SY_HD inline std::uint64_t choose_groups(const Scores& score, const route_args<T>& a) {
  const int G = a.num_groups;
  const index_t gs = a.num_experts / G;
  const int per_group = K / a.group_topk;
  T gscore[max_groups];
  for (int g = 0; g < G; ++g) {
    // The per_group largest scores in descending order, by a branchless insertion network
    // (values only: which of equal values is kept does not change the sum).
    T top[K];
    for (int j = 0; j < K; ++j) top[j] = -math::infinity<T>();
    for (index_t e = g * gs; e < (g + 1) * gs; ++e) {
      T v = score(e);
      for (int j = 0; j < K; ++j) {
        if (j >= per_group) break;
        const T hi = v > top[j] ? v : top[j];
        v = v > top[j] ? top[j] : v;
        top[j] = hi;
      }
    }
    T sum = T(0);
    for (int j = 0; j < per_group; ++j) sum += top[j];
    gscore[g] = sum;
  }
  std::uint64_t mask = 0;
  for (int j = 0; j < a.group_topk; ++j) {
    int best = -1;
    for (int g = 0; g < G; ++g) {
      if ((mask >> g) & 1u) continue;
      if (best < 0 || gscore[g] > gscore[best]) best = g;
    }
    mask |= std::uint64_t(1) << best;
  }
  return mask;
}

/// The K selected experts of one token (descending score, ties to the lower index), within the
/// chosen groups when routing is group-limited. Groups are visited in index order, so the scan
/// is in expert order as without groups.
template <int K, class T, class Scores>
SY_HD inline void select_routes(const Scores& score, const route_args<T>& a, std::int32_t* idx) {
  const index_t E = a.num_experts;
  if (a.num_groups <= 1) {
    select_top<K>(score, 0, E, K, idx, static_cast<T*>(nullptr));
    return;
  }
  const std::uint64_t allowed = choose_groups<K, T>(score, a);
  const index_t gs = E / a.num_groups;
  top_list<K, T> top;
  for (int g = 0; g < a.num_groups; ++g)
    if ((allowed >> g) & 1u)
      for (index_t e = g * gs; e < (g + 1) * gs; ++e) top.offer(score(e), e, K);
  top.write(K, idx, static_cast<T*>(nullptr));
}

/// Experts whose selection scores the host computes once per token into a stack buffer (group-
/// limited routing reads each score twice); larger E computes them on demand.
inline constexpr index_t buffered_score_experts = 256;

/// Forward of one token: selected experts idx[0..K) (descending selection score) and their
/// weights prob[0..K) (REFERENCE §2, γ applied).
template <int K, class Score, class T>
SY_HD inline void route_token(const T* z, const route_args<T>& a, std::int32_t* idx, T* prob) {
  const index_t E = a.num_experts;
  // Only pre-softmax selects by (and weights with) the full softmax: skip its E exps otherwise.
  const row_softmax<T> st =
      std::is_same_v<Score, PreSoftmax> ? softmax_stats(z, E) : row_softmax<T>{T(0), T(1)};
#if !defined(__CUDA_ARCH__)
  if (E <= buffered_score_experts) {
    T buf[buffered_score_experts];
    for (index_t e = 0; e < E; ++e) buf[e] = selection_score<Score>(z, e, st, a.expert_bias);
    select_routes<K>(buffered_scores<T>{buf}, a, idx);
  } else
#endif
  {
    select_routes<K>(computed_scores<Score, T>{z, &st, a.expert_bias}, a, idx);
  }
  route_token_weights<K, Score>(z, a, st, idx, prob);
}

/// The weights prob[0..K) of one token's selected experts idx[0..K) (REFERENCE §2, γ applied);
/// `st` is the row's softmax statistics for pre-softmax (unused otherwise).
template <int K, class Score, class T>
SY_HD inline void route_token_weights(const T* z, const route_args<T>& a, const row_softmax<T>& st,
                                      const std::int32_t* idx, T* prob) {
  if constexpr (std::is_same_v<Score, Softmax>) {
    // idx[0] holds the largest selected logit: subtracting it keeps every exp ≤ 1.
    const T m = z[idx[0]];
    T ex[K];
    T sum = T(0);
    for (int j = 0; j < K; ++j) {
      ex[j] = math::exp(z[idx[j]] - m);
      sum += ex[j];
    }
    for (int j = 0; j < K; ++j) prob[j] = a.scaling * ex[j] / sum;
  } else if constexpr (std::is_same_v<Score, PreSoftmax>) {
    for (int j = 0; j < K; ++j) prob[j] = a.scaling * math::exp(z[idx[j]] - st.max) / st.sum;
  } else {
    T s[K];
    T sum = T(0);
    for (int j = 0; j < K; ++j) {
      s[j] = family_score<Score>(z[idx[j]]);
      sum += s[j];
    }
    const T norm = K > 1 ? sum + T(sigmoid_norm_eps) : T(1);
    for (int j = 0; j < K; ++j) prob[j] = a.scaling * s[j] / norm;
  }
}

/// Backward of one token (REFERENCE §8): g[0..K) = d(prob) of the selected routes; writes the
/// whole row dz[0..E) (selection is constant: unselected experts get 0 except for pre-softmax).
template <int K, class Score, class T>
SY_HD inline void route_token_backward(const T* z, const route_args<T>& a, const std::int32_t* idx,
                                       const T* g_in, T* dz) {
  const index_t E = a.num_experts;
  T g[K];
  for (int j = 0; j < K; ++j) g[j] = a.scaling * g_in[j];
  for (index_t e = 0; e < E; ++e) dz[e] = T(0);
  if constexpr (std::is_same_v<Score, Softmax>) {
    const T m = z[idx[0]];
    T p[K];
    T sum = T(0);
    for (int j = 0; j < K; ++j) {
      p[j] = math::exp(z[idx[j]] - m);
      sum += p[j];
    }
    T dot = T(0);
    for (int j = 0; j < K; ++j) {
      p[j] /= sum;
      dot += p[j] * g[j];
    }
    for (int j = 0; j < K; ++j) dz[idx[j]] = p[j] * (g[j] - dot);
  } else if constexpr (std::is_same_v<Score, PreSoftmax>) {
    const row_softmax<T> st = softmax_stats(z, E);
    T dot = T(0);
    for (int j = 0; j < K; ++j) dot += math::exp(z[idx[j]] - st.max) / st.sum * g[j];
    for (index_t e = 0; e < E; ++e) dz[e] = -(math::exp(z[e] - st.max) / st.sum) * dot;
    for (int j = 0; j < K; ++j) dz[idx[j]] += math::exp(z[idx[j]] - st.max) / st.sum * g[j];
  } else {
    T s[K];
    T sum = T(0);
    for (int j = 0; j < K; ++j) {
      s[j] = family_score<Score>(z[idx[j]]);
      sum += s[j];
    }
    T ds[K];
    if constexpr (K > 1) {
      const T norm = sum + T(sigmoid_norm_eps);
      T dot = T(0);
      for (int j = 0; j < K; ++j) dot += g[j] * s[j] / norm;
      for (int j = 0; j < K; ++j) ds[j] = (g[j] - dot) / norm;
    } else {
      ds[0] = g[0];
    }
    for (int j = 0; j < K; ++j)
      dz[idx[j]] = ds[j] * family_score_derivative<Score>(z[idx[j]], s[j]);
  }
}

// ---- Losses (REFERENCE §5, §8) ---------------------------------------------------------------

/// Sequence of token t (REFERENCE §5): seq_batch t = s·B + b, batch_seq t = b·S + s.
SY_HD inline index_t sequence_index(index_t t, index_t num_sequences, index_t sequence_length,
                                    TokenLayout layout) {
  if (num_sequences == 1) return 0;
  return layout == TokenLayout::seq_batch ? t % num_sequences : t / sequence_length;
}

/// Row statistics of the aux-loss scores q (REFERENCE §5): softmax over all E for the softmax
/// family; for the sigmoid family s normalised over all E, norm = Σ s + eps.
template <class T>
struct aux_row {
  row_softmax<T> st;
  T norm;
};

template <class Score, class T>
SY_HD inline aux_row<T> aux_row_stats(const T* z, index_t E) {
  if constexpr (is_softmax_score<Score>) {
    return {softmax_stats(z, E), T(1)};
  } else {
    T sum = T(0);
    for (index_t e = 0; e < E; ++e) sum += family_score<Score>(z[e]);
    return {row_softmax<T>{T(0), T(1)}, sum + T(sigmoid_norm_eps)};
  }
}

/// q[t,e] of the aux loss from the row statistics.
template <class Score, class T>
SY_HD inline T aux_q(const T* z, index_t e, const aux_row<T>& r) {
  if constexpr (is_softmax_score<Score>) {
    return math::exp(z[e] - r.st.max) / r.st.sum;
  } else {
    return family_score<Score>(z[e]) / r.norm;
  }
}

/// The aux loss's count map of one token: plain top-K of q, ties to the lower index (no groups,
/// no bias, no capacity).
template <int K, class Score, class T>
SY_HD inline void aux_count_topk(const T* z, index_t E, const aux_row<T>& r, std::int32_t* idx) {
  top_list<K, T> top;
  for (index_t e = 0; e < E; ++e) top.offer(aux_q<Score>(z, e, r), e, K);
  top.write(K, idx, static_cast<T*>(nullptr));
}

/// Adds the aux-loss gradient of one token to dz[0..E), with w[e] = α·E·c_e/(k·T²) (already
/// divided by the number of sequences for the sequence loss). REFERENCE §8.
template <class Score, class T>
SY_HD inline void aux_token_gradient(const T* z, index_t E, const T* w, T* dz) {
  if constexpr (is_softmax_score<Score>) {
    const row_softmax<T> st = softmax_stats(z, E);
    T dot = T(0);
    for (index_t e = 0; e < E; ++e) dot += math::exp(z[e] - st.max) / st.sum * w[e];
    for (index_t e = 0; e < E; ++e) dz[e] += math::exp(z[e] - st.max) / st.sum * (w[e] - dot);
  } else {
    T sum = T(0);
    for (index_t e = 0; e < E; ++e) sum += family_score<Score>(z[e]);
    const T norm = sum + T(sigmoid_norm_eps);
    T dot = T(0);
    for (index_t e = 0; e < E; ++e) dot += w[e] * family_score<Score>(z[e]) / norm;
    for (index_t e = 0; e < E; ++e) {
      const T s = family_score<Score>(z[e]);
      dz[e] += (w[e] - dot) / norm * family_score_derivative<Score>(z[e], s);
    }
  }
}

/// Adds the z-loss gradient of one token: c·lse·softmax_e with c = c_z·2/T (REFERENCE §8).
template <class T>
SY_HD inline void z_loss_token_gradient(const T* z, index_t E, T c, T* dz) {
  const row_softmax<T> st = softmax_stats(z, E);
  const T lse = st.max + math::log(st.sum);
  for (index_t e = 0; e < E; ++e) dz[e] += c * lse * math::exp(z[e] - st.max) / st.sum;
}

// ---- Sinkhorn weights (REFERENCE §3) ----------------------------------------------------------

/// Weight of expert e for Sinkhorn<K>: σ(z_e) for K = 1, softmax(z)_e over all E for K > 1.
template <int K, class T>
SY_HD inline T sinkhorn_weight(const T* z, index_t e, const row_softmax<T>& st) {
  if constexpr (K == 1) {
    return math::sigmoid(z[e]);
  } else {
    return math::exp(z[e] - st.max) / st.sum;
  }
}

/// Top-K of a row of P (training) or of the weights (evaluation); writes idx and the weights.
template <int K, class T>
SY_HD inline void sinkhorn_token(const T* z, const T* p_row, index_t E, bool by_weight,
                                 std::int32_t* idx, T* prob) {
  const row_softmax<T> st = softmax_stats(z, E);
  top_list<K, T> top;
  for (index_t e = 0; e < E; ++e) top.offer(by_weight ? sinkhorn_weight<K>(z, e, st) : p_row[e], e, K);
  top.write(K, idx, static_cast<T*>(nullptr));
  for (int j = 0; j < K; ++j) prob[j] = sinkhorn_weight<K>(z, idx[j], st);
}

/// Backward through the Sinkhorn weights only; writes the whole row dz[0..E).
template <int K, class T>
SY_HD inline void sinkhorn_token_backward(const T* z, index_t E, const std::int32_t* idx,
                                          const T* g, T* dz) {
  for (index_t e = 0; e < E; ++e) dz[e] = T(0);
  if constexpr (K == 1) {
    const T s = math::sigmoid(z[idx[0]]);
    dz[idx[0]] = g[0] * s * (T(1) - s);
  } else {
    const row_softmax<T> st = softmax_stats(z, E);
    T dot = T(0);
    for (int j = 0; j < K; ++j) dot += math::exp(z[idx[j]] - st.max) / st.sum * g[j];
    for (index_t e = 0; e < E; ++e) dz[e] = -(math::exp(z[e] - st.max) / st.sum) * dot;
    for (int j = 0; j < K; ++j) dz[idx[j]] += math::exp(z[idx[j]] - st.max) / st.sum * g[j];
  }
}

}  // namespace switchyard::detail
