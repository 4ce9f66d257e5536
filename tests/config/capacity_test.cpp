#include <boost/test/unit_test.hpp>

#include <cmath>
#include <string>

#include "switchyard/config.hpp"

namespace sy = switchyard;
using F = sy::CapacityFormula;

BOOST_AUTO_TEST_CASE(torsh_formula_matches_its_own_test) {
  // torsh: T=1000, E=8, k=2, cf=1.25 -> floor(250) * 1.25 = 312.5 -> 313.
  BOOST_TEST(sy::capacity_for(F::torsh, 1000, 8, 2, 1.25, 1, 0).value() == 313);
  // floor before the factor: T=7, E=4, k=1 -> floor(1.75)=1 -> ceil(1.25) = 2 (megatron: 3).
  BOOST_TEST(sy::capacity_for(F::torsh, 7, 4, 1, 1.25, 1, 0).value() == 2);
}

BOOST_AUTO_TEST_CASE(deepspeed_rounds_in_float32) {
  // f32(25/2) * f32(1.2) = 15.0000006 in float32 -> 16, where exact math gives 15.
  BOOST_TEST(sy::capacity_for(F::deepspeed, 25, 2, 1, 1.2, 1, 0).value() == 16);
  BOOST_TEST(sy::capacity_for(F::megatron, 25, 2, 1, 1.2, 1, 0).value() == 15);
  // The factor is cf·k: T=64, E=8, k=2, cf=1.0 -> 8 · 2 = 16; min_capacity raises it.
  BOOST_TEST(sy::capacity_for(F::deepspeed, 64, 8, 2, 1.0, 1, 0).value() == 16);
  BOOST_TEST(sy::capacity_for(F::deepspeed, 64, 8, 2, 1.0, 1, 20).value() == 20);
}

BOOST_AUTO_TEST_CASE(megatron_is_ceil_of_tokens_times_k_over_experts_times_factor) {
  // REFERENCE §7: T=6, E=4, k=2, cf=1.0 -> C = 3.
  BOOST_TEST(sy::capacity_for(F::megatron, 6, 4, 2, 1.0, 1, 0).value() == 3);
  BOOST_TEST(sy::capacity_for(F::megatron, 4096, 8, 2, 1.25, 1, 0).value() == 1280);
  BOOST_TEST(sy::capacity_for(F::megatron, 10, 4, 2, 1.1, 1, 0).value() == 6);  // ceil(5.5)
  BOOST_TEST(sy::capacity_for(F::megatron, 10, 4, 2, 1.1, 1, 8).value() == 8);
}

BOOST_AUTO_TEST_CASE(tutel_and_megablocks) {
  // tutel: k · int(cf · ceil(T/E)) = 2 · int(1.25 · 13) = 2 · 16 = 32.
  BOOST_TEST(sy::capacity_for(F::tutel, 100, 8, 2, 1.25, 1, 0).value() == 32);
  BOOST_TEST(!sy::capacity_for(F::tutel, 100, 8, 2, 0.0, 1, 0).has_value());
  // Tutel's bounded dynamic capacity (cf < 0) is not built: an error, not cf = 0's dropless run.
  BOOST_CHECK_EXCEPTION((void)sy::capacity_for(F::tutel, 100, 8, 2, -1.5, 1, 0), sy::config_error,
                        [](const sy::config_error& e) {
                          return std::string(e.what()).starts_with(
                              "capacity_factor: -1.5 (tutel's bounded dynamic capacity");
                        });
  // megablocks: int(cf · k · T · ep / E) = int(1.25 · 2 · 100 · 2 / 8) = 62.
  BOOST_TEST(sy::capacity_for(F::megablocks, 100, 8, 2, 1.25, 2, 0).value() == 62);
}

BOOST_AUTO_TEST_CASE(config_capacity_uses_its_formula_and_is_null_when_dropless) {
  sy::Config c;
  BOOST_TEST(!sy::capacity(c, 1000).has_value());
  c.token_dispatch = sy::TokenDispatch::capacity;
  BOOST_TEST(sy::capacity(c, 1000).value() == 313);  // megatron: ceil(250 · 1.25)
  c.capacity_formula = F::torsh;
  BOOST_TEST(sy::capacity(c, 1000).value() == 313);
  c.capacity_formula = F::deepspeed;
  c.num_experts = 2;
  c.num_experts_per_token = 1;
  c.pre_softmax = true;
  c.capacity_factor = 1.2;
  BOOST_TEST(sy::capacity(c, 25).value() == 16);
}

BOOST_AUTO_TEST_CASE(recommended_devices_per_sharding_strategy) {
  sy::Config c;
  c.num_experts = 32;
  BOOST_TEST(sy::recommended_num_devices(c) == 32);
  c.num_experts = 256;
  BOOST_TEST(sy::recommended_num_devices(c) == 64);
  c.sharding_strategy = sy::ShardingStrategy::DataParallel;
  BOOST_TEST(sy::recommended_num_devices(c) == 1);
  c.sharding_strategy = sy::ShardingStrategy::Hybrid;
  BOOST_TEST(sy::recommended_num_devices(c) == 16);
  c.num_experts = 4;
  BOOST_TEST(sy::recommended_num_devices(c) == 2);
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  BOOST_TEST(sy::recommended_num_devices(c) == 4);
  c.num_experts = 40;
  BOOST_TEST(sy::recommended_num_devices(c) == 20);
}

// Sizes whose products overflow 32 bits are computed in 64 bits (issue 11), without allocating.
BOOST_AUTO_TEST_CASE(sizes_beyond_32_bits_are_exact) {
  // T·k = 6e9 > 2^32.
  BOOST_TEST(sy::capacity_for(F::megatron, 3'000'000'000, 8, 2, 1.0, 1, 0).value() == 750'000'000);
  BOOST_TEST(sy::capacity_for(F::torsh, 3'000'000'000, 8, 2, 1.0, 1, 0).value() == 750'000'000);
  sy::Config c;
  c.batch_size_per_gpu = 1024;
  c.sequence_length = 1'048'576;  // T = 2^30 tokens per rank
  c.hidden_size = 8192;           // T·H = 2^43
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto m = sy::estimate_memory(c, 0);
  BOOST_TEST(m.rows_per_layer == (std::int64_t{1} << 31));  // T·k
  BOOST_TEST(m.activations > (std::int64_t{1} << 43));
}

// A capacity_factor whose capacity does not fit (found by the documents fuzzer: 2e100 made the
// float-to-integer conversion undefined) is a config_error naming the field, for every formula;
// the largest capacity itself is still computed.
BOOST_AUTO_TEST_CASE(a_capacity_beyond_the_largest_is_a_config_error_naming_capacity_factor) {
  for (const F f : {F::megatron, F::deepspeed, F::tutel, F::megablocks, F::torsh}) {
    BOOST_TEST_CONTEXT(sy::enum_name(f)) {
      try {
        (void)sy::capacity_for(f, 6, 4, 2, 2e100, 1, 0);
        BOOST_ERROR("no error");
      } catch (const sy::config_error& e) {
        BOOST_TEST(std::string(e.what()).find("capacity_factor: 2e+100 gives a capacity of") == 0,
                   e.what());
      }
    }
  }
  // T·k / E = 1: the factor is the capacity, up to 2^31 - 1 and not beyond.
  BOOST_TEST(sy::capacity_for(F::megatron, 4, 8, 2, 2147483647.0, 1, 0).value() ==
             sy::max_expert_capacity);
  BOOST_CHECK_THROW((void)sy::capacity_for(F::megatron, 4, 8, 2, 2147483648.0, 1, 0),
                    sy::config_error);
  BOOST_CHECK_EXCEPTION(
      (void)sy::capacity_for(F::megatron, 4, 8, 2, 1.0, 1, sy::max_expert_capacity + 1),
      sy::config_error, [](const sy::config_error& e) {
        return std::string(e.what()).starts_with("min_capacity: 2147483648");
      });
  BOOST_CHECK_THROW((void)sy::capacity_for(F::megablocks, 4, 8, 2, -1e300, 1, 0),
                    sy::config_error);  // not validated: a negative capacity is an error too
  // A factor that is not a number is named as such by every formula (tutel's said "< 0").
  for (const F f : {F::megatron, F::deepspeed, F::tutel, F::megablocks, F::torsh})
    for (const double cf : {std::nan(""), HUGE_VAL})
      BOOST_CHECK_EXCEPTION((void)sy::capacity_for(f, 4, 8, 2, cf, 1, 0), sy::config_error,
                            [](const sy::config_error& e) {
                              return std::string(e.what()).ends_with(" is not a finite number");
                            });
  sy::Config c;
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 1e30;
  BOOST_CHECK_THROW((void)sy::capacity(c, 8), sy::config_error);
  BOOST_TEST(sy::capacity(c, 0).value() == 0);  // no tokens: C = 0
}
