#define BOOST_TEST_MODULE dispatch
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "switchyard/config.hpp"
#include "switchyard/dispatch/plan.hpp"
#include "switchyard/dispatch/renormalize.hpp"
#include "switchyard/dispatch/telemetry.hpp"

namespace sy = switchyard;

namespace {

struct routes {
  std::int64_t T, k;
  std::vector<std::int32_t> expert;
  std::vector<double> prob;
  sy::matrix_view<const std::int32_t> e() const {
    return sy::matrix_view<const std::int32_t>(expert.data(), T, k);
  }
  sy::matrix_view<const double> p() const { return sy::matrix_view<const double>(prob.data(), T, k); }
};

// Distinct experts per token, uniform-ish probabilities; skew > 0 favours low expert ids.
routes random_routes(std::uint32_t seed, std::int64_t T, std::int64_t E, std::int64_t k,
                     double skew = 0.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  routes r{T, k, {}, {}};
  std::vector<double> w(static_cast<std::size_t>(E));
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t e = 0; e < E; ++e)
      w[static_cast<std::size_t>(e)] = u(gen) + skew * static_cast<double>(E - e) / E;
    std::vector<std::int32_t> idx(static_cast<std::size_t>(E));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return w[a] > w[b]; });
    double sum = 0;
    for (std::int64_t j = 0; j < k; ++j) sum += w[static_cast<std::size_t>(idx[j])];
    for (std::int64_t j = 0; j < k; ++j) {
      r.expert.push_back(idx[static_cast<std::size_t>(j)]);
      r.prob.push_back(w[static_cast<std::size_t>(idx[j])] / sum);
    }
  }
  return r;
}

sy::DispatchOptions options(std::int64_t E, std::optional<std::int64_t> C,
                            sy::DropPolicy drop = sy::DropPolicy::probs, bool pad = false) {
  sy::DispatchOptions o;
  o.num_experts = E;
  o.capacity = C;
  o.drop_policy = drop;
  o.pad_to_capacity = pad;
  return o;
}

}  // namespace

// REFERENCE §7: softmax top-k-first routes of the golden logits, cf = 1.0 -> C = 3; expert 3 has
// 4 routes (tokens 0, 2, 3, 4), so token 3's 0.24974 is dropped (probs policy).
BOOST_AUTO_TEST_CASE(reference_capacity_example_drops_token_3_on_expert_3) {
  routes r{6, 2,
           {3, 0, 1, 2, 2, 3, 0, 3, 3, 2, 0, 1},
           {.731059, .268941, .689974, .310026, .622459, .377541, .75026, .24974, .574443,
            .425557, .524979, .475021}};
  sy::Config c;
  c.num_experts = 4;
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 1.0;
  const auto opt = sy::dispatch_options(c, 6);
  BOOST_TEST(opt.capacity.value() == 3);
  const auto plan = sy::build_plan(sy::exec::Host{}, opt, r.e(), r.p());
  BOOST_TEST(plan.dropped == 1);
  BOOST_TEST(plan.route_row[3 * 2 + 1] == -1);  // token 3, slot 1 (expert 3, 0.24974)
  BOOST_TEST(plan.route_row[3 * 2 + 0] >= 0);   // token 3 keeps 0.75026 on expert 0
  BOOST_TEST((plan.routed_per_expert == std::vector<std::int64_t>{3, 2, 3, 4}));
  BOOST_TEST((plan.kept_per_expert == std::vector<std::int64_t>{3, 2, 3, 3}));
  BOOST_TEST((plan.expert_offsets == std::vector<std::int64_t>{0, 3, 5, 8, 11}));
  // Expert 3 keeps tokens 0, 2, 4 in token order.
  BOOST_TEST(plan.row_route[8] == 0 * 2 + 0);
  BOOST_TEST(plan.row_route[9] == 2 * 2 + 1);
  BOOST_TEST(plan.row_route[10] == 4 * 2 + 0);
  // The position policy keeps the first three routed tokens instead: 0, 2, 3 (token 4 dropped).
  const auto pos = sy::build_plan(sy::exec::Host{}, options(4, 3, sy::DropPolicy::position),
                                  r.e(), r.p());
  BOOST_TEST(pos.route_row[3 * 2 + 1] >= 0);
  BOOST_TEST(pos.route_row[4 * 2 + 0] == -1);
}

// The same routes by position. Expert 3's routed tokens are 0, 2, 3, 4 and C = 3. Megatron-Core
// on the CPU (torch 2.15: torch.topk over the column 1 0 1 1 1 0, k = 3) keeps tokens 2, 3, 4,
// so token 0's route to expert 3 is dropped (the default, position_ties torch_cpu); with
// position_ties token_order (REFERENCE §4's rule, torch on a GPU) token 4's is.
BOOST_AUTO_TEST_CASE(reference_example_by_position_drops_what_megatron_drops) {
  routes r{6,
           2,
           {3, 0, 1, 2, 2, 3, 0, 3, 3, 2, 0, 1},
           {.731059, .268941, .689974, .310026, .622459, .377541, .75026, .24974, .574443, .425557,
            .524979, .475021}};
  sy::Config c;
  c.num_experts = 4;
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 1.0;
  c.drop_policy = sy::DropPolicy::position;
  const auto cpu = sy::build_plan(sy::exec::Host{}, sy::dispatch_options(c, 6), r.e(), r.p());
  BOOST_TEST(cpu.dropped == 1);
  BOOST_TEST(cpu.route_row[0 * 2 + 0] == -1);  // token 0, slot 0 (expert 3)
  BOOST_TEST(cpu.route_row[4 * 2 + 0] >= 0);   // token 4, slot 0 (expert 3)
  c.position_ties = sy::PositionTies::token_order;
  const auto first = sy::build_plan(sy::exec::Host{}, sy::dispatch_options(c, 6), r.e(), r.p());
  BOOST_TEST(first.dropped == 1);
  BOOST_TEST(first.route_row[0 * 2 + 0] >= 0);
  BOOST_TEST(first.route_row[4 * 2 + 0] == -1);
}

BOOST_AUTO_TEST_CASE(probs_policy_breaks_ties_by_lower_token_index) {
  // Five tokens on expert 0 with equal weight; C = 2 keeps tokens 0 and 1.
  routes r{5, 1, {0, 0, 0, 0, 0}, {0.5, 0.5, 0.5, 0.5, 0.5}};
  const auto plan = sy::build_plan(sy::exec::Host{}, options(2, 2), r.e(), r.p());
  BOOST_TEST((plan.row_route == std::vector<std::int64_t>{0, 1}));
  // Larger weights win regardless of position: tokens 3 and 4, kept in token order.
  routes s{5, 1, {0, 0, 0, 0, 0}, {0.1, 0.2, 0.3, 0.9, 0.8}};
  const auto p2 = sy::build_plan(sy::exec::Host{}, options(2, 2), s.e(), s.p());
  BOOST_TEST((p2.row_route == std::vector<std::int64_t>{3, 4}));
  const auto p3 =
      sy::build_plan(sy::exec::Host{}, options(2, 2, sy::DropPolicy::position), s.e(), s.p());
  BOOST_TEST((p3.row_route == std::vector<std::int64_t>{0, 1}));
}

// DeepSpeed's top2gating queue: every first choice of an expert before any second choice.
// Expert 0 gets second choices from tokens 0 and 1 and first choices from tokens 2 and 3; with
// C = 2 the slot-major queue keeps tokens 2 and 3 (token order would keep 0 and 1).
BOOST_AUTO_TEST_CASE(slot_major_queue_keeps_first_choices_before_second_choices) {
  routes r{4, 2, {1, 0, 2, 0, 0, 1, 0, 2}, {.6, .4, .7, .3, .8, .2, .9, .1}};
  auto opt = options(3, 2, sy::DropPolicy::position);
  const auto by_token = sy::build_plan(sy::exec::Host{}, opt, r.e(), r.p());
  BOOST_TEST(by_token.route_row[0 * 2 + 1] >= 0);  // token 0's second choice kept
  BOOST_TEST(by_token.route_row[2 * 2 + 0] == -1);  // token 2's first choice dropped
  opt.queue_by_slot = true;
  const auto by_slot = sy::build_plan(sy::exec::Host{}, opt, r.e(), r.p());
  BOOST_TEST(by_slot.route_row[0 * 2 + 1] == -1);
  BOOST_TEST(by_slot.route_row[1 * 2 + 1] == -1);
  // Expert 0's rows: token 2's and token 3's first choices, in token order.
  BOOST_TEST(by_slot.row_route[0] == 2 * 2 + 0);
  BOOST_TEST(by_slot.row_route[1] == 3 * 2 + 0);
  BOOST_TEST(by_slot.dropped == 2);
  // Expert 1: token 0's first choice, then token 2's second choice.
  BOOST_TEST(by_slot.row_route[2] == 0 * 2 + 0);
  BOOST_TEST(by_slot.row_route[3] == 2 * 2 + 1);
  // The config sets the queue order and the renormalisation for DeepSpeed's top-2 only.
  sy::Config c;
  c.semantics = sy::Semantics::deepspeed;
  BOOST_TEST(sy::dispatch_options(c, 8).queue_by_slot);
  BOOST_TEST(sy::dispatch_options(c, 8).renormalize_kept);
  c.num_experts_per_token = 3;
  BOOST_TEST(!sy::dispatch_options(c, 8).queue_by_slot);
  c.num_experts_per_token = 1;
  BOOST_TEST(!sy::dispatch_options(c, 8).renormalize_kept);
  c.semantics = sy::Semantics::megatron;
  c.num_experts_per_token = 2;
  BOOST_TEST(!sy::dispatch_options(c, 8).renormalize_kept);
}

// torch.topk over a 0/1 column on the CPU (ATen's topk_impl_loop) returns what libstdc++'s
// std::nth_element (64·C > T) or std::partial_sort (64·C <= T) leave in front. The replay in
// dispatch/detail/torch_topk.hpp must leave every element where those algorithms do: compared
// here over random columns, values 0/1 and wider, every C, on both paths.
BOOST_AUTO_TEST_CASE(torch_topk_replay_matches_libstdcxx_element_for_element) {
  namespace tk = sy::detail::torch_topk;
  std::mt19937 gen(20261206);
  int compared = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const std::int64_t T = 1 + static_cast<std::int64_t>(gen() % (trial < 300 ? 90 : 700));
    const double p = std::uniform_real_distribution<double>(0.0, 1.0)(gen);
    const int values = trial % 4 == 3 ? 5 : 2;  // a few runs over more than two values
    std::vector<std::pair<std::int64_t, std::int64_t>> q(static_cast<std::size_t>(T));
    std::vector<std::uint32_t> keys(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t v = values == 2 ? (std::uniform_real_distribution<double>(0, 1)(gen) < p)
                                         : static_cast<std::int64_t>(gen() % values);
      q[static_cast<std::size_t>(t)] = {v, t};
      keys[static_cast<std::size_t>(t)] =
          static_cast<std::uint32_t>(t) | (static_cast<std::uint32_t>(v) << 28);
    }
    const std::int64_t C = 1 + static_cast<std::int64_t>(gen() % static_cast<std::uint32_t>(T));
    auto by_value = [](const auto& x, const auto& y) { return x.first > y.first; };
    auto key_value = [](std::uint32_t x, std::uint32_t y) { return (x >> 28) > (y >> 28); };
    std::vector<std::uint32_t> heap = keys;
    auto qh = q;
    std::partial_sort(qh.begin(), qh.begin() + C, qh.end(), by_value);  // heap select + sort
    tk::heap_select(heap.data(), C, T, key_value);
    std::sort(heap.begin(), heap.begin() + C, [&](auto x, auto y) {  // the same set
      return (x & 0xfffffffu) < (y & 0xfffffffu);
    });
    std::vector<std::int64_t> want(static_cast<std::size_t>(C));
    for (std::int64_t i = 0; i < C; ++i)
      want[static_cast<std::size_t>(i)] = qh[static_cast<std::size_t>(i)].second;
    std::sort(want.begin(), want.end());
    for (std::int64_t i = 0; i < C; ++i)
      BOOST_TEST(static_cast<std::int64_t>(heap[static_cast<std::size_t>(i)] & 0xfffffffu) ==
                 want[static_cast<std::size_t>(i)]);
    auto qn = q;
    std::nth_element(qn.begin(), qn.begin() + C - 1, qn.end(), by_value);
    tk::nth_element(keys.data(), C - 1, T, key_value);
    for (std::int64_t i = 0; i < T; ++i)  // every element in the same place
      BOOST_TEST(static_cast<std::int64_t>(keys[static_cast<std::size_t>(i)] & 0xfffffffu) ==
                 qn[static_cast<std::size_t>(i)].second);
    ++compared;
  }
  BOOST_TEST(compared == 400);
}

// Golden values from torch 2.15.0 on the CPU: torch.topk(column, k=C, dim=0) over 0/1 columns
// (the call of Megatron's position policy). 40 tokens, C = 5: tokens 21, 24, 27, 28, 29 (not
// the first five routed ones, 0, 2, 3, 4, 6); 64 tokens all routed, C = 8: tokens 40..47; 300
// tokens, C = 4 (std::partial_sort): the first four routed, 4, 6, 9, 14.
BOOST_AUTO_TEST_CASE(position_by_topk_keeps_the_tokens_torch_topk_returns_on_the_cpu) {
  const auto plan_of = [](const std::string& column, std::int64_t C) {
    routes r{static_cast<std::int64_t>(column.size()), 1, {}, {}};
    for (char ch : column) {
      r.expert.push_back(ch == '1' ? 0 : 1);
      r.prob.push_back(0.5);
    }
    auto o = options(2, C, sy::DropPolicy::position);
    o.position_by_topk = true;
    const auto plan = sy::build_plan(sy::exec::Host{}, o, r.e(), r.p());
    return std::vector<std::int64_t>(plan.row_route.begin(),
                                     plan.row_route.begin() + plan.rows_of(0));
  };
  BOOST_TEST((plan_of("1011101000110010001011001001111100110011", 5) ==
              std::vector<std::int64_t>{21, 24, 27, 28, 29}));
  BOOST_TEST((plan_of(std::string(64, '1'), 8) ==
              std::vector<std::int64_t>{40, 41, 42, 43, 44, 45, 46, 47}));
  const std::string c300 =
      "000010100100001010100000000101000000110000000000100010001010000000000000000010000001000000"
      "001100100101110111000010101010010100000000010000000110010000110000010000001010010010100111"
      "010000010000100000110000100000000001101000100100001001100010000101000110100101101100010000"
      "001010000010100110010010110100";
  BOOST_TEST((plan_of(c300, 4) == std::vector<std::int64_t>{4, 6, 9, 14}));
  // An expert within its capacity keeps every route.
  BOOST_TEST((plan_of("0110100", 3) == std::vector<std::int64_t>{1, 2, 4}));
  // Hand-made routes with a token routed twice to one expert: the expert is over-full by routes
  // (6 > C = 5) with C > T = 2; each token counts once and keeps its first route.
  routes twice{2, 3, {0, 0, 0, 0, 0, 0}, {0.4, 0.3, 0.3, 0.4, 0.3, 0.3}};
  auto o = options(1, 5, sy::DropPolicy::position);
  o.position_by_topk = true;
  const auto tp = sy::build_plan(sy::exec::Host{}, o, twice.e(), twice.p());
  BOOST_TEST((tp.route_row == std::vector<std::int64_t>{0, -1, -1, 1, -1, -1}));
  BOOST_TEST(tp.dropped == 4);
  // The config sets it for Megatron's position policy and DeepSpeed's top-1 (top1gating), not
  // for DeepSpeed's top-2 and top-k (a cumsum of locations: the first C) or the probs policy.
  sy::Config c;
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.drop_policy = sy::DropPolicy::position;
  BOOST_TEST(sy::dispatch_options(c, 8).position_by_topk);
  c.position_ties = sy::PositionTies::token_order;  // REFERENCE §4's first C, by choice
  BOOST_TEST(sy::validate(c).empty());
  BOOST_TEST(!sy::dispatch_options(c, 8).position_by_topk);
  c.position_ties = sy::PositionTies::torch_cpu;
  c.drop_policy = sy::DropPolicy::probs;
  BOOST_TEST(!sy::dispatch_options(c, 8).position_by_topk);
  c.drop_policy = sy::DropPolicy::position;
  c.semantics = sy::Semantics::deepspeed;
  for (int k : {1, 2, 3}) {
    c.num_experts_per_token = k;
    BOOST_TEST(sy::dispatch_options(c, 8).position_by_topk == (k == 1));
  }
  c.token_dispatch = sy::TokenDispatch::dropless;  // max_expert_batch_size drops: first C
  c.max_expert_batch_size = 2;
  c.num_experts_per_token = 1;
  BOOST_TEST(!sy::dispatch_options(c, 8).position_by_topk);
}

// combine_weights: Megatron keeps the router's weights (0 when dropped); DeepSpeed renormalises
// the kept ones (a token that lost one route gives the other weight 1). Backward against
// central differences in double.
BOOST_AUTO_TEST_CASE(combine_weights_renormalise_the_kept_routes_with_their_gradient) {
  const auto r = random_routes(11, 24, 6, 3, 1.5);
  auto opt = options(6, 9, sy::DropPolicy::position);
  for (const bool renorm : {false, true}) {
    BOOST_TEST_CONTEXT("renormalize_kept " << renorm) {
      opt.renormalize_kept = renorm;
      const auto plan = sy::build_plan(sy::exec::Host{}, opt, r.e(), r.p());
      BOOST_REQUIRE(plan.dropped > 0);
      const std::int64_t T = 24, k = 3;
      std::vector<double> w(static_cast<std::size_t>(T * k));
      auto weights = [&](const std::vector<double>& p) {
        sy::combine_weights(sy::exec::Host{}, plan, sy::matrix_view<const double>(p.data(), T, k),
                            sy::matrix_view<double>(w.data(), T, k));
        return w;
      };
      const auto w0 = weights(r.prob);
      for (std::int64_t t = 0; t < T; ++t) {
        double kept_sum = 0, sum = 0;
        for (std::int64_t j = 0; j < k; ++j) {
          const auto i = static_cast<std::size_t>(t * k + j);
          const bool kept = plan.route_row[i] >= 0;
          if (!kept) BOOST_TEST(w0[i] == 0.0);
          if (kept && !renorm) BOOST_TEST(w0[i] == r.prob[i]);
          if (kept) kept_sum += r.prob[i];
          sum += w0[i];
        }
        if (renorm && kept_sum > 0) BOOST_TEST(std::abs(sum - 1.0) < 1e-15);
      }
      // L = Σ c·w with fixed random c; dL/dp by backward vs central differences.
      std::vector<double> c(w0.size()), dp(w0.size());
      for (std::size_t i = 0; i < c.size(); ++i) c[i] = std::sin(1.7 * static_cast<double>(i) + 0.3);
      sy::combine_weights_backward(sy::exec::Host{}, plan,
                                   sy::matrix_view<const double>(r.prob.data(), T, k),
                                   sy::matrix_view<const double>(c.data(), T, k),
                                   sy::matrix_view<double>(dp.data(), T, k));
      const double h = 1e-6;
      for (std::size_t i = 0; i < c.size(); ++i) {
        auto p = r.prob;
        p[i] += h;
        const auto wp = weights(p);
        p[i] -= 2 * h;
        const auto wm = weights(p);
        double lp = 0, lm = 0;
        for (std::size_t m = 0; m < c.size(); ++m) {
          lp += c[m] * wp[m];
          lm += c[m] * wm[m];
        }
        BOOST_TEST(std::abs((lp - lm) / (2 * h) - dp[i]) < 1e-8);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(pad_to_capacity_gives_exactly_c_rows_per_expert) {
  const auto r = random_routes(3, 40, 8, 2, 1.0);
  const auto plan =
      sy::build_plan(sy::exec::Host{}, options(8, 9, sy::DropPolicy::probs, true), r.e(), r.p());
  BOOST_TEST(plan.rows() == 8 * 9);
  for (std::int64_t e = 0; e < 8; ++e) {
    BOOST_TEST(plan.rows_of(e) == 9);
    BOOST_TEST(plan.expert_offsets[static_cast<std::size_t>(e)] == e * 9);
    const auto kept = plan.kept_per_expert[static_cast<std::size_t>(e)];
    for (std::int64_t i = 0; i < 9; ++i)
      BOOST_TEST((plan.row_route[static_cast<std::size_t>(e * 9 + i)] < 0) == (i >= kept));
  }
}

BOOST_AUTO_TEST_CASE(a_token_whose_routes_are_all_dropped_has_no_rows) {
  // Token 2's two experts are full with tokens 0 and 1 (position policy, C = 2).
  routes r{3, 2, {0, 1, 0, 1, 0, 1}, {.5, .5, .5, .5, .5, .5}};
  const auto plan =
      sy::build_plan(sy::exec::Host{}, options(2, 2, sy::DropPolicy::position), r.e(), r.p());
  BOOST_TEST(plan.route_row[4] == -1);
  BOOST_TEST(plan.route_row[5] == -1);
  BOOST_TEST(plan.dropped == 2);
}

BOOST_AUTO_TEST_CASE(max_expert_batch_size_bounds_the_rows_per_expert) {
  sy::Config c;
  c.max_expert_batch_size = 5;
  auto o = sy::dispatch_options(c, 100);  // dropless, bounded at 5 rows
  BOOST_TEST(o.capacity.value() == 5);
  c.token_dispatch = sy::TokenDispatch::capacity;
  o = sy::dispatch_options(c, 100);  // megatron C = ceil(25 · 1.25) = 32, bounded at 5
  BOOST_TEST(o.capacity.value() == 5);
  c.max_expert_batch_size = 100;
  BOOST_TEST(sy::dispatch_options(c, 100).capacity.value() == 32);
}

BOOST_AUTO_TEST_CASE(bad_routes_are_rejected_with_the_token) {
  routes r{2, 1, {0, 7}, {1.0, 1.0}};
  BOOST_CHECK_EXCEPTION(sy::build_plan(sy::exec::Host{}, options(4, std::nullopt), r.e(), r.p()),
                        sy::precondition_error, [](const sy::precondition_error& e) {
                          return std::string(e.what()).find("token 1 slot 0 routes to expert 7") !=
                                 std::string::npos;
                        });
}

BOOST_AUTO_TEST_CASE(zero_tokens_give_an_empty_plan) {
  routes r{0, 2, {}, {}};
  const auto plan = sy::build_plan(sy::exec::Host{}, options(4, 3), r.e(), r.p());
  BOOST_TEST(plan.rows() == 0);
  BOOST_TEST(plan.dropped == 0);
  const auto padded =
      sy::build_plan(sy::exec::Host{}, options(4, 3, sy::DropPolicy::probs, true), r.e(), r.p());
  BOOST_TEST(padded.rows() == 12);
}

// Property tests over random seeds, sizes and policies.
BOOST_AUTO_TEST_CASE(plan_is_a_bijection_between_kept_routes_and_rows) {
  for (std::uint32_t seed = 0; seed < 40; ++seed) {
    const std::int64_t E = std::int64_t{1} << (seed % 6 + 1), k = std::min<std::int64_t>(E, 1 + seed % 4);
    const std::int64_t T = 1 + (seed * 37) % 200;
    const auto r = random_routes(seed, T, E, k, seed % 3);
    for (int mode = 0; mode < 5; ++mode) {
      std::optional<std::int64_t> C;
      if (mode > 0) C = (T * k / E) + (seed % 3);
      const auto opt = options(E, C, mode % 2 ? sy::DropPolicy::probs : sy::DropPolicy::position,
                               mode >= 3);
      BOOST_TEST_CONTEXT("seed " << seed << " mode " << mode) {
        const auto plan = sy::build_plan(sy::exec::Host{}, opt, r.e(), r.p());
        std::int64_t kept = 0;
        for (std::int64_t route = 0; route < T * k; ++route) {
          const auto row = plan.route_row[static_cast<std::size_t>(route)];
          if (row < 0) continue;
          ++kept;
          BOOST_REQUIRE(plan.row_route[static_cast<std::size_t>(row)] == route);
          const auto e = r.expert[static_cast<std::size_t>(route)];
          BOOST_REQUIRE(row >= plan.expert_offsets[static_cast<std::size_t>(e)]);
          BOOST_REQUIRE(row < plan.expert_offsets[static_cast<std::size_t>(e) + 1]);
        }
        std::int64_t real_rows = 0;
        for (auto rr : plan.row_route)
          if (rr >= 0) ++real_rows;
        BOOST_TEST(real_rows == kept);
        BOOST_TEST(kept == plan.kept_routes());
        BOOST_TEST(std::accumulate(plan.kept_per_expert.begin(), plan.kept_per_expert.end(),
                                   std::int64_t{0}) == kept);
        BOOST_TEST(std::accumulate(plan.routed_per_expert.begin(), plan.routed_per_expert.end(),
                                   std::int64_t{0}) == T * k);
        for (std::int64_t e = 0; e < E; ++e) {
          if (C) BOOST_TEST(plan.kept_per_expert[static_cast<std::size_t>(e)] <= *C);
          // Rows of an expert keep token order.
          std::int64_t prev = -1;
          for (auto row = plan.expert_offsets[static_cast<std::size_t>(e)];
               row < plan.expert_offsets[static_cast<std::size_t>(e) + 1]; ++row) {
            const auto route = plan.row_route[static_cast<std::size_t>(row)];
            if (route < 0) continue;
            BOOST_REQUIRE(route > prev);
            prev = route;
          }
        }
        // Deterministic: a second build is identical.
        const auto again = sy::build_plan(sy::exec::Host{}, opt, r.e(), r.p());
        BOOST_TEST((again.row_route == plan.row_route));
        BOOST_TEST((again.route_row == plan.route_row));
        BOOST_TEST((again.expert_offsets == plan.expert_offsets));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(telemetry_counts_drops_and_imbalance) {
  const auto s = sy::dispatch_stats({4, 2, 2, 0}, {3, 2, 2, 0});
  BOOST_TEST(s.routes == 8);
  BOOST_TEST(s.dropped == 1);
  BOOST_TEST(s.dropped_fraction == 0.125);
  // mean 2, population std sqrt((4+0+0+4)/4) = sqrt(2).
  BOOST_TEST(std::abs(s.load_cv - std::sqrt(2.0) / 2.0) < 1e-15);
  BOOST_TEST(s.max_over_mean == 2.0);
  const auto balanced = sy::dispatch_stats({5, 5, 5, 5}, {5, 5, 5, 5});
  BOOST_TEST(balanced.load_cv == 0.0);
  BOOST_TEST(balanced.max_over_mean == 1.0);
  const auto empty = sy::dispatch_stats({0, 0}, {0, 0});
  BOOST_TEST(empty.dropped_fraction == 0.0);
}
