#pragma once
/// \file Host implementation of expert_forward / expert_backward (experts.hpp).

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/exec/parallel.hpp"
#include "switchyard/experts/detail/expert_math.hpp"
#include "switchyard/experts/detail/host_gemm.hpp"
#include "switchyard/experts/expert_policy.hpp"
#include "switchyard/experts/expert_types.hpp"
#include "switchyard/experts/grouped_gemm.hpp"
#include "switchyard/experts/workspace.hpp"

namespace switchyard::detail {

/// Checks that the views match the shape (weights or grads alike).
template <class T>
void check_expert_tensors(const expert_shape& s, index_t f1, const expert_tensors<T>& t,
                          const char* what) {
  const index_t E = s.num_experts, H = s.hidden, F = s.ffn_hidden;
  SY_EXPECTS(t.fc1.extent(0) == E && t.fc1.extent(1) == f1 && t.fc1.extent(2) == H,
             concat(what, ".fc1 must be [", E, "][", f1, "][", H, "]; got [", t.fc1.extent(0), "][",
                    t.fc1.extent(1), "][", t.fc1.extent(2), "]"));
  SY_EXPECTS(t.fc2.extent(0) == E && t.fc2.extent(1) == H && t.fc2.extent(2) == F,
             concat(what, ".fc2 must be [", E, "][", H, "][", F, "]; got [", t.fc2.extent(0), "][",
                    t.fc2.extent(1), "][", t.fc2.extent(2), "]"));
  if (s.bias) {
    SY_EXPECTS(t.fc1_bias.extent(0) == E && t.fc1_bias.extent(1) == f1 &&
                   t.fc2_bias.extent(0) == E && t.fc2_bias.extent(1) == H,
               concat(what, ": the shape has biases: fc1_bias must be [", E, "][", f1,
                      "] and fc2_bias [", E, "][", H, "]"));
  } else {
    SY_EXPECTS(t.fc1_bias.size() == 0 && t.fc2_bias.size() == 0,
               concat(what, ": biases given but expert_shape::bias is false"));
  }
}

/// Checks the row views, offsets and workspace of one call; returns the workspace layout.
template <class T, ExpertPolicy P>
expert_workspace_layout check_call(P p, const expert_shape& s, std::span<const index_t> offsets,
                                   index_t rows, std::span<std::byte> workspace) {
  SY_EXPECTS(s.num_experts >= 0 && s.hidden >= 1 && s.ffn_hidden >= 1,
             concat("expert_shape needs H >= 1 and F >= 1; got H=", s.hidden, " F=", s.ffn_hidden));
  check_expert_offsets(offsets, s.num_experts, rows);
  const auto layout = expert_workspace_plan<T>(p, s, rows);
  SY_EXPECTS(workspace.size() >= layout.bytes,
             concat("the expert workspace holds ", workspace.size(), " bytes; ", rows,
                    " rows need ", layout.bytes, " (expert_workspace_bytes)"));
  SY_EXPECTS(reinterpret_cast<std::uintptr_t>(workspace.data()) % alignof(T) == 0,
             "the expert workspace must be aligned for the element type");
  return layout;
}

template <class T>
T* region(std::span<std::byte> ws, std::size_t offset) {
  return reinterpret_cast<T*>(ws.data() + offset);
}

/// rows [r0, r0+n) of c [.][n_cols] = the bias row b (so that a GEMM with beta = 1 adds to it).
template <class T>
void fill_rows(T* c, index_t n, index_t n_cols, const T* b) {
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n_cols; ++j) c[i * n_cols + j] = b[j];
}

/// g[j] += Σ_i m[i][j] over n rows, in row order (deterministic).
template <class T>
void add_column_sums(T* g, const T* m, index_t n, index_t n_cols) {
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n_cols; ++j) g[j] += m[i * n_cols + j];
}

template <ExpertPolicy P, class T>
void expert_forward_host(P p, const expert_shape& s, const expert_weights<T>& w,
                         matrix_view<const T> x, std::span<const index_t> offsets, matrix_view<T> y,
                         std::span<std::byte> workspace, const expert_options& opt) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "the host backend computes in float or double");
  const index_t H = s.hidden, F = s.ffn_hidden, F1 = P::fc1_multiplier * F;
  const index_t R = x.extent(0);
  const auto layout = check_call<T>(p, s, offsets, R, workspace);
  check_expert_tensors(s, F1, w, "weights");
  SY_EXPECTS(x.extent(1) == H && y.extent(0) == R && y.extent(1) == H,
             concat("x and y must be [R][H] = [", R, "][", H, "]; got x [", x.extent(0), "][",
                    x.extent(1), "], y [", y.extent(0), "][", y.extent(1), "]"));
  T* pre = region<T>(workspace, layout.pre_offset);
  T* act = region<T>(workspace, layout.act_offset);
  const host_gemm impl = resolve_host_gemm(opt.gemm);

  // Each product is one batch over the experts (their GEMMs share the threads).
  std::vector<gemm_call<T>> calls;
  for_each_expert_rows(offsets, [&](index_t e, index_t r0, index_t n) {
    if (s.bias) fill_rows(pre + r0 * F1, n, F1, &w.fc1_bias(e, 0));
    calls.push_back({false, true, n, F1, H, T(1), x.data_handle() + r0 * H, H,
                     w.fc1.data_handle() + e * F1 * H, H, s.bias ? T(1) : T(0), pre + r0 * F1, F1});
  });
  gemms<T>(impl, calls);
  const auto& d = opt.dropout;
  const bool drop = d.active();
  exec::parallel_for(R, 8 * F, [&](index_t r) {
    for (index_t j = 0; j < F; ++j) {
      const T g = pre[r * F1 + j];
      const T l = P::gated ? pre[r * F1 + F + j] : T(0);
      act[r * F + j] =
          hidden_value<P>(g, l) * dropout_factor<T>(drop, d.p, d.seed, d.step,
                                                    d.row_offset + static_cast<std::uint64_t>(r),
                                                    static_cast<std::uint64_t>(j));
    }
  });
  calls.clear();
  for_each_expert_rows(offsets, [&](index_t e, index_t r0, index_t n) {
    if (s.bias) fill_rows(y.data_handle() + r0 * H, n, H, &w.fc2_bias(e, 0));
    calls.push_back({false, true, n, H, F, T(1), act + r0 * F, F, w.fc2.data_handle() + e * H * F,
                     F, s.bias ? T(1) : T(0), y.data_handle() + r0 * H, H});
  });
  gemms<T>(impl, calls);
}

template <ExpertPolicy P, class T>
void expert_backward_host(P p, const expert_shape& s, const expert_weights<T>& w,
                          matrix_view<const T> x, std::span<const index_t> offsets,
                          matrix_view<const T> dy, matrix_view<T> dx, const expert_grads<T>& g,
                          std::span<std::byte> workspace, const expert_options& opt) {
  const index_t H = s.hidden, F = s.ffn_hidden, F1 = P::fc1_multiplier * F;
  const index_t R = x.extent(0);
  const auto layout = check_call<T>(p, s, offsets, R, workspace);
  check_expert_tensors(s, F1, w, "weights");
  check_expert_tensors(s, F1, g, "grads");
  SY_EXPECTS(x.extent(1) == H && dy.extent(0) == R && dy.extent(1) == H && dx.extent(0) == R &&
                 dx.extent(1) == H,
             concat("x, dy and dx must be [R][H] = [", R, "][", H, "]"));
  T* pre = region<T>(workspace, layout.pre_offset);
  T* act = region<T>(workspace, layout.act_offset);
  const host_gemm impl = resolve_host_gemm(opt.gemm);
  const T* dyp = dy.data_handle();

  // fc2: dW2_e += dy_eᵀ·a_e, db2_e += Σ dy_e, then d a_e = dy_e·W2_e overwrites a_e (a second
  // batch: it must not start before every dW2_e has read a_e). Each batch runs the experts'
  // GEMMs side by side.
  std::vector<gemm_call<T>> weight_calls, data_calls;
  for_each_expert_rows(offsets, [&](index_t e, index_t r0, index_t n) {
    weight_calls.push_back({true, false, H, F, n, T(1), dyp + r0 * H, H, act + r0 * F, F, T(1),
                            g.fc2.data_handle() + e * H * F, F});
    if (s.bias) add_column_sums(&g.fc2_bias(e, 0), dyp + r0 * H, n, H);
    data_calls.push_back({false, false, n, F, H, T(1), dyp + r0 * H, H,
                          w.fc2.data_handle() + e * H * F, F, T(0), act + r0 * F, F});
  });
  gemms<T>(impl, weight_calls);
  gemms<T>(impl, data_calls);
  // Through dropout and the activation: d h overwrites h (each element reads only its own g, l).
  const auto& d = opt.dropout;
  const bool drop = d.active();
  exec::parallel_for(R, 8 * F, [&](index_t r) {
    for (index_t j = 0; j < F; ++j) {
      const T da = act[r * F + j] * dropout_factor<T>(drop, d.p, d.seed, d.step,
                                                      d.row_offset + static_cast<std::uint64_t>(r),
                                                      static_cast<std::uint64_t>(j));
      T dg{}, dl{};
      hidden_grad<P>(da, pre[r * F1 + j], P::gated ? pre[r * F1 + F + j] : T(0), dg, dl);
      pre[r * F1 + j] = dg;
      if constexpr (P::gated) pre[r * F1 + F + j] = dl;
    }
  });
  // fc1: dW1_e += dh_eᵀ·x_e, db1_e += Σ dh_e, dx_e = dh_e·W1_e: both only read dh, one batch.
  weight_calls.clear();
  for_each_expert_rows(offsets, [&](index_t e, index_t r0, index_t n) {
    weight_calls.push_back({true, false, F1, H, n, T(1), pre + r0 * F1, F1,
                            x.data_handle() + r0 * H, H, T(1), g.fc1.data_handle() + e * F1 * H,
                            H});
    if (s.bias) add_column_sums(&g.fc1_bias(e, 0), pre + r0 * F1, n, F1);
    weight_calls.push_back({false, false, n, H, F1, T(1), pre + r0 * F1, F1,
                            w.fc1.data_handle() + e * F1 * H, H, T(0), dx.data_handle() + r0 * H,
                            H});
  });
  gemms<T>(impl, weight_calls);
}

}  // namespace switchyard::detail
