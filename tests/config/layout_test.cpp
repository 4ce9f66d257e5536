#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "switchyard/config.hpp"
#include "switchyard/sharding/placement.hpp"

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

// The placement map as a table: the config's placements, any permutation (each expert once),
// the EP ranks' loads and imbalance, and the balanced packing expert migration moves to.
BOOST_AUTO_TEST_CASE(expert_placement_map_tables_loads_and_balanced_packing) {
  using V = std::vector<std::int64_t>;
  const sy::ExpertPlacementMap rr(8, 4, sy::ExpertPlacement::round_robin);
  BOOST_TEST((rr.experts_of(1) == V{1, 5}));
  BOOST_TEST(rr.owner(6) == 2);
  BOOST_TEST(rr.local_index(6) == 1);
  BOOST_TEST(rr.slot(6) == 5);
  BOOST_TEST(rr.expert_of_slot(5) == 6);
  BOOST_TEST((rr.slots() == V{0, 4, 1, 5, 2, 6, 3, 7}));
  const sy::ExpertPlacementMap any(2, V{5, 0, 7, 2, 1, 3, 4, 6});
  BOOST_TEST(any.owner(7) == 0);
  BOOST_TEST(any.local_index(7) == 2);
  BOOST_TEST((any.experts_of(1) == V{1, 3, 4, 6}));
  BOOST_CHECK_THROW(sy::ExpertPlacementMap(2, V{0, 1, 1, 3}), sy::precondition_error);
  BOOST_CHECK_THROW(sy::ExpertPlacementMap(2, V{0, 1, 2, 4}), sy::precondition_error);
  BOOST_CHECK_THROW(sy::ExpertPlacementMap(3, V{0, 1, 2, 3}), sy::precondition_error);
  try {
    sy::ExpertPlacementMap(2, V{0, 2, 2, 3});
    BOOST_FAIL("a placement holding expert 2 twice was accepted");
  } catch (const sy::precondition_error& e) {
    BOOST_TEST(std::string(e.what()).find("slot 2 holds expert 2, which another slot holds") !=
                   std::string::npos,
               e.what());
  }

  // Loads 40 30 20 10 5 5 5 5 over 2 ranks, contiguous: 100 and 20 tokens, imbalance
  // 100 / 60 - 1 = 2/3.
  const V load{40, 30, 20, 10, 5, 5, 5, 5};
  const sy::ExpertPlacementMap cont(8, 2, sy::ExpertPlacement::contiguous);
  BOOST_TEST((cont.rank_loads(load) == V{100, 20}));
  BOOST_TEST(cont.imbalance(load) == 2.0 / 3.0, boost::test_tools::tolerance(1e-15));
  // Greedy by load: 40 -> r0, 30 -> r1, 20 -> r1 (30 < 40), 10 -> r0 (40 < 50), then the
  // four 5s (ties by id) alternate: 50/50 -> r0, r1, r0, r1. Each rank's experts by id.
  const sy::ExpertPlacementMap b = cont.balanced(load);
  BOOST_TEST((b.slots() == V{0, 3, 4, 6, 1, 2, 5, 7}));
  BOOST_TEST((b.rank_loads(load) == V{60, 60}));
  BOOST_TEST(b.imbalance(load) == 0.0);
  // Each rank keeps E/ep experts even when one expert holds everything: 4 ranks of 2.
  const V one_hot{0, 0, 0, 0, 0, 0, 0, 80};
  const sy::ExpertPlacementMap b4 =
      sy::ExpertPlacementMap(8, 4, sy::ExpertPlacement::contiguous).balanced(one_hot);
  for (std::int64_t r = 0; r < 4; ++r) BOOST_TEST(b4.experts_of(r).size() == 2u);
  BOOST_TEST(b4.imbalance(one_hot) == 3.0);    // one rank has it all: ep - 1
  BOOST_TEST(cont.imbalance(V(8, 0)) == 0.0);  // no tokens: balanced
  BOOST_CHECK_THROW(cont.imbalance(V{1, 2, 3}), sy::precondition_error);
  BOOST_CHECK_THROW(cont.balanced(V{1, 2, 3, 4, 5, 6, 7, -8}), sy::precondition_error);
}
