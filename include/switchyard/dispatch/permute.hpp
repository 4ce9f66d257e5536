#pragma once
/// \file permute / unpermute and their backward passes on the host (REFERENCE §6, §8). The CUDA
/// versions are in permute.cuh. The combine accumulates in fp32 (double for double data).

#include <cstdint>
#include <type_traits>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/exec/host.hpp"

namespace switchyard {

/// Accumulation type of a storage type: double for double, else float.
template <class T>
using accum_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

namespace detail {
inline void check_rows(const DispatchPlan& plan, std::int64_t rows, std::int64_t H,
                       std::int64_t h_expected, const char* what) {
  SY_EXPECTS(rows == plan.rows() && H == h_expected,
             concat(what, " is [", rows, ", ", H, "] but the plan has ", plan.rows(),
                    " rows of width ", h_expected));
}
inline void check_tokens(const DispatchPlan& plan, std::int64_t T, const char* what) {
  SY_EXPECTS(T == plan.num_tokens,
             concat(what, " has ", T, " tokens but the plan was built for ", plan.num_tokens));
}
}  // namespace detail

/// rows[route_row[t,j]] = x[t] for every kept route; padding rows are zero. x [T,H] is read once
/// per token and written to each of its copies.
template <class T>
void permute(exec::Host, const DispatchPlan& plan, matrix_view<const T> x, matrix_view<T> rows) {
  const std::int64_t H = x.extent(1), k = plan.top_k;
  detail::check_tokens(plan, x.extent(0), "x");
  detail::check_rows(plan, rows.extent(0), rows.extent(1), H, "rows");
  for (std::int64_t r = 0; r < plan.rows(); ++r)
    if (plan.row_route[static_cast<std::size_t>(r)] < 0)
      for (std::int64_t h = 0; h < H; ++h) rows(r, h) = T(0);
  for (std::int64_t t = 0; t < plan.num_tokens; ++t) {
    const T* src = &x(t, 0);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t r = plan.route_row[static_cast<std::size_t>(t * k + j)];
      if (r < 0) continue;
      T* dst = &rows(r, 0);
      for (std::int64_t h = 0; h < H; ++h) dst[h] = src[h];
    }
  }
}

/// dx[t] = Σ_j d_rows[route_row[t,j]] over kept routes (the backward of permute); dropped
/// routes contribute 0.
template <class T>
void permute_backward(exec::Host, const DispatchPlan& plan, matrix_view<const T> d_rows,
                      matrix_view<T> dx) {
  const std::int64_t H = dx.extent(1), k = plan.top_k;
  detail::check_tokens(plan, dx.extent(0), "dx");
  detail::check_rows(plan, d_rows.extent(0), d_rows.extent(1), H, "d_rows");
  for (std::int64_t t = 0; t < plan.num_tokens; ++t) {
    T* dst = &dx(t, 0);
    for (std::int64_t h = 0; h < H; ++h) {
      accum_t<T> acc = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        const std::int64_t r = plan.route_row[static_cast<std::size_t>(t * k + j)];
        if (r >= 0) acc += static_cast<accum_t<T>>(d_rows(r, h));
      }
      dst[h] = static_cast<T>(acc);
    }
  }
}

/// y[t] = Σ_j prob[t,j] · rows[route_row[t,j]] over kept routes, accumulated in accum_t<T>;
/// a token whose routes are all dropped gets 0 (the caller's residual carries it).
template <class T, class P>
void unpermute(exec::Host, const DispatchPlan& plan, matrix_view<const T> rows,
               matrix_view<const P> prob, matrix_view<T> y) {
  const std::int64_t H = y.extent(1), k = plan.top_k;
  detail::check_tokens(plan, y.extent(0), "y");
  detail::check_tokens(plan, prob.extent(0), "prob");
  detail::check_rows(plan, rows.extent(0), rows.extent(1), H, "rows");
  for (std::int64_t t = 0; t < plan.num_tokens; ++t) {
    T* dst = &y(t, 0);
    for (std::int64_t h = 0; h < H; ++h) {
      accum_t<T> acc = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        const std::int64_t r = plan.route_row[static_cast<std::size_t>(t * k + j)];
        if (r >= 0)
          acc += static_cast<accum_t<T>>(prob(t, j)) * static_cast<accum_t<T>>(rows(r, h));
      }
      dst[h] = static_cast<T>(acc);
    }
  }
}

/// Backward of unpermute: d_rows[r] = prob[t,j] · dy[t] for the route (t,j) of row r (0 for
/// padding rows) and d_prob[t,j] = <dy[t], rows[r]> (0 for dropped routes).
template <class T, class P>
void unpermute_backward(exec::Host, const DispatchPlan& plan, matrix_view<const T> rows,
                        matrix_view<const P> prob, matrix_view<const T> dy,
                        matrix_view<T> d_rows, matrix_view<P> d_prob) {
  const std::int64_t H = dy.extent(1), k = plan.top_k;
  detail::check_tokens(plan, dy.extent(0), "dy");
  detail::check_rows(plan, rows.extent(0), rows.extent(1), H, "rows");
  detail::check_rows(plan, d_rows.extent(0), d_rows.extent(1), H, "d_rows");
  for (std::int64_t r = 0; r < plan.rows(); ++r) {
    const std::int64_t route = plan.row_route[static_cast<std::size_t>(r)];
    T* dst = &d_rows(r, 0);
    if (route < 0) {
      for (std::int64_t h = 0; h < H; ++h) dst[h] = T(0);
      continue;
    }
    const auto p = static_cast<accum_t<T>>(prob(route / k, route % k));
    const T* g = &dy(route / k, 0);
    for (std::int64_t h = 0; h < H; ++h) dst[h] = static_cast<T>(p * static_cast<accum_t<T>>(g[h]));
  }
  for (std::int64_t t = 0; t < plan.num_tokens; ++t)
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t r = plan.route_row[static_cast<std::size_t>(t * k + j)];
      accum_t<P> acc = 0;
      if (r >= 0)
        for (std::int64_t h = 0; h < H; ++h)
          acc += static_cast<accum_t<P>>(dy(t, h)) * static_cast<accum_t<P>>(rows(r, h));
      d_prob(t, j) = static_cast<P>(acc);
    }
}

}  // namespace switchyard
