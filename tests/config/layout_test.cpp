#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cstdlib>
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

// Groups are enumerated from the coordinates a kind varies; here against their definition (the
// ranks that share the other coordinates), over every layout up to 3 x 3 x 2 x 3.
BOOST_AUTO_TEST_CASE(groups_equal_the_ranks_sharing_the_other_coordinates) {
  const auto same = [](G kind, const sy::RankCoords& a, const sy::RankCoords& b) {
    switch (kind) {
      case G::expert_parallel: return a.tp == b.tp && a.dp == b.dp && a.pp == b.pp;
      case G::data_parallel:
      case G::expert_data_parallel: return a.tp == b.tp && a.ep == b.ep && a.pp == b.pp;
      case G::dense_data_parallel: return a.tp == b.tp && a.pp == b.pp;
      case G::tensor_parallel: return a.ep == b.ep && a.dp == b.dp && a.pp == b.pp;
      case G::pipeline_parallel: return a.tp == b.tp && a.ep == b.ep && a.dp == b.dp;
    }
    return false;
  };
  int layouts = 0;
  for (std::int64_t dp = 1; dp <= 3; ++dp)
    for (std::int64_t ep = 1; ep <= 3; ++ep)
      for (std::int64_t tp = 1; tp <= 2; ++tp)
        for (std::int64_t pp = 1; pp <= 3; ++pp) {
          const sy::Layout l(dp, ep, tp, pp);
          ++layouts;
          for (G kind : {G::expert_parallel, G::data_parallel, G::expert_data_parallel,
                         G::dense_data_parallel, G::tensor_parallel, G::pipeline_parallel})
            for (std::int64_t r = 0; r < l.world(); ++r) {
              std::vector<std::int64_t> expected;
              for (std::int64_t q = 0; q < l.world(); ++q)
                if (same(kind, l.coords(r), l.coords(q))) expected.push_back(q);
              BOOST_TEST(l.group(kind, r) == expected,
                         "layout " << dp << "x" << ep << "x" << tp << "x" << pp << " rank " << r);
            }
        }
  BOOST_TEST(layouts == 54);
}

// The largest layout (2^20 ranks) lists its groups in one pass over the world (a scan per group
// took 2^40 steps and hung `plan`); beyond it a Layout is a precondition error naming the sizes.
BOOST_AUTO_TEST_CASE(the_largest_layout_lists_its_groups_and_a_larger_one_is_an_error) {
  const sy::Layout l(std::int64_t{1} << 17, 4, 2, 1);
  BOOST_TEST(l.world() == sy::max_world_size);
  const auto tp_groups = l.groups(G::tensor_parallel);
  BOOST_TEST(tp_groups.size() == std::size_t{1} << 19);
  BOOST_TEST((tp_groups.back() == std::vector<std::int64_t>{l.world() - 2, l.world() - 1}));
  const auto dense = l.groups(G::dense_data_parallel);
  BOOST_TEST(dense.size() == 2u);
  BOOST_TEST(dense[1].size() == std::size_t{1} << 19);
  BOOST_TEST(dense[1][1] == 3);
  try {
    const sy::Layout big(std::int64_t{1} << 62, 2, 1, 1);
    BOOST_ERROR("no error");
  } catch (const sy::precondition_error& e) {
    BOOST_TEST(
        std::string(e.what()).find("dp 4611686018427387904 x ep 2 x tp 1 x pp 1 = "
                                   "9.22337e+18 ranks, more than the 1048576") != std::string::npos,
        e.what());
  }
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

// torsh's migration object: max_migration_distance keeps each expert within that many EP ranks of
// where it was, cooldown_period spaces the moves, the Periodic trigger moves below the threshold.
BOOST_AUTO_TEST_CASE(migration_object_bounds_the_distance_spaces_the_moves_and_periodic_moves) {
  using V = std::vector<std::int64_t>;
  // 8 experts over 4 ranks: {0,1} {2,3} {4,5} {6,7} hold 80, 20, 20 and 2 tokens.
  const V load{40, 40, 10, 10, 10, 10, 1, 1};
  const sy::ExpertPlacementMap four(8, 4, sy::ExpertPlacement::contiguous);
  // The packing, {0,6} {1,7} {2,4} {3,5} (41/41/20/20), moves expert 6 three ranks and 7 two.
  const auto packing = sy::migration_target(four, load, 0.3);
  BOOST_REQUIRE(packing.has_value());
  BOOST_TEST((packing->slots() == V{0, 6, 1, 7, 2, 4, 3, 5}));
  BOOST_TEST((*sy::migration_target(four, load, 0.3, 0, 3) == *packing));  // 3 ranks: any
  // One rank at most: rank 0 trades only with rank 1, one 40 for a 10 (50/50); then no trade
  // of rank 0's or rank 1's stays within one rank and lowers the busiest.
  const auto near = sy::migration_target(four, load, 0.3, 0, 1);
  BOOST_REQUIRE(near.has_value());
  BOOST_TEST((near->slots() == V{2, 1, 0, 3, 4, 5, 6, 7}));
  BOOST_TEST((near->rank_loads(load) == V{50, 50, 20, 2}));
  for (std::int64_t e = 0; e < 8; ++e)
    BOOST_TEST(std::abs(near->owner(e) - four.owner(e)) <= 1, "expert " << e);
  BOOST_TEST((*sy::migration_target(four, load, 0.3, 2, 1) == *near));

  // The schedule with the object alone: a check every step, GradualMigration's 2 experts, a
  // cooldown of 3 steps: a move at step 1, none in the 3 steps after (2, 3, 4), one at 5.
  sy::Config c;
  c.num_experts = 8;
  c.expert_parallel_size = 2;
  c.migration.present = true;
  c.migration.enable_migration = true;
  c.migration.cooldown_period = 3;
  BOOST_REQUIRE(sy::validate(c).empty());
  const sy::ExpertPlacementMap cont(8, 2, sy::ExpertPlacement::contiguous);
  const V heavy{40, 30, 20, 10, 5, 5, 5, 5};
  sy::migration_schedule s(c);
  const auto first = s.decide(cont, heavy);
  BOOST_REQUIRE(first.has_value());
  BOOST_TEST((first->slots() == V{4, 1, 2, 3, 0, 5, 6, 7}));  // one swap: 2 experts
  BOOST_TEST(s.last_move_step() == 0);                        // not before the commit
  s.commit();
  BOOST_TEST(s.last_move_step() == 1);
  for (int step = 2; step <= 4; ++step) {
    BOOST_TEST(!s.decide(cont, heavy).has_value(), "step " << step);
    s.commit();
  }
  BOOST_TEST(s.decide(cont, heavy).has_value());  // step 5
  s.commit();
  BOOST_TEST(s.last_move_step() == 5);

  // LoadImbalance: 42/38 (imbalance 0.05) is below 0.3, no move; Periodic: the swap of 12 for
  // a 10 gives 40/40.
  const V mild{12, 10, 10, 10, 10, 10, 10, 8};
  c.migration.cooldown_period = 0;
  BOOST_TEST(!sy::migration_schedule(c).decide(cont, mild).has_value());
  c.migration.triggers = sy::MigrationTrigger::Periodic;
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto periodic = sy::migration_schedule(c).decide(cont, mild);
  BOOST_REQUIRE(periodic.has_value());
  BOOST_TEST((periodic->slots() == V{4, 1, 2, 3, 0, 5, 6, 7}));
  BOOST_TEST((periodic->rank_loads(mild) == V{40, 40}));
  // CompleteMigration: the packing, 4 experts moved (on 2 ranks every distance is 1).
  c.migration.triggers = sy::MigrationTrigger::LoadImbalance;
  c.migration.preferred_strategies = sy::MigrationStrategy::CompleteMigration;
  c.migration.max_migration_distance = 1;
  const auto complete = sy::migration_schedule(c).decide(cont, heavy);
  BOOST_REQUIRE(complete.has_value());
  BOOST_TEST((complete->slots() == V{0, 3, 4, 6, 1, 2, 5, 7}));
}

// migration_target: the balanced packing when it moves few enough experts, else swaps from the
// current placement; migration_schedule: smoothed loads, a check every check_frequency-th step.
BOOST_AUTO_TEST_CASE(migration_target_limits_the_experts_moved_and_the_schedule_spaces_checks) {
  using V = std::vector<std::int64_t>;
  const V load{40, 30, 20, 10, 5, 5, 5, 5};
  const sy::ExpertPlacementMap cont(8, 2, sy::ExpertPlacement::contiguous);  // 100 / 20 tokens
  // No limit: the packing ({0,3,4,6} {1,2,5,7}, 60/60), which moves experts 1, 2, 4 and 6.
  const auto full = sy::migration_target(cont, load, 0.3);
  BOOST_REQUIRE(full.has_value());
  BOOST_TEST((full->slots() == V{0, 3, 4, 6, 1, 2, 5, 7}));
  BOOST_TEST(cont.experts_moved_to(*full) == 4);
  BOOST_TEST((*sy::migration_target(cont, load, 0.3, 4) == *full));  // within the limit
  // At most 2: one swap. The busiest rank's 40 for one of the other's 5s leaves 65/55 (40 for
  // 5 is the best trade: 30, 20 or 10 leave 75, 85 or 95); a second swap (10 for 5: 60/60)
  // would move 4 experts.
  const auto two = sy::migration_target(cont, load, 0.3, 2);
  BOOST_REQUIRE(two.has_value());
  BOOST_TEST((two->slots() == V{4, 1, 2, 3, 0, 5, 6, 7}));
  BOOST_TEST((two->rank_loads(load) == V{65, 55}));
  BOOST_TEST(cont.experts_moved_to(*two) == 2);
  // Under the threshold (imbalance 2/3), or nothing better: no move. Four experts of 10 over 3
  // ranks of 2: some rank holds 20 whatever the placement.
  BOOST_TEST(!sy::migration_target(cont, load, 0.7).has_value());
  const sy::ExpertPlacementMap three(6, 3, sy::ExpertPlacement::contiguous);
  BOOST_TEST(three.imbalance(V{10, 10, 10, 10, 0, 0}) == 0.5);
  BOOST_TEST(!sy::migration_target(three, V{10, 10, 10, 10, 0, 0}, 0.1).has_value());
  BOOST_TEST(!sy::migration_target(three, V{10, 10, 10, 10, 0, 0}, 0.1, 2).has_value());

  // The schedule: a check every 3rd step on h <- 0.5 h + 0.5 load (h starts at step 1's loads),
  // at most 2 experts moved.
  sy::Config c;
  c.num_experts = 8;
  c.expert_parallel_size = 2;
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  c.load_balancing.present = true;
  c.load_balancing.check_frequency = 3;
  c.load_balancing.load_smoothing_factor = 0.5;
  BOOST_TEST(c.migrates_experts());
  sy::migration_schedule s(c);
  const V reversed{5, 5, 5, 5, 40, 30, 20, 10};
  BOOST_TEST(!s.decide(cont, reversed).has_value());  // step 1: not a check
  BOOST_TEST(!s.decide(cont, reversed).has_value());  // decide alone records nothing
  BOOST_TEST(s.steps() == 0);
  s.commit();
  BOOST_TEST((s.smoothed_loads() == std::vector<double>{5, 5, 5, 5, 40, 30, 20, 10}));
  BOOST_TEST(!s.decide(cont, load).has_value());  // step 2: rank loads 60/60 smoothed
  s.commit();
  BOOST_TEST(
      (s.smoothed_loads() == std::vector<double>{22.5, 17.5, 12.5, 7.5, 22.5, 17.5, 12.5, 7.5}));
  // Step 3, a check: h = 31.25 23.75 16.25 8.75 | 13.75 11.25 8.75 6.25 (80/40, imbalance 1/3).
  // The packing would move 4 experts; the best swap, 31.25 for 11.25, leaves 60/60.
  const auto moved = s.decide(cont, load);
  BOOST_REQUIRE(moved.has_value());
  BOOST_TEST((moved->slots() == V{5, 1, 2, 3, 4, 0, 6, 7}));
  s.commit();
  BOOST_TEST(s.steps() == 3);
  BOOST_TEST((s.smoothed_loads() ==
              std::vector<double>{31.25, 23.75, 16.25, 8.75, 13.75, 11.25, 8.75, 6.25}));
  // Steps 4 and 5 are not checks, whatever the loads; step 6 is.
  for (int step = 4; step <= 5; ++step) {
    BOOST_TEST(!s.decide(cont, load).has_value());
    s.commit();
  }
  BOOST_TEST(s.decide(cont, load).has_value());
  s.commit();
  // Loads that are not E counts >= 0 are errors, at a check or not (step 7 is not), and a
  // failed decide() leaves nothing to commit.
  BOOST_CHECK_THROW(s.decide(cont, V{1, 2, 3}), sy::precondition_error);
  BOOST_CHECK_THROW(s.decide(cont, V{1, 2, 3, 4, 5, 6, 7, -8}), sy::precondition_error);
  BOOST_CHECK_THROW(s.commit(), sy::precondition_error);
  for (int step = 7; step <= 8; ++step) {
    BOOST_TEST(!s.decide(cont, load).has_value());
    s.commit();
  }
  BOOST_CHECK_THROW(s.decide(cont, V{1, 2, 3, 4, 5, 6, 7, -8}), sy::precondition_error);  // 9
  // The fingerprint the ranks agree on covers the loads, the steps recorded and the decision.
  const std::uint64_t at9 = (s.decide(cont, load), s.fingerprint());
  BOOST_TEST(at9 != (s.decide(cont, reversed), s.fingerprint()));
  sy::migration_schedule fresh(c);
  BOOST_TEST(at9 != (fresh.decide(cont, load), fresh.fingerprint()));

  // Without a load_balancing object: a check after every step, on that step's loads alone.
  c.load_balancing = {};
  sy::migration_schedule plain(c);
  const auto now = plain.decide(cont, load);
  BOOST_REQUIRE(now.has_value());
  BOOST_TEST((*now == *full));
}
