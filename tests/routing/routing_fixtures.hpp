#pragma once
// Shared inputs of the routing tests: the golden logits of REFERENCE §7, seeded random logits,
// and a loss L(z) = Σ g·p + losses used by the finite-difference checks.
#include <cstdint>
#include <random>
#include <vector>

#include "switchyard/routing.hpp"

namespace sy_test {

namespace sy = switchyard;

inline constexpr sy::index_t golden_T = 6, golden_E = 4;
inline const std::vector<double> golden_logits = {
    1.0, 0.5, -0.3, 2.0, 0.2, 1.7, 0.9, -1.0, -0.4, 0.1, 1.3, 0.8,
    2.2, -0.6, 0.4, 1.1, 0.0, 0.3, 0.6, 0.9, 1.5, 1.4, -2.0, 0.05};

template <class T>
std::vector<T> golden() {
  return std::vector<T>(golden_logits.begin(), golden_logits.end());
}

/// Normal(0, scale) logits; distinct with probability 1, gaps ≫ the FD step.
template <class T>
std::vector<T> random_logits(std::uint64_t seed, sy::index_t n, double scale = 1.5) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<T>(d(g));
  return v;
}

template <class T>
sy::matrix_view<const T> cview(const std::vector<T>& v, sy::index_t rows, sy::index_t cols) {
  return sy::matrix_view<const T>(v.data(), rows, cols);
}
template <class T>
sy::matrix_view<T> mview(std::vector<T>& v, sy::index_t rows, sy::index_t cols) {
  return sy::matrix_view<T>(v.data(), rows, cols);
}

/// L(z) = Σ_t Σ_j g[t,j]·p[t,j](z) + aux + z-loss, with the selection frozen to `frozen`'s
/// indices (the FD step must not change it; the check asserts that it does not).
template <class Router>
double objective(const Router& r, const std::vector<double>& z, sy::index_t T,
                 const std::vector<double>& g, const std::vector<std::int32_t>* frozen,
                 bool* same_selection, sy::RouteContext ctx = {}) {
  const auto out = r.forward(sy::exec::Host{}, cview(z, T, r.num_experts()), ctx);
  if (frozen && *frozen != out.topk_indices) *same_selection = false;
  double L = 0;
  for (std::size_t i = 0; i < g.size(); ++i) L += g[i] * out.topk_probs[i];
  return L + out.aux_loss.value_or(0.0) + out.z_loss.value_or(0.0);
}

/// Max over entries of |fd - analytic| divided by max |analytic| (a norm-wise relative error).
template <class Router>
double fd_relative_error(const Router& r, const std::vector<double>& z, sy::index_t T,
                         std::uint64_t seed) {
  const sy::index_t E = r.num_experts();
  const int K = Router::k;
  const auto g = random_logits<double>(seed ^ 0x9e37, T * K, 1.0);
  const auto out = r.forward(sy::exec::Host{}, cview(z, T, E));
  std::vector<double> dz(static_cast<std::size_t>(T * E));
  r.backward(sy::exec::Host{}, out, cview(g, T, K), mview(dz, T, E));
  // Central differences: truncation O(h²) ~ 1e-12, rounding ~ 1e-16/h ~ 1e-10.
  const double h = 1e-6;
  double max_err = 0, max_ref = 1e-300;
  for (std::size_t i = 0; i < z.size(); ++i) {
    auto zp = z, zm = z;
    zp[i] += h;
    zm[i] -= h;
    bool same = true;
    const double fd = (objective(r, zp, T, g, &out.topk_indices, &same) -
                       objective(r, zm, T, g, &out.topk_indices, &same)) /
                      (2 * h);
    if (!same) throw std::runtime_error("finite-difference step changed the selection");
    max_err = std::max(max_err, std::abs(fd - dz[i]));
    max_ref = std::max(max_ref, std::abs(dz[i]));
  }
  return max_err / max_ref;
}

}  // namespace sy_test
