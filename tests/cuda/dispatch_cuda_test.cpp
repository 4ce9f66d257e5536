// Dispatch on the device against the host reference: identical plans, identical rows, and the
// combine within fp32 reordering error.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "dispatch_device.hpp"
#include "switchyard/dispatch/permute.hpp"

namespace sy = switchyard;

BOOST_AUTO_TEST_CASE(device_plan_and_permute_match_the_host) {
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (std::int64_t T : {1, 7, 1000, 16384})
    for (std::int64_t E : {8, 64, 256})
      for (std::int64_t k : {1, 2, 8}) {
        const std::int64_t H = T > 1000 ? 64 : 36;  // 36: not a multiple of 4 -> scalar path
        std::vector<std::int32_t> expert;
        std::vector<float> prob, x(static_cast<std::size_t>(T * H)), dy(x.size());
        for (std::int64_t t = 0; t < T; ++t) {
          std::vector<std::int32_t> ids(static_cast<std::size_t>(E));
          std::iota(ids.begin(), ids.end(), 0);
          std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int a, int b) {
            return (a * 7919 + t * 104729) % 1009 < (b * 7919 + t * 104729) % 1009;  // skewed
          });
          for (std::int64_t j = 0; j < k; ++j) {
            expert.push_back(ids[static_cast<std::size_t>(j)]);
            prob.push_back(std::round((0.5f + 0.5f * u(gen)) * 8) / 8);  // many ties
          }
        }
        for (auto& v : x) v = u(gen);
        for (auto& v : dy) v = u(gen);
        // Modes: 0 dropless, 1 probs, 2 position, 3 probs padded, 4 position with DeepSpeed's
        // slot-major queue (every first choice before any second choice), 5 position by
        // torch.topk's CPU choice (Megatron), padded.
        for (int mode = 0; mode < 6; ++mode) {
          sy::DispatchOptions o;
          o.num_experts = E;
          if (mode > 0) o.capacity = std::max<std::int64_t>(1, T * k / E);
          o.drop_policy = mode == 2 || mode >= 4 ? sy::DropPolicy::position : sy::DropPolicy::probs;
          o.pad_to_capacity = mode == 3 || mode == 5;
          o.position_by_topk = mode == 5;
          o.queue_by_slot = mode == 4;
          BOOST_TEST_CONTEXT("T " << T << " E " << E << " k " << k << " mode " << mode) {
            const auto host = sy::build_plan(sy::exec::Host{}, o,
                                             sy::matrix_view<const std::int32_t>(expert.data(), T, k),
                                             sy::matrix_view<const float>(prob.data(), T, k));
            const auto dev = sy::test::device_dispatch(o, T, k, H, expert, prob, x, dy);
            BOOST_TEST((dev.plan.route_row == host.route_row));
            BOOST_TEST((dev.plan.row_route == host.row_route));
            BOOST_TEST((dev.plan.expert_offsets == host.expert_offsets));
            BOOST_TEST((dev.plan.routed_per_expert == host.routed_per_expert));
            BOOST_TEST((dev.plan.kept_per_expert == host.kept_per_expert));
            const auto R = host.rows();
            std::vector<float> rows(static_cast<std::size_t>(R * H)), y(x.size());
            sy::permute(sy::exec::Host{}, host, sy::matrix_view<const float>(x.data(), T, H),
                        sy::matrix_view<float>(rows.data(), R, H));
            sy::unpermute(sy::exec::Host{}, host, sy::matrix_view<const float>(rows.data(), R, H),
                          sy::matrix_view<const float>(prob.data(), T, k), sy::matrix_view<float>(y.data(), T, H));
            BOOST_TEST((dev.rows == rows));  // copies are exact
            // Same fp32 accumulation order on both sides: identical up to FMA contraction.
            for (std::size_t i = 0; i < y.size(); ++i) BOOST_REQUIRE(std::abs(dev.y[i] - y[i]) <= 1e-6f);
          }
        }
      }
}
