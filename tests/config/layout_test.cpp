#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <vector>

#include "switchyard/config.hpp"

namespace sy = switchyard;
using G = sy::GroupKind;
using groups_t = std::vector<std::vector<std::int64_t>>;

BOOST_AUTO_TEST_CASE(seed_001_picture_world_8_dp_4_ep_2) {
  const sy::Layout l(4, 2, 1, 1);
  BOOST_TEST(l.world() == 8);
  BOOST_TEST((l.groups(G::expert_parallel) == groups_t{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  BOOST_TEST((l.groups(G::data_parallel) == groups_t{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  BOOST_TEST((l.groups(G::expert_data_parallel) == groups_t{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  BOOST_TEST((l.groups(G::dense_data_parallel) == groups_t{{0, 1, 2, 3, 4, 5, 6, 7}}));
  BOOST_TEST((l.group(G::expert_parallel, 5) == std::vector<std::int64_t>{4, 5}));
  BOOST_TEST(l.coords(5).ep == 1);
  BOOST_TEST(l.coords(5).dp == 2);
}

BOOST_AUTO_TEST_CASE(seed_003_ep_groups_stay_inside_a_node_of_8) {
  const sy::Layout l(2, 8, 1, 1);
  for (const auto& g : l.groups(G::expert_parallel)) {
    BOOST_TEST(g.size() == 8u);
    BOOST_TEST(g.front() / 8 == g.back() / 8);  // same node
  }
  BOOST_TEST((l.groups(G::data_parallel).front() == std::vector<std::int64_t>{0, 8}));
}

BOOST_AUTO_TEST_CASE(four_dimensional_layout_partitions_the_world) {
  const sy::Layout l(2, 2, 2, 2);
  for (std::int64_t r = 0; r < l.world(); ++r) BOOST_TEST(l.rank_of(l.coords(r)) == r);
  // tp innermost, then ep, dp, pp.
  BOOST_TEST((l.coords(1) == sy::RankCoords{1, 0, 0, 0}));
  BOOST_TEST((l.coords(2) == sy::RankCoords{0, 1, 0, 0}));
  BOOST_TEST((l.coords(4) == sy::RankCoords{0, 0, 1, 0}));
  BOOST_TEST((l.coords(8) == sy::RankCoords{0, 0, 0, 1}));
  BOOST_TEST((l.group(G::tensor_parallel, 6) == std::vector<std::int64_t>{6, 7}));
  BOOST_TEST((l.group(G::expert_parallel, 6) == std::vector<std::int64_t>{4, 6}));
  BOOST_TEST((l.group(G::data_parallel, 6) == std::vector<std::int64_t>{2, 6}));
  BOOST_TEST((l.group(G::dense_data_parallel, 6) == std::vector<std::int64_t>{0, 2, 4, 6}));
  BOOST_TEST((l.group(G::pipeline_parallel, 6) == std::vector<std::int64_t>{6, 14}));
  for (G kind : {G::expert_parallel, G::data_parallel, G::dense_data_parallel,
                 G::tensor_parallel, G::pipeline_parallel}) {
    std::vector<std::int64_t> all;
    for (const auto& g : l.groups(kind)) all.insert(all.end(), g.begin(), g.end());
    std::sort(all.begin(), all.end());
    BOOST_TEST(all.size() == 16u);
    BOOST_TEST((std::adjacent_find(all.begin(), all.end()) == all.end()));
  }
  BOOST_CHECK_THROW(l.coords(16), sy::precondition_error);
}

BOOST_AUTO_TEST_CASE(expert_placement_contiguous_and_round_robin) {
  using V = std::vector<std::int64_t>;
  BOOST_TEST((sy::experts_of_ep_rank(8, 4, 1, sy::ExpertPlacement::contiguous) == V{2, 3}));
  BOOST_TEST((sy::experts_of_ep_rank(8, 4, 1, sy::ExpertPlacement::round_robin) == V{1, 5}));
  BOOST_TEST((sy::experts_of_ep_rank(64, 8, 7, sy::ExpertPlacement::contiguous).front() == 56));
  BOOST_CHECK_THROW(sy::experts_of_ep_rank(64, 3, 0, sy::ExpertPlacement::contiguous),
                    sy::precondition_error);
  sy::Config c;
  c.num_experts = 8;
  c.expert_parallel_size = 2;
  c.data_parallel_size = 2;
  BOOST_TEST((sy::experts_of_rank(c, 3) == V{4, 5, 6, 7}));
  c.expert_parallel_size = 1;
  c.data_parallel_size = 4;
  c.sharding_strategy = sy::ShardingStrategy::DataParallel;
  BOOST_TEST(sy::experts_of_rank(c, 3).size() == 8u);
}
