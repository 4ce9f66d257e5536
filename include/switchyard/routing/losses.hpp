#pragma once
/// \file Load-balancing losses and z-loss on the host (REFERENCE §5, gradients §8): Switch aux
/// loss, sequence aux loss, global aux loss and z-loss, any of them at once with their own
/// coefficients. Routers call these from forward (values) and backward (gradients).

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/parallel.hpp"
#include "switchyard/routing/detail/token_math.hpp"
#include "switchyard/routing/routing_types.hpp"
#include "switchyard/routing/score.hpp"

namespace switchyard {

namespace detail {

/// Sequence of token t (REFERENCE §5): seq_batch t = s·B + b, batch_seq t = b·S + s.
inline index_t sequence_of(index_t t, const balance_state& b) {
  return sequence_index(t, b.num_sequences, b.sequence_length, b.token_layout);
}

}  // namespace detail

/// Throws numeric_error naming the first token whose logits hold NaN or Inf.
template <class T>
void check_logits_finite(matrix_view<const T> z) {
  if constexpr (std::is_floating_point_v<T>) {
    // All exponent bits set = Inf or NaN: a branch-free pass the compiler vectorises; the
    // token is looked for only when one is found.
    using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    constexpr U exponent = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
    const T* p = z.data_handle();
    U bad = 0;
    for (index_t i = 0, n = z.extent(0) * z.extent(1); i < n; ++i)
      bad |= U((std::bit_cast<U>(p[i]) & exponent) == exponent);
    if (!bad) return;
  }
  for (index_t t = 0; t < z.extent(0); ++t)
    for (index_t e = 0; e < z.extent(1); ++e)
      if (!math::isfinite(z(t, e)))
        throw numeric_error(detail::concat("router logits of token ", t, " are not finite (expert ",
                                           e, " is ", z(t, e), ")"));
}

/// Checks what the balance losses of `p` need of T tokens and the context (a known loss type,
/// whole sequences for seq_aux_loss, an accumulator for global_aux_loss) before any group
/// collective, so a caller can fail on every rank together (fail_together) instead of one rank
/// leaving a collective the others wait in.
inline void check_balance_inputs(const LossParams& p, index_t Tn, const RouteContext& ctx) {
  for (const BalanceLoss& bl : p.balance) {
    SY_EXPECTS(bl.type == LoadBalancingType::aux_loss ||
                   bl.type == LoadBalancingType::seq_aux_loss ||
                   bl.type == LoadBalancingType::global_aux_loss,
               detail::concat("balance loss type ", enum_name(bl.type),
                              " is not aux_loss, seq_aux_loss or global_aux_loss"));
    if (bl.type == LoadBalancingType::seq_aux_loss)
      SY_EXPECTS(p.sequence_length > 0 && Tn % p.sequence_length == 0,
                 detail::concat("seq_aux_loss: ", Tn, " tokens are not a whole number of "
                                "sequences of length ", p.sequence_length));
    if (bl.type == LoadBalancingType::global_aux_loss)
      SY_EXPECTS(ctx.global_aux != nullptr,
                 "global_aux_loss needs a GlobalAuxLoss accumulator in RouteContext");
  }
}

/// The lengths of the vectors compute_losses passes to RouteContext::group_sum for `p` and E
/// experts, in call order (with a group every rank makes these calls, even with no tokens): a
/// caller whose rank failed inside a router's forward joins the calls it missed, so its peers
/// are not left waiting in one (the host layer's fault handling).
inline std::vector<std::size_t> group_sum_lengths(const LossParams& p, index_t E) {
  std::vector<std::size_t> n;
  for (const BalanceLoss& bl : p.balance)  // per sequence: the sequence count; else c_e and T
    n.push_back(bl.type == LoadBalancingType::seq_aux_loss ? 1 : static_cast<std::size_t>(E) + 1);
  if (p.z_loss_coeff > 0) n.push_back(1);  // the token count
  return n;
}

/// The Routing a router's forward fills in: shapes checked against `num_experts`, logits
/// checked finite and copied (backward recomputes from them), outputs sized, counts zeroed.
template <int K, class T>
Routing<T> begin_routing(matrix_view<const T> logits, index_t num_experts, const char* router) {
  const index_t Tn = logits.extent(0), E = logits.extent(1);
  SY_EXPECTS(E == num_experts, detail::concat(router, ": logits have ", E, " columns for ",
                                              num_experts, " experts"));
  check_logits_finite(logits);
  Routing<T> r;
  r.num_tokens = Tn;
  r.num_experts = E;
  r.k = K;
  r.logits.assign(logits.data_handle(), logits.data_handle() + Tn * E);
  r.topk_indices.resize(static_cast<std::size_t>(Tn * K));
  r.topk_probs.resize(static_cast<std::size_t>(Tn * K));
  r.tokens_per_expert.assign(static_cast<std::size_t>(E), 0);
  return r;
}

/// Runs route(i) for the items that cover every token of `r`: blocks of `tokens_per_item` tokens
/// first, then one item per remaining token (on threads: each writes only its own tokens'
/// routes); then counts tokens_per_expert serially.
template <int K, class T, class F>
void route_tokens(Routing<T>& r, index_t blocks, index_t tokens_per_item, F&& route) {
  const index_t items = blocks + (r.num_tokens - blocks * tokens_per_item);
  exec::parallel_for(items, tokens_per_item * r.num_experts * (K + 4), route);
  for (const std::int32_t e : r.topk_indices) ++r.tokens_per_expert[static_cast<std::size_t>(e)];
}

/// Computes every loss of `p` for logits z [T][E] of a K-expert router with score `Score` and
/// stores values and backward state in `out` (aux_loss, balance_losses, z_loss, balance).
template <int K, ScoreTag Score, class T>
void compute_losses(matrix_view<const T> z, const LossParams& p, const RouteContext& ctx,
                    Routing<T>& out) {
  const index_t Tn = z.extent(0), E = z.extent(1);
  out.balance.clear();
  out.balance_losses.clear();
  out.aux_loss.reset();
  out.z_loss.reset();
  check_balance_inputs(p, Tn, ctx);
  // With a group, every rank joins each group_sum in the same order, even with no tokens.
  if (!p.balance.empty() && (Tn > 0 || ctx.group_sum)) {
    // The count map and Σ_t q[t,e] per sequence are shared by every balance loss.
    std::vector<std::int64_t> counts(static_cast<std::size_t>(E), 0);
    const int counted = p.aux_first_choice_only ? 1 : K;  // choices per token in c_e
    double total = 0.0;
    for (const BalanceLoss& bl : p.balance) {
      detail::balance_state st;
      index_t tokens_per_seq = Tn;
      if (bl.type == LoadBalancingType::seq_aux_loss) {
        st.num_sequences = Tn / p.sequence_length;
        st.sequence_length = p.sequence_length;
        st.token_layout = p.token_layout;
        tokens_per_seq = p.sequence_length;
      }
      const auto B = static_cast<std::size_t>(st.num_sequences);
      std::vector<double> c(B * static_cast<std::size_t>(E), 0.0);
      std::vector<double> qsum(B * static_cast<std::size_t>(E), 0.0);
      std::fill(counts.begin(), counts.end(), 0);
      // Per-token work on threads into per-token buffers, then the sums serially in token
      // order (the same additions, in the same order, for any thread count).
      std::vector<std::int32_t> idx(static_cast<std::size_t>(Tn * K));
      std::vector<T> q(static_cast<std::size_t>(Tn * E));
      exec::parallel_for(Tn, E * (K + 4), [&](index_t t) {
        const T* zr = &z(t, 0);
        const auto r = detail::aux_row_stats<Score>(zr, E);
        detail::aux_count_topk<K, Score>(zr, E, r, &idx[t * K]);
        for (index_t e = 0; e < E; ++e) q[t * E + e] = detail::aux_q<Score>(zr, e, r);
      });
      for (index_t t = 0; t < Tn; ++t) {
        const auto b = static_cast<std::size_t>(detail::sequence_of(t, st));
        for (int j = 0; j < counted; ++j) {
          c[b * E + idx[t * K + j]] += 1.0;
          ++counts[idx[t * K + j]];
        }
        for (index_t e = 0; e < E; ++e) qsum[b * E + e] += q[t * E + e];
      }
      double group_tokens = static_cast<double>(tokens_per_seq);
      double sequences = static_cast<double>(B);
      if (ctx.group_sum && bl.type == LoadBalancingType::seq_aux_loss) {
        // Each rank holds whole sequences of its own: the counts stay per sequence and the mean
        // is over the group's sequences (the same vector length on every rank).
        double g[1] = {sequences};
        ctx.group_sum(std::span<double>(g));
        sequences = g[0];
      } else if (ctx.group_sum) {
        // Counts and tokens per sequence summed over the reduction group; Σ_t q stays local.
        c.push_back(group_tokens);
        ctx.group_sum(std::span<double>(c));
        group_tokens = c.back();
        c.pop_back();
        for (std::size_t e = 0; e < counts.size(); ++e) {
          double total_e = 0.0;
          for (std::size_t b = 0; b < B; ++b) total_e += c[b * E + e];
          counts[e] = static_cast<std::int64_t>(std::llround(total_e));
        }
      }
      if (bl.type == LoadBalancingType::global_aux_loss) {
        ctx.global_aux->accumulate(counts);
        const std::vector<double> mean = ctx.global_aux->mean_counts();
        std::copy(mean.begin(), mean.end(), c.begin());
      }
      // w[b][e] = α·E·c_be / (k·S²·B), S the tokens per sequence (of the group when summed);
      // the loss is Σ_b Σ_e qsum_be·w_be (REFERENCE §5, §8). k is 1 when only first choices count.
      const double denom = static_cast<double>(counted) * group_tokens * group_tokens * sequences;
      const double scale = denom > 0 ? bl.coeff * static_cast<double>(E) / denom : 0.0;
      st.weights.resize(c.size());
      double value = 0.0;
      for (std::size_t i = 0; i < c.size(); ++i) {
        st.weights[i] = scale * c[i];
        value += qsum[i] * st.weights[i];
      }
      out.balance_losses.push_back(value);
      out.balance.push_back(std::move(st));
      total += value;
    }
    out.aux_loss = total;
  }
  if (p.z_loss_coeff > 0 && (Tn > 0 || ctx.group_sum)) {
    // L_z = c_z · mean_t lse_t² (REFERENCE §5), accumulated in double; with a group the mean is
    // over the group's tokens, so the per-rank terms add up to the group's z-loss.
    std::vector<double> lse(static_cast<std::size_t>(Tn));
    exec::parallel_for(Tn, 4 * E, [&](index_t t) {
      lse[t] = static_cast<double>(detail::logsumexp(&z(t, 0), E));
    });
    double sum = 0.0;
    for (const double l : lse) sum += l * l;
    double tokens[1] = {static_cast<double>(Tn)};
    if (ctx.group_sum) ctx.group_sum(std::span<double>(tokens));
    out.loss_tokens = tokens[0];
    out.z_loss = tokens[0] > 0 ? p.z_loss_coeff * sum / tokens[0] : 0.0;
  }
}

/// Adds the gradients of the losses of `r` (computed by compute_losses) to dz [T][E].
template <ScoreTag Score, class T>
void add_loss_gradients(const Routing<T>& r, const LossParams& p, matrix_view<T> dz) {
  const index_t Tn = r.num_tokens, E = r.num_experts;
  SY_EXPECTS(dz.extent(0) == Tn && dz.extent(1) == E,
             detail::concat("dlogits is [", dz.extent(0), "][", dz.extent(1), "], expected [", Tn,
                            "][", E, "]"));
  // Each token adds to its own row only: parallel over tokens, in the same order per row.
  for (const detail::balance_state& st : r.balance) {
    const std::vector<T> w(st.weights.begin(), st.weights.end());
    exec::parallel_for(Tn, 4 * E, [&](index_t t) {
      const auto b = detail::sequence_of(t, st);
      detail::aux_token_gradient<Score>(&r.logits[t * E], E, &w[b * E], &dz(t, 0));
    });
  }
  if (r.z_loss) {
    const T c = static_cast<T>(p.z_loss_coeff * 2.0 / r.loss_tokens);
    exec::parallel_for(Tn, 4 * E, [&](index_t t) {
      detail::z_loss_token_gradient(&r.logits[t * E], E, c, &dz(t, 0));
    });
  }
}

}  // namespace switchyard
