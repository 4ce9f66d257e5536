#define BOOST_TEST_MODULE layer_determinism
#include <boost/test/unit_test.hpp>

// Determinism across thread counts (issue 12): a whole layer forward + backward gives
// bit-identical outputs, losses and gradients with 1, 2 and 3 OpenMP threads, and across
// processes run with OMP_NUM_THREADS=1 and 2 (CTest compares the hashes this test writes when
// SY_DETERMINISM_HASH_FILE is set). The parallel threshold is lowered so that the parallel
// paths run at these sizes.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "layer_fixture.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/exec/parallel.hpp"
#include "switchyard/layer.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace sy = switchyard;
using sy_test::random_vector;

namespace {

/// Every loop of more than 1024 element operations runs on threads, so that these small sizes
/// take the parallel paths (the default threshold is for speed, not for tests).
struct low_parallel_threshold {
  low_parallel_threshold() { sy::exec::min_parallel_work = 1 << 10; }
};

void set_threads([[maybe_unused]] int n) {
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

/// Every byte a forward + backward produces, concatenated.
struct run_bytes {
  std::string bytes;
  template <class V>
  void add(const V& v) {
    bytes.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0]));
  }
  void add_value(double v) { bytes.append(reinterpret_cast<const char*>(&v), sizeof v); }
};

sy::Config determinism_config(bool capacity) {
  auto c = sy_test::small_config(16, 4, true, sy::Activation::silu, capacity);
  c.hidden_size = 64;
  c.ffn_hidden_size = 96;
  return c;
}

template <class T>
std::string layer_run(const sy::Config& c) {
  constexpr std::int64_t tokens = 512;
  const std::int64_t H = c.hidden_size;
  sy::LocalComm one;
  auto layer = sy::make_layer<T>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  layer->initialize(21);
  const auto xd = random_vector(5, static_cast<std::size_t>(tokens * H));
  const auto dyd = random_vector(6, static_cast<std::size_t>(tokens * H));
  const std::vector<T> x(xd.begin(), xd.end()), dy(dyd.begin(), dyd.end());
  auto fwd = layer->forward(sy::matrix_view<const T>(x.data(), tokens, H),
                            {.training = true, .seed = 9, .step = 1});
  auto g = layer->make_grads();
  const auto dx = layer->backward(fwd.saved, sy::matrix_view<const T>(dy.data(), tokens, H), g);
  run_bytes out;
  out.add(fwd.y);
  out.add_value(fwd.metrics.aux_loss.value_or(-1));
  out.add_value(fwd.metrics.z_loss.value_or(-1));
  out.add(fwd.metrics.kept_per_expert);
  out.add(dx);
  out.add(g.router_weight);
  out.add(g.fc1);
  out.add(g.fc2);
  out.add(g.fc1_bias);
  out.add(g.fc2_bias);
  return out.bytes;
}

/// All configurations and element types, one string.
std::string all_runs() {
  std::string s;
  for (bool capacity : {true, false}) {
    const sy::Config c = determinism_config(capacity);
    s += layer_run<float>(c);
    s += layer_run<double>(c);
  }
  return s;
}

}  // namespace

BOOST_TEST_GLOBAL_FIXTURE(low_parallel_threshold);

BOOST_AUTO_TEST_CASE(the_test_configs_drop_routes_and_have_both_losses) {
  sy::LocalComm one;
  auto layer = sy::make_layer<double>(determinism_config(true),
                                      sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  layer->initialize(21);
  const auto x = random_vector(5, 512 * 64);
  auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), 512, 64), {.training = true});
  BOOST_TEST(fwd.metrics.dropped > 0);
  BOOST_TEST(fwd.metrics.aux_loss.has_value());
  BOOST_TEST(fwd.metrics.z_loss.has_value());
}

BOOST_AUTO_TEST_CASE(layer_results_are_bit_identical_for_1_2_and_3_threads) {
  set_threads(1);
  const std::string ref = all_runs();
  for (int threads : {1, 2, 3})
    for (int again = 0; again < 2; ++again) {
      set_threads(threads);
      const std::string got = all_runs();
      BOOST_TEST_CONTEXT("threads " << threads << ", run " << again) {
        BOOST_REQUIRE_EQUAL(got.size(), ref.size());
        BOOST_TEST(std::memcmp(got.data(), ref.data(), ref.size()) == 0);
      }
    }
  set_threads(1);
}

// A plan big enough for the chunked histograms and per-expert loops to run on threads.
BOOST_AUTO_TEST_CASE(large_plan_is_identical_for_1_2_and_3_threads) {
  constexpr std::int64_t T = 1 << 16, k = 4, E = 16;
  std::vector<std::int32_t> expert(static_cast<std::size_t>(T * k));
  std::vector<float> prob(static_cast<std::size_t>(T * k));
  const auto u = random_vector(7, expert.size());
  for (std::size_t i = 0; i < expert.size(); ++i) {
    // Skewed routes (so capacity drops) and repeated weights (so ties are broken by index).
    expert[i] = static_cast<std::int32_t>((u[i] + 1.0) * (u[i] + 1.0) * E / 4.0) % E;
    prob[i] = static_cast<float>(static_cast<int>((u[i] + 1.0) * 8.0)) / 16.0f;
  }
  for (std::int64_t t = 0; t < T; ++t)  // distinct experts per token
    for (std::int64_t j = 0; j < k; ++j)
      expert[static_cast<std::size_t>(t * k + j)] =
          static_cast<std::int32_t>((expert[static_cast<std::size_t>(t * k)] + j) % E);
  sy::DispatchOptions opt;
  opt.num_experts = E;
  opt.capacity = T * k / E;
  opt.drop_policy = sy::DropPolicy::probs;
  auto plan_of = [&](int threads) {
    set_threads(threads);
    return sy::build_plan(sy::exec::Host{}, opt,
                          sy::matrix_view<const std::int32_t>(expert.data(), T, k),
                          sy::matrix_view<const float>(prob.data(), T, k));
  };
  const sy::DispatchPlan a = plan_of(1);
  BOOST_TEST(a.dropped > 0);
  for (int threads : {2, 3}) {
    const sy::DispatchPlan b = plan_of(threads);
    BOOST_TEST(b.row_route == a.row_route);
    BOOST_TEST(b.route_row == a.route_row);
    BOOST_TEST(b.expert_offsets == a.expert_offsets);
    BOOST_TEST(b.routed_per_expert == a.routed_per_expert);
    BOOST_TEST(b.kept_per_expert == a.kept_per_expert);
    BOOST_TEST(b.dropped == a.dropped);
  }
  set_threads(1);
}

// Run by CTest in separate processes under OMP_NUM_THREADS=1 and 2: writes the FNV-1a hash of
// every result to $SY_DETERMINISM_HASH_FILE (a cmake -P script compares the files). The thread
// count comes from the environment here, as a user's process gets it (OpenBLAS reads it too).
BOOST_AUTO_TEST_CASE(write_hash_of_results) {
  const char* file = std::getenv("SY_DETERMINISM_HASH_FILE");
  if (file == nullptr) return;
  std::ofstream(file) << sy::fnv1a64(all_runs()) << '\n';
}
