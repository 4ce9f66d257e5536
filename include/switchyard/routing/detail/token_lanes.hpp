#pragma once
/// \file Host top-k routing of a block of tokens at once, one token per SIMD lane (GCC/Clang vector
/// extensions). The per-token path (token_math.hpp: a branchy insertion list, one token at a
/// time) mispredicts on random scores; here the same selection runs as branchless compare-and-swap
/// networks on vectors of `lane_width` tokens. Bit-identical to route_token by construction: the
/// same selection scores (computed by the same scalar calls, or by the same IEEE operations in
/// lanes), the same "strictly greater moves up" order (ties to the lower index / group), the same
/// group sums in the same order, and the weights from route_token_weights. Tests compare both
/// paths with memcmp. Not under nvcc (its host path stays per token).

#include <cstdint>
#include <type_traits>

#include "switchyard/core/mdspan.hpp"
#include "switchyard/routing/detail/token_math.hpp"

#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define SY_ROUTE_LANES 1
#else
#define SY_ROUTE_LANES 0
#endif

namespace switchyard::detail {

/// Tokens routed together by route_block (the host forward routes blocks, the tail per token).
inline constexpr index_t lane_width = 8;

#if SY_ROUTE_LANES

template <class T>
struct lanes;

template <>
struct lanes<float> {
  typedef float value __attribute__((vector_size(32)));
  typedef std::int32_t mask __attribute__((vector_size(32)));
};
template <>
struct lanes<double> {
  typedef double value __attribute__((vector_size(64)));
  typedef std::int64_t mask __attribute__((vector_size(64)));
};

/// m ? a : b per lane, for value (reinterpreted) or mask vectors; m lanes are all ones or zeros.
template <class V, class M>
inline void lane_select(V& out, const M& m, const V& a, const V& b) {
  out = (V)(((M)a & m) | ((M)b & ~m));
}

/// Inserts (value, index) into the descending lists top_v[0..K), top_i[0..K) of every lane, the
/// order of top_list::offer: by value, equal values by lower index. A pair moves above an entry
/// when it ranks before it; an entry it displaces moves on down the same way.
template <int K, class V, class M>
inline void lane_offer(const V& value, const M& index, V* top_v, M* top_i) {
  V v = value;
  M vi = index;
  for (int j = 0; j < K; ++j) {
    const M gt = (v > top_v[j]) | ((v == top_v[j]) & (vi < top_i[j]));
    V hi, lo;
    lane_select(hi, gt, v, top_v[j]);
    lane_select(lo, gt, top_v[j], v);
    const M hi_i = (vi & gt) | (top_i[j] & ~gt);
    vi = (top_i[j] & gt) | (vi & ~gt);
    top_v[j] = hi;
    v = lo;
    top_i[j] = hi_i;
  }
}

/// Selection scores [E] (one vector of lane_width tokens per expert) for Score, from the rows
/// z[b·E ..] of the block. Sigmoid: σ by the same operations as math::sigmoid, the exp scalar
/// (libm), the rest in lanes; the others by selection_score itself.
template <class Score, class T>
inline void lane_scores(const T* z, const route_args<T>& a, const row_softmax<T>* st,
                        typename lanes<T>::value* score) {
  using V = typename lanes<T>::value;
  using M = typename lanes<T>::mask;
  const index_t E = a.num_experts;
  if constexpr (std::is_same_v<Score, Sigmoid>) {
    for (index_t e = 0; e < E; ++e) {
      V x, ex;
      for (index_t b = 0; b < lane_width; ++b) {
        const T xb = z[b * E + e];
        x[b] = xb;
        // math::sigmoid: x ≥ 0 -> 1 / (1 + exp(-x)); x < 0 -> exp(x) / (1 + exp(x)).
        ex[b] = math::exp(xb >= T(0) ? -xb : xb);
      }
      const M nonneg = x >= T(0);
      V num;
      lane_select(num, nonneg, V{} + T(1), ex);
      V s = num / (T(1) + ex);
      if (a.expert_bias) s = s + a.expert_bias[e];
      score[e] = s;
    }
  } else {
    for (index_t e = 0; e < E; ++e)
      for (index_t b = 0; b < lane_width; ++b)
        score[e][b] = selection_score<Score>(z + b * E, e, st[b], a.expert_bias);
  }
}

/// The K selected experts of lane_width tokens from their selection scores (as select_routes):
/// writes idx[b·K + j].
template <int K, class T>
inline void lane_select_routes(const typename lanes<T>::value* score, const route_args<T>& a,
                               std::int32_t* idx) {
  using V = typename lanes<T>::value;
  using M = typename lanes<T>::mask;
  using I = std::remove_cvref_t<decltype(M{}[0])>;
  const index_t E = a.num_experts;
  const V lowest = V{} - math::infinity<T>();
  V top_v[K];
  M top_i[K];
  for (int j = 0; j < K; ++j) {
    top_v[j] = lowest;
    top_i[j] = M{} - 1;
  }
  if (a.num_groups <= 1) {
    for (index_t e = 0; e < E; ++e) lane_offer<K>(score[e], M{} + static_cast<I>(e), top_v, top_i);
  } else {
    const int G = a.num_groups;
    const index_t gs = E / G;
    const int per_group = K / a.group_topk;
    // Group score: the sum of its per_group largest selection scores, from 0 in descending order
    // (as choose_groups).
    V gscore[max_groups];
    for (int g = 0; g < G; ++g) {
      V top[K];
      for (int j = 0; j < K; ++j) top[j] = lowest;
      for (index_t e = g * gs; e < (g + 1) * gs; ++e) {
        V v = score[e];
        for (int j = 0; j < K; ++j) {
          if (j >= per_group) break;
          const M gt = v > top[j];
          V hi;
          lane_select(hi, gt, v, top[j]);
          lane_select(v, gt, top[j], v);
          top[j] = hi;
        }
      }
      V sum = V{};
      for (int j = 0; j < per_group; ++j) sum = sum + top[j];
      gscore[g] = sum;
    }
    // The group_topk best groups, each round the first strict maximum among those not chosen.
    M chosen[max_groups];
    for (int g = 0; g < G; ++g) chosen[g] = M{};
    for (int j = 0; j < a.group_topk; ++j) {
      M best = M{} - 1;
      V best_v = V{};
      for (int g = 0; g < G; ++g) {
        const M take = ~chosen[g] & ((best < 0) | (gscore[g] > best_v));
        lane_select(best_v, take, gscore[g], best_v);
        best = (take & static_cast<I>(g)) | (best & ~take);
      }
      for (int g = 0; g < G; ++g) chosen[g] |= best == static_cast<I>(g);
    }
    // Top-K over the chosen groups' experts in expert order; the others offer -inf, which never
    // enters a list of finite scores (a chosen set holds at least K experts).
    for (int g = 0; g < G; ++g) {
      bool any = false;
      for (index_t b = 0; b < lane_width; ++b) any = any || chosen[g][b] != 0;
      if (!any) continue;
      for (index_t e = g * gs; e < (g + 1) * gs; ++e) {
        V v;
        lane_select(v, chosen[g], score[e], lowest);
        lane_offer<K>(v, M{} + static_cast<I>(e), top_v, top_i);
      }
    }
  }
  for (index_t b = 0; b < lane_width; ++b)
    for (int j = 0; j < K; ++j) idx[b * K + j] = static_cast<std::int32_t>(top_i[j][b]);
}

/// Routes lane_width tokens (rows z[b·E ..]): the same idx and prob as route_token on each row.
/// Needs finite logits (checked by the caller) and E ≤ buffered_score_experts.
template <int K, class Score, class T>
inline void route_block(const T* z, const route_args<T>& a, std::int32_t* idx, T* prob) {
  const index_t E = a.num_experts;
  row_softmax<T> st[lane_width];
  for (index_t b = 0; b < lane_width; ++b)
    st[b] = std::is_same_v<Score, PreSoftmax> ? softmax_stats(z + b * E, E)
                                              : row_softmax<T>{T(0), T(1)};
  typename lanes<T>::value score[buffered_score_experts];
  lane_scores<Score>(z, a, st, score);
  lane_select_routes<K>(score, a, idx);
  for (index_t b = 0; b < lane_width; ++b)
    route_token_weights<K, Score>(z + b * E, a, st[b], idx + b * K, prob + b * K);
}

#endif  // SY_ROUTE_LANES

/// Whether the host routes a block of lane_width tokens of E experts with route_block.
template <class T>
constexpr bool routes_in_lanes(index_t E) {
  return SY_ROUTE_LANES &&
         (std::is_same_v<T, float> || std::is_same_v<T, double>)&&E <= buffered_score_experts;
}

}  // namespace switchyard::detail
