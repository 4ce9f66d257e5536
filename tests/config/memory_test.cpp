#include <boost/test/unit_test.hpp>

#include <cmath>
#include <random>
#include <string>

#include "switchyard/config.hpp"

namespace sy = switchyard;

BOOST_AUTO_TEST_CASE(memory_estimate_counts_local_experts_and_activations) {
  sy::Config c;
  c.num_experts = 8;
  c.num_experts_per_token = 2;
  c.expert_parallel_size = 4;
  c.hidden_size = 16;
  c.ffn_hidden_size = 32;
  c.gated = true;
  c.num_layers = 4;
  c.moe_layer_frequency = 2;  // layers 0 and 2
  c.batch_size_per_gpu = 2;
  c.sequence_length = 5;  // T = 10
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto m = sy::estimate_memory(c, 0);
  BOOST_TEST(m.moe_layers == 2);
  BOOST_TEST(m.local_experts == 2);
  const std::int64_t per_expert = 2 * 32 * 16 + 16 * 32;  // W1 (gated) + W2 = 1536
  BOOST_TEST(sy::expert_parameter_count(c) == per_expert);
  BOOST_TEST(m.expert_parameters == 2 * 2 * per_expert * 4);
  BOOST_TEST(m.expert_gradients == m.expert_parameters);
  BOOST_TEST(m.optimizer_state == 2 * 2 * per_expert * 8);  // AdamW fp32: two moments
  BOOST_TEST(m.router == 2 * 8 * 16 * (4 + 4 + 8));
  BOOST_TEST(m.per_expert == per_expert * 16);
  // Dropless: rows = T·k = 20.
  BOOST_TEST(m.rows_per_layer == 20);
  const std::int64_t T = 10, H = 16, E = 8, k = 2, F = 32, R = 20;
  const std::int64_t per_layer =
      T * H * 4 + 2 * T * E * 4 + T * k * 8 + R * H * 4 + R * F * 2 * 4 + R * F * 4 + T * k * H * 4;
  BOOST_TEST(m.activations == 2 * per_layer);
  BOOST_TEST(m.total() == m.expert_parameters + m.expert_gradients + m.optimizer_state + m.router +
                              m.shared_expert + m.activations);
  BOOST_TEST(m.fits_memory_per_expert(c));
}

// A gated shared expert (GLU, F 24) counts like the router: replicated weights, gradients and
// AdamW moments in every MoE layer, and its activations for each of the rank's tokens.
BOOST_AUTO_TEST_CASE(memory_estimate_counts_the_shared_expert) {
  sy::Config c;
  c.num_experts = 8;
  c.hidden_size = 16;
  c.ffn_hidden_size = 32;
  c.gated = true;
  c.num_layers = 2;
  c.batch_size_per_gpu = 2;
  c.sequence_length = 5;  // T = 10
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto plain = sy::estimate_memory(c, 0);
  BOOST_TEST(plain.shared_expert == 0);
  c.shared_expert_intermediate_size = 24;
  c.shared_expert_gate = true;
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto m = sy::estimate_memory(c, 0);
  const std::int64_t params = 2 * 24 * 16 + 16 * 24 + 16;  // fc1 (gated), fc2, gate = 1168
  BOOST_TEST(m.shared_expert == 2 * params * (4 + 4 + 8));
  const std::int64_t T = 10;
  BOOST_TEST(m.activations - plain.activations == 2 * (T * (48 + 24 + 16) * 4 + T * 4));
  BOOST_TEST(m.total() - plain.total() == m.shared_expert + m.activations - plain.activations);
  BOOST_TEST(m.expert_parameters == plain.expert_parameters);

  // Over TP 2 each rank holds half of the shared expert's F (and the whole gate) and runs it on
  // the rows of both TP ranks, keeping a copy of them.
  c.tensor_parallel_size = 2;
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto plain_tp = sy::estimate_memory([c]() mutable {
    c.shared_expert_intermediate_size.reset();
    c.shared_expert_gate = false;
    return c;
  }());
  const auto tp = sy::estimate_memory(c, 0);
  const std::int64_t half = 2 * 12 * 16 + 16 * 12 + 16;  // 592
  BOOST_TEST(tp.shared_expert == 2 * half * (4 + 4 + 8));
  const std::int64_t rows = 2 * T, H = 16;
  BOOST_TEST(tp.activations - plain_tp.activations ==
             2 * (rows * (24 + 12) * 4 + rows * H * 4 + T * H * 4 + T * 4));
}

BOOST_AUTO_TEST_CASE(memory_estimate_with_capacity_bf16_and_pipeline_stages) {
  sy::Config c;
  c.num_experts = 8;
  c.expert_parallel_size = 2;
  c.pipeline_parallel_size = 2;
  c.num_layers = 4;
  c.moe_layer_frequency = 3;  // layers 0 and 3: one per stage
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 1.0;
  c.batch_size_per_gpu = 1;
  c.sequence_length = 16;  // C = ceil(16·2/8 · 1.0) = 4
  c.precision = sy::Precision::bfloat16;
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto m0 = sy::estimate_memory(c, 0);
  const auto m_last = sy::estimate_memory(c, 2);  // rank 2 = pp stage 1
  BOOST_TEST(m0.moe_layers == 1);
  BOOST_TEST(m_last.moe_layers == 1);
  BOOST_TEST(m0.rows_per_layer == 8 * 4);
  // bf16 AdamW: 2 bytes weights, 2 bytes grads, 8 bytes moments + 4 bytes master copy.
  BOOST_TEST(m0.optimizer_state == m0.expert_parameters / 2 * 12);
}

// Without a pattern the MoE layers of a stage are counted without a loop (plan used to take
// minutes for num_layers 1e11): the same counts as layer by layer, and a huge num_layers at once.
BOOST_AUTO_TEST_CASE(moe_layers_on_stage_by_frequency_match_layer_by_layer) {
  sy::Config c;
  for (std::int64_t f = 1; f <= 5; ++f)
    for (std::int64_t pp = 1; pp <= 4; ++pp)
      for (std::int64_t layers = pp; layers <= 24; layers += pp) {
        c.moe_layer_frequency = f;
        c.pipeline_parallel_size = pp;
        c.num_layers = layers;
        for (std::int64_t s = 0; s < pp; ++s) {
          std::int64_t n = 0;
          for (std::int64_t i = s * (layers / pp); i < (s + 1) * (layers / pp); ++i)
            n += c.is_moe_layer(i) ? 1 : 0;
          BOOST_TEST(sy::moe_layers_on_stage(c, s) == n,
                     "f " << f << " pp " << pp << " layers " << layers << " stage " << s);
        }
      }
  c.moe_layer_frequency = 2;
  c.pipeline_parallel_size = 1;
  c.num_layers = 1'000'000'000'000'000'000;
  BOOST_TEST(sy::moe_layers_on_stage(c, 0) == 500'000'000'000'000'000);
}

// DeepSeek-V3's layout: the first three layers dense (moe_layer_pattern), over 2 pipeline stages.
BOOST_AUTO_TEST_CASE(memory_estimate_counts_the_moe_layers_of_a_pattern_per_stage) {
  sy::Config c;
  c.num_experts = 8;
  c.pipeline_parallel_size = 2;
  c.num_layers = 8;
  c.moe_layer_pattern = {0, 0, 0, 1, 1, 1, 1, 1};
  BOOST_REQUIRE(sy::validate(c).empty());
  BOOST_TEST(sy::moe_layers_on_stage(c, 0) == 1);  // layers 0-3
  BOOST_TEST(sy::moe_layers_on_stage(c, 1) == 4);  // layers 4-7
  const auto m0 = sy::estimate_memory(c, 0), m1 = sy::estimate_memory(c, 1);
  BOOST_TEST(m0.moe_layers == 1);
  BOOST_TEST(m1.moe_layers == 4);
  BOOST_TEST(m1.expert_parameters == 4 * m0.expert_parameters);
  BOOST_TEST(m1.activations == 4 * m0.activations);
}

// Tensor-parallel experts: each rank holds F/tp of its experts and runs them on the rows of the
// whole TP group (its ranks hold other tokens).
BOOST_AUTO_TEST_CASE(memory_estimate_with_tensor_parallel_experts) {
  sy::Config c;
  c.num_experts = 8;
  c.hidden_size = 64;
  c.ffn_hidden_size = 256;
  c.gated = true;
  c.batch_size_per_gpu = 2;
  c.sequence_length = 32;  // T = 64, dropless: T·k = 128 rows per rank
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto one = sy::estimate_memory(c, 0);
  c.tensor_parallel_size = 4;
  BOOST_REQUIRE(sy::validate(c).empty());
  const auto four = sy::estimate_memory(c, 0);
  BOOST_TEST(one.rows_per_layer == 128);
  BOOST_TEST(four.rows_per_layer == 4 * 128);
  BOOST_TEST(four.expert_parameters * 4 == one.expert_parameters);  // no biases: exactly F/4
  // Expert input rows grow 4x; fc1 and activation outputs (4x rows, F/4 columns) stay.
  const std::int64_t H = 64, b = 4;
  BOOST_TEST(four.activations - one.activations == one.moe_layers * 3 * 128 * H * b);
}

// memory_per_expert_mb is compared in whole MiB, rounded up: no overflow for a huge value (2^44
// MiB wrapped to 0 bytes and said "EXCEEDS").
BOOST_AUTO_TEST_CASE(fits_memory_per_expert_rounds_up_to_whole_mib_without_overflow) {
  sy::Config c;
  sy::MemoryEstimate m;
  c.memory_per_expert_mb = 3;
  m.per_expert = 3 * 1048576;
  BOOST_TEST(m.fits_memory_per_expert(c));
  m.per_expert += 1;
  BOOST_TEST(!m.fits_memory_per_expert(c));
  c.memory_per_expert_mb = std::int64_t{1} << 44;  // 2^64 bytes
  m.per_expert = std::int64_t{1} << 60;
  BOOST_TEST(m.fits_memory_per_expert(c));
  c.memory_per_expert_mb = std::int64_t{1} << 30;
  m.per_expert = std::int64_t{1} << 62;  // 2^42 MiB
  BOOST_TEST(!m.fits_memory_per_expert(c));
  c.memory_per_expert_mb = std::numeric_limits<std::int64_t>::max();
  m.per_expert = std::numeric_limits<std::int64_t>::max();
  BOOST_TEST(m.fits_memory_per_expert(c));
  BOOST_CHECK_THROW((void)sy::moe_layers_on_stage(c, 1), sy::precondition_error);
}

// Property over random configs with sizes up to 2^40: whenever every rule holds, the memory
// estimate's checked products and sums do not overflow (rules tokens_fit, sizes_fit,
// capacity_fits and ranks_fit bound them), on the first and the last rank. Before these rules a
// shared expert of 2^54, F 2^36 with 16384 x 1024 tokens or capacity_factor 1e12 with 2^20
// experts passed validation and wrapped.
BOOST_AUTO_TEST_CASE(every_valid_config_has_a_memory_estimate_without_overflow) {
  std::mt19937_64 rng(20261207);
  const auto pow2 = [&](int max_bits) {  // 2^u, u uniform in [0, max_bits]
    return std::int64_t{1} << std::uniform_int_distribution<int>(0, max_bits)(rng);
  };
  const auto chance = [&](double p) { return std::uniform_real_distribution<>(0, 1)(rng) < p; };
  int valid = 0, large = 0;
  for (int trial = 0; trial < 50000; ++trial) {
    sy::Config c;
    c.num_experts = pow2(24);
    c.num_experts_per_token = std::min<std::int64_t>(c.num_experts, pow2(4));
    c.pre_softmax = c.num_experts_per_token == 1;
    c.expert_parallel_size = std::min<std::int64_t>(c.num_experts, pow2(10));
    c.data_parallel_size = pow2(12);
    c.tensor_parallel_size = pow2(3);
    c.pipeline_parallel_size = pow2(3);
    c.hidden_size = pow2(40);
    c.ffn_hidden_size = c.tensor_parallel_size * pow2(40);
    c.num_layers = c.pipeline_parallel_size * pow2(30);
    c.batch_size_per_gpu = pow2(40);
    c.sequence_length = pow2(30);
    c.gated = chance(0.5);
    c.precision = chance(0.5) ? sy::Precision::bfloat16 : sy::Precision::float32;
    c.optimizer = chance(0.5) ? sy::Optimizer::sgd : sy::Optimizer::adamw;
    if (chance(0.3)) c.shared_expert_intermediate_size = c.tensor_parallel_size * pow2(50);
    if (chance(0.5)) {
      c.token_dispatch = sy::TokenDispatch::capacity;
      c.capacity_factor = std::ldexp(1.0, std::uniform_int_distribution<int>(-4, 40)(rng));
      c.min_capacity = chance(0.3) ? pow2(40) : 0;
      c.capacity_formula =
          static_cast<sy::CapacityFormula>(std::uniform_int_distribution<int>(0, 4)(rng));
    }
    if (!sy::validate(c).empty()) continue;
    ++valid;
    for (const std::int64_t rank : {std::int64_t{0}, c.world() - 1}) {
      BOOST_TEST_CONTEXT("trial " << trial << " rank " << rank) {
        sy::MemoryEstimate m;
        BOOST_REQUIRE_NO_THROW(m = sy::estimate_memory(c, rank));
        std::int64_t total = 0;
        BOOST_REQUIRE_NO_THROW(total = m.total());
        BOOST_TEST(m.activations > 0);
        BOOST_TEST(total >= m.activations);
        if (total > (std::int64_t{1} << 50)) ++large;
      }
    }
  }
  BOOST_TEST_MESSAGE(valid << " valid configs, " << large << " estimates above 2^50 bytes");
  BOOST_TEST(valid >= 1000);
  BOOST_TEST(large >= 500);
}
