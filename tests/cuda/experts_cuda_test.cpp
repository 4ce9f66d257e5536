// CUDA experts against the host backend (double) on the same inputs: fp32 tight, bf16/fp16 within
// 1e-2 relative; uneven rows with empty experts (per-expert cuBLAS over side streams) and equal
// rows (strided batched).
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

#include "experts_device.hpp"
#include "switchyard/experts.hpp"

namespace sy = switchyard;
using sy::index_t;
using sy::test::storage;

namespace {

sy::test::device_expert_io make_io(sy::Activation act, bool gated, bool bias,
                                   std::vector<index_t> counts, storage st, std::uint64_t seed) {
  sy::test::device_expert_io io;
  io.activation = act;
  io.gated = gated;
  const index_t E = static_cast<index_t>(counts.size()), H = 64, F = 48;
  io.shape = {E, H, F, bias};
  io.offsets = {0};
  for (index_t c : counts) io.offsets.push_back(io.offsets.back() + c);
  const index_t R = io.offsets.back(), F1 = (gated ? 2 : 1) * F;
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto fill = [&](std::vector<float>& v, index_t n, float scale) {
    v.resize(static_cast<std::size_t>(n));
    for (auto& a : v) a = scale * u(gen);
    v = sy::test::round_to_storage(v, st);  // the host sees exactly what the device stores
  };
  fill(io.fc1, E * F1 * H, 1.0f / std::sqrt(float(H)));
  fill(io.fc2, E * H * F, 1.0f / std::sqrt(float(F)));
  fill(io.b1, bias ? E * F1 : 0, 0.5f);
  fill(io.b2, bias ? E * H : 0, 0.5f);
  fill(io.x, R * H, 1.0f);
  fill(io.dy, R * H, 1.0f);
  return io;
}

std::vector<double> to_d(const std::vector<float>& v) {
  return {v.begin(), v.end()};
}

/// The host backend in double on the io's inputs.
sy::test::device_expert_out host_run(const sy::test::device_expert_io& io) {
  return sy::visit_expert_policy(io.activation, io.gated, [&](auto p) {
    using P = decltype(p);
    const auto& s = io.shape;
    const index_t E = s.num_experts, H = s.hidden, F = s.ffn_hidden, F1 = P::fc1_multiplier * F;
    const index_t R = io.offsets.back();
    const auto fc1 = to_d(io.fc1), fc2 = to_d(io.fc2), b1 = to_d(io.b1), b2 = to_d(io.b2),
               x = to_d(io.x), dy = to_d(io.dy);
    std::vector<double> y(static_cast<std::size_t>(R * H)), dx(y.size()),
        g1(static_cast<std::size_t>(E * F1 * H)), g2(static_cast<std::size_t>(E * H * F)),
        gb1(b1.size()), gb2(b2.size());
    std::vector<std::byte> ws(sy::expert_workspace_bytes<double>(p, s, R));
    const sy::expert_weights<double> w{
        sy::tensor3_view<const double>(fc1.data(), E, F1, H),
        sy::tensor3_view<const double>(fc2.data(), E, H, F),
        s.bias ? sy::matrix_view<const double>(b1.data(), E, F1) : sy::matrix_view<const double>(),
        s.bias ? sy::matrix_view<const double>(b2.data(), E, H) : sy::matrix_view<const double>()};
    const sy::expert_grads<double> g{
        sy::tensor3_view<double>(g1.data(), E, F1, H), sy::tensor3_view<double>(g2.data(), E, H, F),
        s.bias ? sy::matrix_view<double>(gb1.data(), E, F1) : sy::matrix_view<double>(),
        s.bias ? sy::matrix_view<double>(gb2.data(), E, H) : sy::matrix_view<double>()};
    const sy::expert_options opt{.dropout = io.dropout, .gemm = sy::host_gemm::automatic};
    const std::span<const index_t> off(io.offsets);
    sy::expert_forward(p, sy::exec::Host{}, s, w, sy::matrix_view<const double>(x.data(), R, H),
                       off, sy::matrix_view<double>(y.data(), R, H), ws, opt);
    sy::expert_backward(p, sy::exec::Host{}, s, w, sy::matrix_view<const double>(x.data(), R, H),
                        off, sy::matrix_view<const double>(dy.data(), R, H),
                        sy::matrix_view<double>(dx.data(), R, H), g, ws, opt);
    auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
    return sy::test::device_expert_out{f(y), f(dx), f(g1), f(g2), f(gb1), f(gb2)};
  });
}

/// ‖a − b‖ / ‖b‖ (norm-wise: robust where single elements cancel to near zero).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  BOOST_REQUIRE_EQUAL(a.size(), b.size());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
    den += double(b[i]) * double(b[i]);
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

void compare(const sy::test::device_expert_out& dev, const sy::test::device_expert_out& host,
             double tol) {
  BOOST_TEST(rel_err(dev.y, host.y) < tol);
  BOOST_TEST(rel_err(dev.dx, host.dx) < tol);
  BOOST_TEST(rel_err(dev.g_fc1, host.g_fc1) < tol);
  BOOST_TEST(rel_err(dev.g_fc2, host.g_fc2) < tol);
  BOOST_TEST(rel_err(dev.g_b1, host.g_b1) < tol);
  BOOST_TEST(rel_err(dev.g_b2, host.g_b2) < tol);
}

const std::vector<index_t> uneven = {0, 37, 5, 0, 64, 1, 19, 0};
const std::vector<index_t> equal = {24, 24, 24, 24, 24};

}  // namespace

// fp32 storage, fp32 accumulation (CUBLAS_COMPUTE_32F, no TF32): sums of ≤ 96 terms, so 1e-5.
BOOST_AUTO_TEST_CASE(cuda_experts_match_host_in_fp32) {
  for (auto act : {sy::Activation::gelu, sy::Activation::gelu_tanh, sy::Activation::relu,
                   sy::Activation::silu})
    for (bool gated : {false, true})
      for (bool bias : {false, true})
        for (const auto* counts : {&uneven, &equal}) {
          BOOST_TEST_CONTEXT("act " << int(act) << " gated " << gated << " bias " << bias
                                    << " rows " << (counts == &uneven ? "uneven" : "equal")) {
            const auto io = make_io(act, gated, bias, *counts, storage::f32, 5);
            compare(sy::test::device_expert_run(io, storage::f32, false, 3), host_run(io), 1e-5);
          }
        }
}

// bf16 storage of the activations kept between the GEMMs (8-bit mantissa, 2⁻⁹ relative
// rounding) with fp32 accumulation: 1e-2 relative (CONVENTIONS).
BOOST_AUTO_TEST_CASE(cuda_experts_match_host_in_bf16_and_fp16) {
  for (storage st : {storage::bf16, storage::f16})
    for (bool grads_in_storage : {false, true})
      for (const auto* counts : {&uneven, &equal}) {
        BOOST_TEST_CONTEXT("storage " << int(st) << " grads in storage " << grads_in_storage) {
          const auto io = make_io(sy::Activation::silu, true, true, *counts, st, 9);
          compare(sy::test::device_expert_run(io, st, grads_in_storage, 4), host_run(io), 1e-2);
          const auto io2 = make_io(sy::Activation::gelu, false, false, *counts, st, 10);
          compare(sy::test::device_expert_run(io2, st, grads_in_storage, 2), host_run(io2), 1e-2);
        }
      }
}

// The device draws the same Philox dropout mask as the host.
BOOST_AUTO_TEST_CASE(cuda_expert_dropout_matches_host) {
  auto io = make_io(sy::Activation::gelu_tanh, true, true, uneven, storage::f32, 12);
  io.dropout = {.p = 0.25, .seed = 77, .step = 3, .training = true};
  compare(sy::test::device_expert_run(io, storage::f32, false, 4), host_run(io), 1e-5);
}

BOOST_AUTO_TEST_CASE(cuda_grouped_gemm_matches_host) {
  const index_t E = 4, N = 40, K = 24;
  const std::vector<index_t> off = {0, 0, 17, 18, 50};
  std::vector<float> a(50 * K), b(E * N * K), c(50 * N);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.1f * float(i));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::cos(0.07f * float(i));
  for (std::size_t i = 0; i < c.size(); ++i) c[i] = 0.5f;
  const auto dev = sy::test::device_grouped_gemm(off, a, b, c, E, N, K);
  sy::grouped_gemm(sy::exec::Host{}, std::span<const index_t>(off),
                   sy::matrix_view<const float>(a.data(), 50, K),
                   sy::tensor3_view<const float>(b.data(), E, N, K),
                   sy::matrix_view<float>(c.data(), 50, N), 1.0f);
  BOOST_TEST(rel_err(dev, c) < 1e-5);
}
