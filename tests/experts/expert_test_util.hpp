#pragma once
// A random expert problem (weights, rows, offsets) and a naive per-row reference, shared by the
// experts tests.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "switchyard/experts.hpp"

namespace sy_test {

namespace sy = switchyard;
using sy::index_t;

template <class T>
struct expert_problem {
  sy::expert_shape shape;
  index_t f1 = 0, rows = 0;
  std::vector<index_t> offsets;
  std::vector<T> fc1, fc2, b1, b2, x, dy;

  template <sy::ExpertPolicy P>
  expert_problem(P, index_t E, index_t H, index_t F, bool bias, std::vector<index_t> counts,
                 std::uint64_t seed)
      : shape{E, H, F, bias}, f1(P::fc1_multiplier * F) {
    offsets.assign(1, 0);
    for (index_t c : counts) offsets.push_back(offsets.back() + c);
    rows = offsets.back();
    std::mt19937_64 gen(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    auto fill = [&](std::vector<T>& v, std::size_t n, double scale) {
      v.resize(n);
      for (auto& a : v) a = static_cast<T>(scale * u(gen));
    };
    fill(fc1, static_cast<std::size_t>(E * f1 * H), 1.0 / std::sqrt(double(H)));
    fill(fc2, static_cast<std::size_t>(E * H * F), 1.0 / std::sqrt(double(F)));
    fill(b1, bias ? static_cast<std::size_t>(E * f1) : 0, 0.5);
    fill(b2, bias ? static_cast<std::size_t>(E * H) : 0, 0.5);
    fill(x, static_cast<std::size_t>(rows * H), 1.5);
    fill(dy, static_cast<std::size_t>(rows * H), 1.0);
  }

  sy::expert_weights<T> weights() const {
    const auto E = shape.num_experts, H = shape.hidden, F = shape.ffn_hidden;
    return {sy::tensor3_view<const T>(fc1.data(), E, f1, H),
            sy::tensor3_view<const T>(fc2.data(), E, H, F),
            shape.bias ? sy::matrix_view<const T>(b1.data(), E, f1) : sy::matrix_view<const T>(),
            shape.bias ? sy::matrix_view<const T>(b2.data(), E, H) : sy::matrix_view<const T>()};
  }
  sy::matrix_view<const T> xv() const {
    return sy::matrix_view<const T>(x.data(), rows, shape.hidden);
  }
  sy::matrix_view<const T> dyv() const {
    return sy::matrix_view<const T>(dy.data(), rows, shape.hidden);
  }
};

/// Gradient buffers of a problem's shape, zero.
template <class T>
struct expert_grad_buffers {
  std::vector<T> fc1, fc2, b1, b2;
  sy::expert_shape shape;
  index_t f1;
  expert_grad_buffers(const sy::expert_shape& s, index_t f1_)
      : fc1(static_cast<std::size_t>(s.num_experts * f1_ * s.hidden)),
        fc2(static_cast<std::size_t>(s.num_experts * s.hidden * s.ffn_hidden)),
        b1(s.bias ? static_cast<std::size_t>(s.num_experts * f1_) : 0),
        b2(s.bias ? static_cast<std::size_t>(s.num_experts * s.hidden) : 0),
        shape(s),
        f1(f1_) {}
  sy::expert_grads<T> views() {
    const auto E = shape.num_experts, H = shape.hidden, F = shape.ffn_hidden;
    return {sy::tensor3_view<T>(fc1.data(), E, f1, H), sy::tensor3_view<T>(fc2.data(), E, H, F),
            shape.bias ? sy::matrix_view<T>(b1.data(), E, f1) : sy::matrix_view<T>(),
            shape.bias ? sy::matrix_view<T>(b2.data(), E, H) : sy::matrix_view<T>()};
  }
};

/// Naive reference in double: for every row, find its expert and apply the formula of
/// REFERENCE §6 with explicit loops (no GEMM, no workspace), dropout included.
template <sy::ExpertPolicy P, class T>
std::vector<double> reference_forward(const expert_problem<T>& p,
                                      const sy::expert_dropout& d = {}) {
  using A = typename P::activation;
  const index_t H = p.shape.hidden, F = p.shape.ffn_hidden, f1 = p.f1;
  std::vector<double> y(static_cast<std::size_t>(p.rows * H));
  std::vector<double> a(static_cast<std::size_t>(F));
  for (index_t e = 0; e < p.shape.num_experts; ++e)
    for (index_t r = p.offsets[e]; r < p.offsets[e + 1]; ++r) {
      auto pre = [&](index_t j) {
        double s = p.shape.bias ? double(p.b1[e * f1 + j]) : 0.0;
        for (index_t c = 0; c < H; ++c)
          s += double(p.fc1[(e * f1 + j) * H + c]) * double(p.x[r * H + c]);
        return s;
      };
      for (index_t j = 0; j < F; ++j) {
        double v = A::value(pre(j));
        if constexpr (P::gated) v *= pre(F + j);
        if (d.active())
          v = sy::dropout_keep(d.seed, d.step, std::uint64_t(r), std::uint64_t(j), float(d.p))
                  ? v / (1.0 - d.p)
                  : 0.0;
        a[j] = v;
      }
      for (index_t o = 0; o < H; ++o) {
        double s = p.shape.bias ? double(p.b2[e * H + o]) : 0.0;
        for (index_t j = 0; j < F; ++j) s += double(p.fc2[(e * H + o) * F + j]) * a[j];
        y[r * H + o] = s;
      }
    }
  return y;
}

/// Runs the host forward; returns y.
template <sy::ExpertPolicy P, class T>
std::vector<T> run_forward(const expert_problem<T>& p, std::vector<std::byte>& ws,
                           const sy::expert_options& opt = {}) {
  std::vector<T> y(static_cast<std::size_t>(p.rows * p.shape.hidden), T(-7));
  ws.assign(sy::expert_workspace_bytes<T>(P{}, p.shape, p.rows), std::byte{0});
  sy::expert_forward(P{}, sy::exec::Host{}, p.shape, p.weights(), p.xv(), p.offsets,
                     sy::matrix_view<T>(y.data(), p.rows, p.shape.hidden), ws, opt);
  return y;
}

/// max |a − b| / max(1, max |b|).
template <class A, class B>
double max_rel_diff(const std::vector<A>& a, const std::vector<B>& b) {
  double num = 0, den = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return a.size() == b.size() ? num / den : 1e300;
}

using all_policies =
    std::tuple<sy::FFN<sy::GeLU>, sy::FFN<sy::GeLUTanh>, sy::FFN<sy::ReLU>, sy::FFN<sy::SiLU>,
               sy::GLU<sy::GeLU>, sy::GLU<sy::GeLUTanh>, sy::GLU<sy::ReLU>, sy::GLU<sy::SiLU>>;

}  // namespace sy_test
