#include <boost/test/unit_test.hpp>

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
