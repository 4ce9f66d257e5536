// Expert dropout: deterministic Philox mask, keep fraction, eval identity, inverted scaling.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include "expert_test_util.hpp"

namespace sy = switchyard;
using namespace sy_test;

BOOST_AUTO_TEST_CASE(keep_fraction_is_one_minus_p) {
  // 10⁶ Bernoulli(0.7) draws: std of the mean √(0.21/10⁶) ≈ 4.6e-4; 3e-3 is 6.5σ.
  for (double p : {0.1, 0.3, 0.5}) {
    std::size_t kept = 0, n = 0;
    for (std::uint64_t r = 0; r < 1000; ++r)
      for (std::uint64_t c = 0; c < 1000; ++c, ++n) kept += sy::dropout_keep(5, 2, r, c, float(p));
    BOOST_TEST(std::abs(double(kept) / double(n) - (1 - p)) < 3e-3);
  }
  BOOST_TEST(sy::dropout_keep(5, 2, 3, 4, 0.0f));   // u ∈ (0, 1]: p = 0 keeps all
  BOOST_TEST(!sy::dropout_keep(5, 2, 3, 4, 1.0f));  // p = 1 drops all
  BOOST_TEST(sy::dropout_scale<double>(0.25) == 1.0 / 0.75);
  BOOST_TEST(sy::dropout_scale<double>(1.0) == 0.0);
}

BOOST_AUTO_TEST_CASE(mask_is_deterministic_and_changes_with_seed_and_step) {
  using P = sy::SwiGLU;
  expert_problem<double> p(P{}, 3, 8, 16, false, {4, 0, 6}, 2);
  const sy::expert_dropout d{.p = 0.5, .seed = 7, .step = 1, .training = true};
  std::vector<std::byte> ws;
  const auto a = run_forward<P>(p, ws, {.dropout = d, .gemm = sy::host_gemm::automatic});
  const auto b = run_forward<P>(p, ws, {.dropout = d, .gemm = sy::host_gemm::loops});
  BOOST_TEST(max_rel_diff(a, b) < 1e-12);
  BOOST_TEST(max_rel_diff(a, reference_forward<P>(p, d)) < 1e-12);
  auto other = d;
  other.step = 2;
  BOOST_TEST(max_rel_diff(run_forward<P>(p, ws, {.dropout = other}), a) > 1e-3);
  other = d;
  other.seed = 8;
  BOOST_TEST(max_rel_diff(run_forward<P>(p, ws, {.dropout = other}), a) > 1e-3);
}

BOOST_AUTO_TEST_CASE(rows_run_in_two_calls_with_a_row_offset_draw_the_masks_of_one_call) {
  // The host layer runs its own and its received rows in two calls: with row_offset the second
  // call's rows keep their keys, so the masks are those of one call over all rows (and no row
  // of the second call repeats a mask of the first).
  using P = sy::SwiGLU;
  expert_problem<double> p(P{}, 1, 8, 16, false, {10}, 3);
  const sy::expert_dropout d{.p = 0.5, .seed = 7, .step = 1, .training = true};
  std::vector<std::byte> ws;
  const auto whole = run_forward<P>(p, ws, {.dropout = d, .gemm = sy::host_gemm::loops});
  const index_t H = p.shape.hidden, first = 4;
  std::vector<double> split(whole.size(), -7.0), split_without_offset(whole.size(), -7.0);
  for (const bool offset : {true, false}) {
    auto& out = offset ? split : split_without_offset;
    for (const index_t part : {0, 1}) {
      const index_t r0 = part == 0 ? 0 : first, n = part == 0 ? first : p.rows - first;
      const std::vector<index_t> offsets = {0, n};
      sy::expert_options opt{.dropout = d, .gemm = sy::host_gemm::loops};
      if (offset) opt.dropout.row_offset = static_cast<std::uint64_t>(r0);
      ws.assign(sy::expert_workspace_bytes<double>(P{}, p.shape, n), std::byte{0});
      sy::expert_forward(P{}, sy::exec::Host{}, p.shape, p.weights(),
                         sy::matrix_view<const double>(p.x.data() + r0 * H, n, H), offsets,
                         sy::matrix_view<double>(out.data() + r0 * H, n, H), ws, opt);
    }
  }
  BOOST_TEST(split == whole, boost::test_tools::per_element());
  BOOST_TEST(max_rel_diff(split_without_offset, whole) > 1e-3);
}

BOOST_AUTO_TEST_CASE(eval_is_the_identity_and_training_keeps_the_expectation) {
  using P = sy::FFN<sy::GeLU>;
  expert_problem<double> p(P{}, 2, 6, 4, true, {3, 2}, 4);
  std::vector<std::byte> ws;
  const auto plain = run_forward<P>(p, ws);
  const auto eval =
      run_forward<P>(p, ws, {.dropout = {.p = 0.4, .seed = 1, .step = 0, .training = false}});
  BOOST_TEST(max_rel_diff(eval, plain) == 0.0);
  // The mean over many steps of the inverted-dropout output tends to the plain output: 4000
  // steps, each element a sum of F = 4 terms of variance ≤ p/(1−p)·|w a|²: the std of the mean is
  // about 1.5% of the scale, 0.08 is > 5σ.
  std::vector<double> mean(plain.size(), 0.0);
  const int steps = 4000;
  for (int s = 0; s < steps; ++s) {
    const auto y = run_forward<P>(
        p, ws, {.dropout = {.p = 0.4, .seed = 1, .step = std::uint32_t(s), .training = true}});
    for (std::size_t i = 0; i < y.size(); ++i) mean[i] += y[i] / steps;
  }
  BOOST_TEST(max_rel_diff(mean, plain) < 0.08);
}
