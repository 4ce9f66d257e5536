// Routing kernels against the host backend on the same random inputs: T in {1, 7, 4096},
// E in {8, 64, 256}, every score function, k in {1, 2, 8}, groups, bias, losses, Sinkhorn, the
// router linear layer and jitter.
//
// Tolerances: the device computes in float with its own exp/log and a different summation order
// for pre-softmax's denominator; weights and probabilities agree to 1e-5 absolute (values ≤ 1,
// float eps 6e-8 times a few hundred terms), gradients to 1e-4 of their largest magnitude, loss
// values to 1e-5 relative (double reductions of float terms). Indices must be equal except where
// the two selection scores are equal within float rounding (a tie either side may break).
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "routing_device.hpp"
#include "switchyard/routing.hpp"

namespace sy = switchyard;
using sy::index_t;

namespace {

std::vector<float> random_vec(std::uint64_t seed, index_t n, double scale = 2.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<float>(d(g));
  return v;
}

// A token whose device selection differs from the host's passes only when the two choices are
// equally good within float rounding: by default the same multiset of weights (top-k scores);
// Sinkhorn passes the host plan, whose values at both choices must agree instead.
template <class Router>
void compare(const Router& host_router, const sy::test::device_routes& dev,
             const std::vector<float>& z, const std::vector<float>& g, index_t T,
             const std::string& what, sy::RouteContext ctx = {},
             const std::vector<float>* plan = nullptr) {
  const index_t E = host_router.num_experts();
  constexpr int K = Router::k;
  const auto host = host_router.forward(sy::exec::Host{}, sy::matrix_view<const float>(z.data(), T, E), ctx);
  std::vector<float> dz(static_cast<std::size_t>(T * E));
  host_router.backward(sy::exec::Host{}, host, sy::matrix_view<const float>(g.data(), T, K),
                       sy::matrix_view<float>(dz.data(), T, E));
  int mismatched_tokens = 0;
  for (index_t t = 0; t < T; ++t) {
    bool same = true;
    for (int j = 0; j < K; ++j) same = same && host.topk_indices[t * K + j] == dev.topk_indices[t * K + j];
    if (!same) {
      // Accept only a tie-equivalent choice: the same multiset of weights.
      ++mismatched_tokens;
      if (plan) {
        for (int j = 0; j < K; ++j) {
          const float ph = (*plan)[t * E + host.topk_indices[t * K + j]];
          const float pd = (*plan)[t * E + dev.topk_indices[t * K + j]];
          BOOST_TEST(std::abs(ph - pd) <= 1e-5f * ph, what << " token " << t << ": not a tie");
        }
        continue;
      }
      std::vector<float> a(host.topk_probs.begin() + t * K, host.topk_probs.begin() + t * K + K);
      std::vector<float> b(dev.topk_probs.begin() + t * K, dev.topk_probs.begin() + t * K + K);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      for (int j = 0; j < K; ++j)
        BOOST_TEST(std::abs(a[j] - b[j]) <= 1e-5, what << " token " << t << ": not a tie");
      continue;
    }
    for (int j = 0; j < K; ++j)
      BOOST_TEST(std::abs(host.topk_probs[t * K + j] - dev.topk_probs[t * K + j]) <= 1e-5,
                 what << " token " << t << " route " << j);
    float ref = 1e-30f, err = 0;
    for (index_t e = 0; e < E; ++e) {
      ref = std::max(ref, std::abs(dz[t * E + e]));
      err = std::max(err, std::abs(dz[t * E + e] - dev.dlogits[t * E + e]));
    }
    BOOST_TEST(err <= 1e-4f * std::max(ref, 1e-3f), what << " token " << t << " dlogits");
  }
  BOOST_TEST(mismatched_tokens <= std::max<index_t>(1, T / 1000), what << ": too many ties");
  for (std::size_t i = 0; i < host.balance_losses.size(); ++i)
    BOOST_TEST(std::abs(dev.losses[i] - host.balance_losses[i]) <=
                   1e-5 * std::abs(host.balance_losses[i]) + 1e-12,
               what << " balance loss " << i);
  if (host.z_loss)
    BOOST_TEST(std::abs(dev.losses.back() - *host.z_loss) <= 1e-5 * *host.z_loss, what << " z-loss");
}

template <int K, class Score>
void run_case(index_t T, index_t E, sy::RouterParams p, std::uint64_t seed) {
  if (E < K) return;
  p.num_experts = E;
  const auto z = random_vec(seed, T * E);
  const auto g = random_vec(seed + 1, T * K, 1.0);
  sy::test::score_kind kind = sy::test::score_kind::softmax;
  if constexpr (std::is_same_v<Score, sy::PreSoftmax>) kind = sy::test::score_kind::pre_softmax;
  if constexpr (std::is_same_v<Score, sy::Sigmoid>) kind = sy::test::score_kind::sigmoid;
  if constexpr (std::is_same_v<Score, sy::SqrtSoftplus>) kind = sy::test::score_kind::sqrtsoftplus;
  const auto dev = sy::test::device_top_k(kind, K, z, T, p, g);
  compare(sy::TopK<K, Score>(p), dev, z, g, T,
          std::string(Score::name) + " k=" + std::to_string(K) + " T=" + std::to_string(T) +
              " E=" + std::to_string(E) + (dev.used_warp_kernel ? " (warp)" : " (thread)"));
}

sy::RouterParams with_losses() {
  sy::RouterParams p;
  p.losses.balance = {{sy::LoadBalancingType::aux_loss, 0.01}};
  p.losses.z_loss_coeff = 1e-3;
  return p;
}

const index_t token_counts[] = {1, 7, 4096};
const index_t expert_counts[] = {8, 64, 256};

}  // namespace

BOOST_AUTO_TEST_SUITE(routing_cuda)

BOOST_AUTO_TEST_CASE(top_k_every_score_matches_host) {
  std::uint64_t seed = 100;
  for (index_t T : token_counts)
    for (index_t E : expert_counts) {
      run_case<2, sy::Softmax>(T, E, with_losses(), ++seed);
      run_case<8, sy::Softmax>(T, E, with_losses(), ++seed);
      run_case<1, sy::PreSoftmax>(T, E, with_losses(), ++seed);
      run_case<2, sy::PreSoftmax>(T, E, with_losses(), ++seed);
      run_case<2, sy::Sigmoid>(T, E, with_losses(), ++seed);
      run_case<8, sy::Sigmoid>(T, E, with_losses(), ++seed);
      run_case<6, sy::SqrtSoftplus>(T, E, with_losses(), ++seed);
    }
}

BOOST_AUTO_TEST_CASE(top_k_groups_bias_scaling_and_odd_expert_counts_match_host) {
  std::uint64_t seed = 500;
  for (index_t T : token_counts) {
    for (index_t E : {index_t(64), index_t(256)}) {
      auto p = with_losses();
      p.num_groups = 8;
      p.group_topk = 4;
      p.topk_scaling_factor = 2.5;
      run_case<8, sy::Sigmoid>(T, E, p, ++seed);
      run_case<4, sy::Softmax>(T, E, p, ++seed);
      auto b = with_losses();
      b.expert_bias = std::vector<double>(static_cast<std::size_t>(E), 0.0);
      for (index_t e = 0; e < E; e += 3) b.expert_bias[e] = 0.05;
      run_case<8, sy::Sigmoid>(T, E, b, ++seed);
      run_case<2, sy::SqrtSoftplus>(T, E, b, ++seed);
    }
    run_case<2, sy::Softmax>(T, 48, with_losses(), ++seed);  // not a power of two: thread kernel
    run_case<4, sy::Sigmoid>(T, 100, with_losses(), ++seed);
  }
}

BOOST_AUTO_TEST_CASE(sequence_and_global_aux_losses_match_host) {
  auto p = with_losses();
  p.losses.balance = {{sy::LoadBalancingType::seq_aux_loss, 0.02},
                      {sy::LoadBalancingType::aux_loss, 0.01}};
  p.losses.sequence_length = 512;
  p.losses.token_layout = sy::TokenLayout::batch_seq;
  run_case<2, sy::Softmax>(4096, 64, p, 900);
  p.losses.token_layout = sy::TokenLayout::seq_batch;
  run_case<8, sy::Sigmoid>(4096, 256, p, 901);
  // Global aux after one micro-batch equals the host's with a fresh accumulator.
  auto gp = with_losses();
  gp.losses.balance = {{sy::LoadBalancingType::global_aux_loss, 0.01}};
  gp.num_experts = 64;
  const auto z = random_vec(902, 4096 * 64);
  const auto g = random_vec(903, 4096 * 2, 1.0);
  const auto dev = sy::test::device_top_k(sy::test::score_kind::softmax, 2, z, 4096, gp, g);
  sy::GlobalAuxLoss acc;
  sy::RouteContext ctx;
  ctx.global_aux = &acc;
  const auto host = sy::TopK<2, sy::Softmax>(gp).forward(
      sy::exec::Host{}, sy::matrix_view<const float>(z.data(), 4096, 64), ctx);
  BOOST_TEST(std::abs(dev.losses[0] - *host.aux_loss) <= 1e-5 * *host.aux_loss);
}

BOOST_AUTO_TEST_CASE(nan_logits_raise_numeric_error_naming_the_token) {
  for (index_t E : {index_t(64), index_t(48)}) {
    sy::RouterParams p;
    p.num_experts = E;
    auto z = random_vec(7, 100 * E);
    z[37 * E + 5] = std::nanf("");
    z[80 * E + 1] = INFINITY;
    BOOST_CHECK_EXCEPTION(sy::test::device_top_k(sy::test::score_kind::softmax, 2, z, 100, p,
                                                 random_vec(8, 200, 1.0)),
                          sy::numeric_error, [](const sy::numeric_error& e) {
                            return std::string(e.what()).find("token 37 ") != std::string::npos;
                          });
  }
}

BOOST_AUTO_TEST_CASE(sinkhorn_matches_host_without_host_round_trips) {
  // Golden logits: 6 iterations and the plan of REFERENCE §7 (six decimals).
  const std::vector<float> golden = {1.0f, 0.5f, -0.3f, 2.0f, 0.2f, 1.7f, 0.9f, -1.0f,
                                     -0.4f, 0.1f, 1.3f, 0.8f, 2.2f, -0.6f, 0.4f, 1.1f,
                                     0.0f, 0.3f, 0.6f, 0.9f, 1.5f, 1.4f, -2.0f, 0.05f};
  const auto gd = sy::test::device_sinkhorn(1, golden, 6, 4, true, {}, std::vector<float>(6, 1.0f));
  BOOST_TEST(gd.sinkhorn_iterations == 6);
  BOOST_TEST(std::abs(gd.plan[3] - 0.096521f) <= 1e-6f);
  sy::LossParams zl;
  zl.z_loss_coeff = 1e-3;
  std::uint64_t seed = 1000;
  for (index_t T : token_counts)
    for (index_t E : expert_counts)
      for (bool training : {true, false}) {
        const auto z = random_vec(++seed, T * E);
        const auto g = random_vec(++seed, T * 2, 1.0);
        const auto dev = sy::test::device_sinkhorn(2, z, T, E, training, zl, g);
        sy::RouteContext ctx;
        ctx.training = training;
        const sy::Sinkhorn<2> router(E, zl);
        const auto host = router.forward(sy::exec::Host{}, sy::matrix_view<const float>(z.data(), T, E), ctx);
        if (training) {
          // Each thread sums in the host's order; only the stopping test's mean is reordered.
          BOOST_TEST(std::abs(dev.sinkhorn_iterations - host.sinkhorn_iterations) <= 1);
        }
        std::vector<float> plan;
        if (training) {
          plan.resize(static_cast<std::size_t>(T * E));
          sy::sinkhorn(sy::exec::Host{}, sy::matrix_view<const float>(z.data(), T, E),
                       sy::matrix_view<float>(plan.data(), T, E));
        }
        compare(router, dev, z, g, T,
                "sinkhorn T=" + std::to_string(T) + " E=" + std::to_string(E) +
                    (training ? " train" : " eval"),
                ctx, training ? &plan : nullptr);
      }
}

BOOST_AUTO_TEST_CASE(router_linear_matches_host_in_fp32_and_bf16) {
  const index_t T = 257, H = 96, E = 64;
  const auto x = random_vec(1, T * H, 1.0), w = random_vec(2, E * H, 0.1), b = random_vec(3, E, 0.1);
  const auto dz = random_vec(4, T * E, 1.0);
  for (bool bf16 : {false, true}) {
    auto xr = x, wr = w;
    if (bf16) {
      // The host reference sees the same bf16-rounded inputs (round to nearest even).
      const auto round_bf16 = [](float f) {
        std::uint32_t u;
        std::memcpy(&u, &f, 4);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        std::memcpy(&f, &u, 4);
        return f;
      };
      for (auto& v : xr) v = round_bf16(v);
      for (auto& v : wr) v = round_bf16(v);
    }
    const auto dev = sy::test::device_router_linear(x, w, b, T, H, E, dz, bf16);
    std::vector<float> z(T * E), dx(T * H), dw(E * H), db(E);
    sy::router_linear_forward(sy::exec::Host{}, sy::matrix_view<const float>(xr.data(), T, H),
                              sy::matrix_view<const float>(wr.data(), E, H),
                              sy::vector_view<const float>(b.data(), E),
                              sy::matrix_view<float>(z.data(), T, E));
    sy::router_linear_backward(sy::exec::Host{}, sy::matrix_view<const float>(xr.data(), T, H),
                               sy::matrix_view<const float>(wr.data(), E, H),
                               sy::matrix_view<const float>(dz.data(), T, E),
                               sy::matrix_view<float>(dx.data(), T, H),
                               sy::matrix_view<float>(dw.data(), E, H),
                               sy::vector_view<float>(db.data(), E));
    // fp32 sums of ≤ 257 terms in the same order; FMA contraction differs: 1e-4 absolute.
    const auto close = [](const std::vector<float>& a, const std::vector<float>& b2, const char* n) {
      float err = 0;
      for (std::size_t i = 0; i < a.size(); ++i) err = std::max(err, std::abs(a[i] - b2[i]));
      BOOST_TEST(err <= 1e-4f, n << ": max abs error " << err);
    };
    close(z, dev.logits, "logits");
    close(dx, dev.dx, "dx");
    close(dw, dev.dw, "dW");
    close(db, dev.db, "db");
  }
}

BOOST_AUTO_TEST_CASE(jitter_matches_the_host) {
  const index_t T = 33, H = 70;
  const auto x = random_vec(5, T * H, 1.0);
  const sy::JitterParams j{0.05, 1234, 9, 77};
  auto host = x;
  sy::apply_input_jitter(sy::exec::Host{}, sy::matrix_view<float>(host.data(), T, H), j);
  const auto dev = sy::test::device_jitter(x, T, H, j);
  // The draws are bit-identical (integer Philox); nvcc may fuse (1 - eps) + 2·eps·u into an FMA,
  // so the factor may differ in the last bit: 2 ulps relative.
  for (std::size_t i = 0; i < x.size(); ++i)
    BOOST_TEST(std::abs(dev[i] - host[i]) <= 2.4e-7f * std::abs(host[i]), "element " << i);
}

BOOST_AUTO_TEST_SUITE_END()
