// Host grouped GEMM of the experts (x_e·W_eᵀ per expert over uneven rows) beside one GEMM of the
// same FLOPs through the same BLAS, and the whole SwiGLU expert forward and backward. Counters:
// GFLOP/s (2·M·N·K per GEMM). Args({shape, T}) as bench_layer: shape 0 Mixtral-like (E 8,
// H 1024, F 3584, k 2), shape 1 DeepSeek-like (E 64, H 1024, F 256, k 6); R = T·k rows; the GEMM
// is the SwiGLU fc1, [R][H]·[2F][H]ᵀ.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "switchyard/experts.hpp"

namespace sy = switchyard;
using sy::index_t;

namespace {

/// Rows per expert summing to `total`, uneven as routing makes them: expert e gets a share
/// proportional to 1 + (e·7 mod 5) (so some get 5× others), the rest goes to the last one.
std::vector<index_t> uneven_offsets(index_t experts, index_t total) {
  std::vector<index_t> w(static_cast<std::size_t>(experts));
  index_t sum = 0;
  for (index_t e = 0; e < experts; ++e) sum += w[e] = 1 + (e * 7) % 5;
  std::vector<index_t> off{0};
  for (index_t e = 0; e + 1 < experts; ++e) off.push_back(off.back() + total * w[e] / sum);
  off.push_back(total);
  return off;
}

std::vector<float> filled(std::size_t n, float scale) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * float(int(i * 2654435761u % 1000) - 500) / 500;
  return v;
}

struct Shape {
  index_t E, H, F, R;
};
Shape shape_of(const benchmark::State& state) {
  const index_t T = state.range(1);
  return state.range(0) == 0 ? Shape{8, 1024, 3584, 2 * T} : Shape{64, 1024, 256, 6 * T};
}
void label(benchmark::State& state) {
  state.SetLabel(std::string(state.range(0) == 0 ? "mixtral" : "deepseek") +
                 " T=" + std::to_string(state.range(1)));
}

void set_flops(benchmark::State& state, double flops) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP"] = flops * 1e-9;
}

// x [R][H] · fc1 [E][2F][H]ᵀ over uneven rows per expert.
void grouped_gemm(benchmark::State& state) {
  const auto [E, H, F1, R] = shape_of(state);
  const index_t F = 2 * F1;
  const auto off = uneven_offsets(E, R);
  const auto x = filled(std::size_t(R * H), 1.0f), w = filled(std::size_t(E * F * H), 0.03f);
  std::vector<float> y(std::size_t(R * F));
  for (auto _ : state) {
    sy::grouped_gemm(sy::exec::Host{}, std::span<const index_t>(off),
                     sy::matrix_view<const float>(x.data(), R, H),
                     sy::tensor3_view<const float>(w.data(), E, F, H),
                     sy::matrix_view<float>(y.data(), R, F));
    benchmark::DoNotOptimize(y.data());
  }
  set_flops(state, 2.0 * double(R) * double(F) * double(H));
  label(state);
}

// One [R][H]·[2F][H]ᵀ GEMM: the same FLOPs as grouped_gemm with the same arguments.
void single_gemm(benchmark::State& state) {
  const auto [E, H, F1, R] = shape_of(state);
  const index_t F = 2 * F1;
  const auto x = filled(std::size_t(R * H), 1.0f), w = filled(std::size_t(F * H), 0.03f);
  std::vector<float> y(std::size_t(R * F));
  for (auto _ : state) {
    sy::detail::gemm<float>(sy::host_gemm::automatic, false, true, R, F, H, 1.0f, x.data(), H,
                            w.data(), H, 0.0f, y.data(), F);
    benchmark::DoNotOptimize(y.data());
  }
  set_flops(state, 2.0 * double(R) * double(F) * double(H));
  label(state);
}

// SwiGLU forward (fc1 [2F][H], fc2 [H][F]) and backward (twice the forward GEMMs).
void swiglu_forward_backward(benchmark::State& state) {
  const auto [E, H, F, R] = shape_of(state);
  const sy::expert_shape s{E, H, F, false};
  const auto off = uneven_offsets(E, R);
  const auto x = filled(std::size_t(R * H), 1.0f), dy = filled(std::size_t(R * H), 1.0f);
  const auto fc1 = filled(std::size_t(E * 2 * F * H), 0.03f);
  const auto fc2 = filled(std::size_t(E * H * F), 0.03f);
  std::vector<float> y(std::size_t(R * H)), dx(y.size()), g1(fc1.size()), g2(fc2.size());
  std::vector<std::byte> ws(sy::expert_workspace_bytes<float>(sy::SwiGLU{}, s, R));
  const sy::expert_weights<float> w{sy::tensor3_view<const float>(fc1.data(), E, 2 * F, H),
                                    sy::tensor3_view<const float>(fc2.data(), E, H, F),
                                    {},
                                    {}};
  const sy::expert_grads<float> g{sy::tensor3_view<float>(g1.data(), E, 2 * F, H),
                                  sy::tensor3_view<float>(g2.data(), E, H, F),
                                  {},
                                  {}};
  for (auto _ : state) {
    sy::expert_forward(sy::SwiGLU{}, sy::exec::Host{}, s, w,
                       sy::matrix_view<const float>(x.data(), R, H), off,
                       sy::matrix_view<float>(y.data(), R, H), ws);
    sy::expert_backward(sy::SwiGLU{}, sy::exec::Host{}, s, w,
                        sy::matrix_view<const float>(x.data(), R, H), off,
                        sy::matrix_view<const float>(dy.data(), R, H),
                        sy::matrix_view<float>(dx.data(), R, H), g, ws);
    benchmark::DoNotOptimize(dx.data());
  }
  // forward 2·R·H·3F, backward 2× that.
  set_flops(state, 3.0 * 2.0 * double(R) * double(H) * 3.0 * double(F));
  label(state);
}

}  // namespace

void shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t shape : {0, 1})
    for (std::int64_t T : {256, 4096}) b->Args({shape, T});
  b->ArgNames({"shape", "T"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(grouped_gemm)->Apply(shapes);
BENCHMARK(single_gemm)->Apply(shapes);
BENCHMARK(swiglu_forward_backward)->Apply(shapes);
