// Seeded initialisation: statistics of every strategy, determinism, independence of EP layout.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "expert_test_util.hpp"

namespace sy = switchyard;
using namespace sy_test;

namespace {

struct stats {
  double mean = 0, std = 0, max_abs = 0;
};
stats stats_of(const double* v, std::size_t n) {
  stats s;
  for (std::size_t i = 0; i < n; ++i) s.mean += v[i] / double(n);
  for (std::size_t i = 0; i < n; ++i) {
    s.std += (v[i] - s.mean) * (v[i] - s.mean) / double(n);
    s.max_abs = std::max(s.max_abs, std::abs(v[i]));
  }
  s.std = std::sqrt(s.std);
  return s;
}

struct initialised {
  sy::expert_shape shape;
  std::vector<double> fc1, fc2, b1, b2;
  initialised(const sy::expert_shape& s, const sy::expert_init& init)
      : shape(s),
        fc1(std::size_t(s.num_experts * 2 * s.ffn_hidden * s.hidden)),
        fc2(std::size_t(s.num_experts * s.hidden * s.ffn_hidden)),
        b1(s.bias ? std::size_t(s.num_experts * 2 * s.ffn_hidden) : 0, 5.0),
        b2(s.bias ? std::size_t(s.num_experts * s.hidden) : 0, 5.0) {
    const auto E = s.num_experts, H = s.hidden, F = s.ffn_hidden;
    sy::initialize_expert_weights(
        sy::SwiGLU{}, s, init,
        sy::expert_tensors<double>{
            sy::tensor3_view<double>(fc1.data(), E, 2 * F, H),
            sy::tensor3_view<double>(fc2.data(), E, H, F),
            s.bias ? sy::matrix_view<double>(b1.data(), E, 2 * F) : sy::matrix_view<double>(),
            s.bias ? sy::matrix_view<double>(b2.data(), E, H) : sy::matrix_view<double>()});
  }
};

// Expected σ and bound of each strategy for a matrix with the given fans (docs/experts.md).
struct expectation {
  double std, bound;  // bound: largest possible |w| (infinity for unbounded normals)
};
expectation expected(sy::InitStrategy s, double fan_in, double fan_out, double sigma) {
  switch (s) {
    case sy::InitStrategy::Xavier: {
      const double a = std::sqrt(6.0 / (fan_in + fan_out));
      return {a / std::sqrt(3.0), a};
    }
    case sy::InitStrategy::Kaiming: return {std::sqrt(2.0 / fan_in), INFINITY};
    case sy::InitStrategy::Normal: return {sigma, INFINITY};
    case sy::InitStrategy::Uniform: return {1.0 / std::sqrt(3.0 * fan_in), 1.0 / std::sqrt(fan_in)};
    case sy::InitStrategy::TruncatedNormal:
      // Variance of N(0,1) truncated to [−2, 2]: 1 − 2·2φ(2)/(2Φ(2) − 1) = 0.773741.
      return {sigma * std::sqrt(0.7737413), 2 * sigma};
  }
  return {0, 0};
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_strategy_has_its_stated_statistics) {
  const sy::expert_shape s{2, 256, 192, true};
  const std::size_t half = std::size_t(192 * 256);  // one [F][H] matrix of one expert
  for (auto strategy :
       {sy::InitStrategy::Xavier, sy::InitStrategy::Kaiming, sy::InitStrategy::Normal,
        sy::InitStrategy::Uniform, sy::InitStrategy::TruncatedNormal}) {
    BOOST_TEST_CONTEXT("strategy " << static_cast<int>(strategy)) {
      const initialised w(s, {.strategy = strategy, .seed = 17, .std = 0.02, .first_expert = 0});
      // Each logical matrix of expert 1: gate and linear halves of fc1 (fans H, F), fc2 (F, H).
      const double* gate = w.fc1.data() + 2 * half;
      for (auto [ptr, fan_in, fan_out] :
           {std::tuple{gate, 256.0, 192.0}, std::tuple{gate + half, 256.0, 192.0},
            std::tuple{w.fc2.data() + half, 192.0, 256.0}}) {
        const stats st = stats_of(ptr, half);
        const expectation ex = expected(strategy, fan_in, fan_out, 0.02);
        // n = 49152: the sample std is within ~0.5% (3σ) of σ; the mean within 5σ/√n.
        BOOST_TEST(std::abs(st.std / ex.std - 1) < 0.02);
        BOOST_TEST(std::abs(st.mean) < 5 * ex.std / std::sqrt(double(half)));
        BOOST_TEST(st.max_abs <= ex.bound);
        if (std::isfinite(ex.bound)) BOOST_TEST(st.max_abs > 0.99 * ex.bound);  // fills the range
      }
      BOOST_TEST(std::all_of(w.b1.begin(), w.b1.end(), [](double b) { return b == 0.0; }));
      BOOST_TEST(std::all_of(w.b2.begin(), w.b2.end(), [](double b) { return b == 0.0; }));
    }
  }
}

BOOST_AUTO_TEST_CASE(initialisation_is_seeded_and_independent_of_the_expert_parallel_split) {
  const sy::expert_shape all{4, 16, 12, false}, half{2, 16, 12, false};
  const sy::expert_init init{
      .strategy = sy::InitStrategy::Normal, .seed = 3, .std = 0.02, .first_expert = 0};
  const initialised a(all, init), b(all, init);
  BOOST_TEST(a.fc1 == b.fc1);
  BOOST_TEST(a.fc2 == b.fc2);
  auto other = init;
  other.seed = 4;
  BOOST_TEST(initialised(all, other).fc1 != a.fc1);
  // Rank 1 of EP = 2 holds global experts 2 and 3: the same numbers as the single-rank layout.
  auto rank1 = init;
  rank1.first_expert = 2;
  const initialised r1(half, rank1);
  BOOST_TEST(std::equal(r1.fc1.begin(), r1.fc1.end(), a.fc1.begin() + a.fc1.size() / 2));
  BOOST_TEST(std::equal(r1.fc2.begin(), r1.fc2.end(), a.fc2.begin() + a.fc2.size() / 2));
  // The gate and linear halves of a GLU are different draws.
  BOOST_TEST(!std::equal(a.fc1.begin(), a.fc1.begin() + 12 * 16, a.fc1.begin() + 12 * 16));
}
