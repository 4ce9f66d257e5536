#pragma once
/// \file permute / unpermute and their backward passes on the host (REFERENCE §6, §8). The CUDA
/// versions are in permute.cuh. The combine accumulates in fp32 (double for double data).
/// Tokens (or rows) run on threads; each output row is written by one thread, with the
/// additions of a row in route order, so the result does not depend on the thread count.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "switchyard/core/error.hpp"
#include "switchyard/core/mdspan.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/exec/host.hpp"
#include "switchyard/exec/parallel.hpp"

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

/// dst[h] = Σ_j weight(j) · rows[route_row[t,j]][h] over the kept routes j of token t, in route
/// order, accumulated in accum_t<T> over blocks of columns so that the inner loop over h
/// vectorises (the same additions per element as a scalar loop: no reassociation).
template <class T, class Weight>
void combine_row(const DispatchPlan& plan, std::int64_t t, matrix_view<const T> rows,
                 Weight weight, T* dst) {
  using A = accum_t<T>;
  constexpr std::int64_t block = 256;
  const std::int64_t H = rows.extent(1), k = plan.top_k;
  A acc[block];
  for (std::int64_t h0 = 0; h0 < H; h0 += block) {
    const std::int64_t nb = std::min(block, H - h0);
    for (std::int64_t h = 0; h < nb; ++h) acc[h] = A(0);
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t r = plan.route_row[static_cast<std::size_t>(t * k + j)];
      if (r < 0) continue;
      const A w = weight(j);
      const T* src = rows.data_handle() + r * H + h0;
      for (std::int64_t h = 0; h < nb; ++h) acc[h] += w * static_cast<A>(src[h]);
    }
    for (std::int64_t h = 0; h < nb; ++h) dst[h0 + h] = static_cast<T>(acc[h]);
  }
}
}  // namespace detail

/// rows[route_row[t,j]] = x[t] for every kept route; padding rows are zero. x [T,H] is read once
/// per token and written to each of its copies.
template <class T>
void permute(exec::Host, const DispatchPlan& plan, matrix_view<const T> x, matrix_view<T> rows) {
  const std::int64_t H = x.extent(1), k = plan.top_k;
  detail::check_tokens(plan, x.extent(0), "x");
  detail::check_rows(plan, rows.extent(0), rows.extent(1), H, "rows");
  // Each row has one writer: its token's copy, or zeros for a padding row.
  exec::parallel_for(plan.rows(), H, [&](std::int64_t r) {
    const std::int64_t route = plan.row_route[static_cast<std::size_t>(r)];
    T* dst = &rows(r, 0);
    if (route < 0)
      std::fill(dst, dst + H, T(0));
    else
      std::copy(&x(route / k, 0), &x(route / k, 0) + H, dst);
  });
}

/// dx[t] = Σ_j d_rows[route_row[t,j]] over kept routes (the backward of permute); dropped
/// routes contribute 0.
template <class T>
void permute_backward(exec::Host, const DispatchPlan& plan, matrix_view<const T> d_rows,
                      matrix_view<T> dx) {
  const std::int64_t H = dx.extent(1), k = plan.top_k;
  detail::check_tokens(plan, dx.extent(0), "dx");
  detail::check_rows(plan, d_rows.extent(0), d_rows.extent(1), H, "d_rows");
  // Adding 1·d_rows is exact, so this is the plain sum of the copies in route order.
  exec::parallel_for(plan.num_tokens, k * H, [&](std::int64_t t) {
    detail::combine_row(plan, t, d_rows, [](std::int64_t) { return accum_t<T>(1); }, &dx(t, 0));
  });
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
  exec::parallel_for(plan.num_tokens, k * H, [&](std::int64_t t) {
    detail::combine_row(
        plan, t, rows, [&](std::int64_t j) { return static_cast<accum_t<T>>(prob(t, j)); },
        &y(t, 0));
  });
}

/// Backward of unpermute: d_prob[t,j] = <dy[t], rows[r]> (0 for dropped routes), then
/// d_rows[r] = prob[t,j] · dy[t] for the route (t,j) of row r (0 for padding rows). d_rows may be
/// the same memory as rows (d_prob is complete before any row is overwritten): the layer's
/// backward reuses the expert outputs' buffer.
template <class T, class P>
void unpermute_backward(exec::Host, const DispatchPlan& plan, matrix_view<const T> rows,
                        matrix_view<const P> prob, matrix_view<const T> dy,
                        matrix_view<T> d_rows, matrix_view<P> d_prob) {
  const std::int64_t H = dy.extent(1), k = plan.top_k;
  detail::check_tokens(plan, dy.extent(0), "dy");
  detail::check_rows(plan, rows.extent(0), rows.extent(1), H, "rows");
  detail::check_rows(plan, d_rows.extent(0), d_rows.extent(1), H, "d_rows");
  // d prob: one serial dot product per route (the order of its additions is fixed).
  exec::parallel_for(plan.num_tokens, k * H, [&](std::int64_t t) {
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t r = plan.route_row[static_cast<std::size_t>(t * k + j)];
      accum_t<P> acc = 0;
      if (r >= 0)
        for (std::int64_t h = 0; h < H; ++h)
          acc += static_cast<accum_t<P>>(dy(t, h)) * static_cast<accum_t<P>>(rows(r, h));
      d_prob(t, j) = static_cast<P>(acc);
    }
  });
  exec::parallel_for(plan.rows(), H, [&](std::int64_t r) {
    const std::int64_t route = plan.row_route[static_cast<std::size_t>(r)];
    T* dst = &d_rows(r, 0);
    if (route < 0) {
      std::fill(dst, dst + H, T(0));
      return;
    }
    const auto p = static_cast<accum_t<T>>(prob(route / k, route % k));
    const T* g = &dy(route / k, 0);
    for (std::int64_t h = 0; h < H; ++h) dst[h] = static_cast<T>(p * static_cast<accum_t<T>>(g[h]));
  });
}

}  // namespace switchyard
