// The device MoE layer (layer/device_layer.cuh) against the host MoELayer<float> on the same
// config, weights and inputs: y, dx, router and expert gradients, losses and counts.
//
// Tolerances: both sides compute in float32 from bit-identical weights (the device layer runs the
// host initialisation and copies it); they differ in summation order (cuBLAS against host loops
// over H = 32 or F = 24 terms, the router's per-thread dot products against the host's) and in
// exp/log implementations. Each product chain is a few GEMM-like sums deep, so agreement is
// expected to ~1e-6 relative; we allow 2e-4 of each tensor's largest magnitude (plus 1e-6
// absolute), which still catches any wrong row, weight or missing term (those are O(1) of the
// tensor's scale). Loss values: 1e-5 relative (double reductions of float terms). Counts and
// capacities must be equal: inputs are random normals, so no two selection scores are within
// float rounding of each other and both sides choose and drop the same routes.
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "../layer/layer_fixture.hpp"
#include "layer_device.hpp"
#include "switchyard/layer.hpp"

namespace sy = switchyard;
using sy::index_t;

namespace {

struct layer_case {
  std::string name;
  sy::Config cfg;
  index_t tokens = 64;
  bool training = true;
};
std::ostream& operator<<(std::ostream& os, const layer_case& c) {
  return os << c.name;
}

sy::Config base(index_t E, index_t k, bool gated, sy::Activation act) {
  sy::Config c = sy_test::small_config(E, k, gated, act, false);
  c.hidden_size = 32;
  c.ffn_hidden_size = 24;
  c.sequence_length = 16;
  c.batch_size_per_gpu = 4;
  return c;
}

std::vector<layer_case> cases() {
  std::vector<layer_case> v;
  {  // softmax top-2, capacity 0.5: about half the routes dropped by probability; SwiGLU
    auto c = base(8, 2, true, sy::Activation::silu);
    c.token_dispatch = sy::TokenDispatch::capacity;
    c.capacity_factor = 0.5;
    v.push_back({"softmax_top2_capacity_drops_glu_silu", c});
    v.push_back({"zero_tokens", c, 0});  // every buffer empty; losses 0 on both sides
  }
  {  // sigmoid, 4 groups of 4 (2 chosen), expert bias, scaling; dropless; FFN gelu with biases
    auto c = base(16, 4, false, sy::Activation::gelu);
    c.score_function = sy::ScoreFunction::sigmoid;
    c.num_groups = 4;
    c.group_topk = 2;
    c.enable_expert_bias = true;
    c.expert_bias.resize(16);
    for (int e = 0; e < 16; ++e) c.expert_bias[static_cast<std::size_t>(e)] = 0.05 * (e % 5) - 0.1;
    c.topk_scaling_factor = 2.5;
    c.add_bias_linear = true;
    c.load_balance_loss_coeff = 0.0;  // aux-loss-free balancing
    v.push_back({"sigmoid_groups_bias_dropless_ffn_gelu", c});
  }
  {  // Sinkhorn k = 2, dropless, z-loss only
    auto c = base(8, 2, true, sy::Activation::silu);
    c.load_balancing_type = sy::LoadBalancingType::sinkhorn;
    c.load_balance_loss_coeff = 0.0;
    v.push_back({"sinkhorn_top2_dropless_z_loss", c});
  }
  {  // pre-softmax top-1, padded capacity, drop by position, sequence aux loss, FFN relu
    auto c = base(8, 1, false, sy::Activation::relu);
    c.pre_softmax = true;
    c.token_dispatch = sy::TokenDispatch::capacity;
    c.capacity_factor = 1.0;
    c.drop_policy = sy::DropPolicy::position;
    c.pad_to_capacity = true;
    c.load_balancing_type = sy::LoadBalancingType::seq_aux_loss;
    v.push_back({"presoftmax_top1_padded_position_seq_aux_ffn_relu", c});
  }
  {  // global aux loss, sqrtsoftplus, input jitter and expert dropout (Philox on both sides)
    auto c = base(8, 2, true, sy::Activation::gelu_tanh);
    c.score_function = sy::ScoreFunction::sqrtsoftplus;
    c.load_balancing_type = sy::LoadBalancingType::global_aux_loss;
    c.input_jitter_eps = 0.01;
    c.expert_dropout = 0.1;
    v.push_back({"sqrtsoftplus_global_aux_jitter_dropout_glu_gelu_tanh", c});
  }
  {  // DeepSpeed top-2: slot-major queue, drop by position, kept weights renormalised
    auto c = base(8, 2, false, sy::Activation::gelu);
    c.semantics = sy::Semantics::deepspeed;
    c.pre_softmax = true;
    c.router_z_loss_coeff = 0.0;
    c.token_dispatch = sy::TokenDispatch::capacity;
    c.capacity_formula = sy::CapacityFormula::deepspeed;
    c.capacity_factor = 0.5;
    c.drop_policy = sy::DropPolicy::position;
    v.push_back({"deepspeed_top2_capacity_renormalized", c});
  }
  {  // evaluation: no jitter, Sinkhorn selects by the weights
    auto c = base(8, 1, true, sy::Activation::silu);
    c.load_balancing_type = sy::LoadBalancingType::sinkhorn;
    c.load_balance_loss_coeff = 0.0;
    v.push_back({"sinkhorn_top1_evaluation", c, 64, false});
  }
  {  // Megatron's shared expert beside the routed ones, gated (Qwen-MoE), SwiGLU, capacity
    auto c = base(8, 2, true, sy::Activation::silu);
    c.token_dispatch = sy::TokenDispatch::capacity;
    c.capacity_factor = 1.0;
    c.shared_expert_intermediate_size = 40;
    c.shared_expert_gate = true;
    v.push_back({"shared_expert_gated_glu_silu_capacity", c});
    v.push_back({"shared_expert_zero_tokens", c, 0});
  }
  {  // an ungated shared expert (DeepSeek), FFN GeLU, input jitter (the shared expert reads x)
    auto c = base(8, 2, false, sy::Activation::gelu);
    c.shared_expert_intermediate_size = 24;
    c.input_jitter_eps = 0.01;
    v.push_back({"shared_expert_ffn_gelu_jitter", c});
  }
  return v;
}

std::vector<float> normals(std::uint64_t seed, index_t n) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

void check_close(const std::vector<float>& dev, const std::vector<float>& host,
                 const std::string& what, float rel = 2e-4f) {
  BOOST_REQUIRE_EQUAL(dev.size(), host.size());
  float scale = 0.0f;
  for (float h : host) scale = std::max(scale, std::abs(h));
  const float tol = rel * scale + 1e-6f;
  for (std::size_t i = 0; i < host.size(); ++i)
    if (!(std::abs(dev[i] - host[i]) <= tol)) {
      BOOST_ERROR(what << "[" << i << "]: device " << dev[i] << ", host " << host[i]
                       << " (tolerance " << tol << ")");
      return;
    }
}

void check_loss(const std::optional<double>& dev, const std::optional<double>& host,
                const std::string& what) {
  BOOST_REQUIRE_EQUAL(dev.has_value(), host.has_value());
  if (host) BOOST_TEST_CONTEXT(what) {
      BOOST_TEST(*dev == *host, boost::test_tools::tolerance(1e-5));  // relative
    }
}

}  // namespace

BOOST_DATA_TEST_CASE(device_layer_matches_the_host_layer, boost::unit_test::data::make(cases()),
                     lc) {
  const sy::Config& c = lc.cfg;
  const index_t T = lc.tokens, H = c.hidden_size;
  const std::uint64_t seed = 99;
  const std::uint32_t step = 3;
  const auto x = normals(1, T * H), dy = normals(2, T * H);

  sy::LocalComm one;
  auto host = sy::make_layer<float, sy::LocalComm>(c, {&one, &one, &one});
  host->initialize(seed);
  sy::GlobalAuxLoss global;
  auto fwd =
      host->forward(sy::matrix_view<const float>(x.data(), T, H),
                    {.training = lc.training, .seed = seed, .step = step, .global_aux = &global});
  auto grads = host->make_grads();
  const auto dx = host->backward(fwd.saved, sy::matrix_view<const float>(dy.data(), T, H), grads);

  // The device layer on one GPU, and as a framework hands it NCCL communicators (one rank: the
  // token exchange, the group sums and fail_together all run) and its own memory.
  std::vector<sy::test::device_run_mode> modes{sy::test::device_run_mode::plain};
  if (sy::test::device_framework_mode_available())
    modes.push_back(sy::test::device_run_mode::framework);
  for (const auto mode : modes) BOOST_TEST_CONTEXT("mode " << static_cast<int>(mode)) {
      const auto dev = sy::test::device_layer_run(c, seed, x, T, dy, lc.training, step, mode);
      if (mode == sy::test::device_run_mode::framework) {
        BOOST_TEST(dev.allocations > 0);         // the per-call buffers came from the framework
        BOOST_TEST(dev.bytes_outstanding == 0);  // and all went back
      }

      // The same weights, bit for bit (the host initialisation, copied).
      BOOST_TEST(dev.params.router_weight == host->params().router_weight);
      BOOST_TEST(dev.params.fc1 == host->params().fc1);
      BOOST_TEST(dev.params.fc2 == host->params().fc2);
      BOOST_TEST(dev.params.shared_fc1 == host->params().shared_fc1);
      BOOST_TEST(dev.params.shared_fc2 == host->params().shared_fc2);
      BOOST_TEST(dev.params.shared_gate == host->params().shared_gate);

      const sy::MoEMetrics& hm = fwd.metrics;
      const sy::MoEMetrics& dm = dev.metrics;
      BOOST_TEST(dm.tokens == hm.tokens);
      BOOST_TEST(dm.tokens_per_expert == hm.tokens_per_expert, boost::test_tools::per_element());
      BOOST_TEST(dm.kept_per_expert == hm.kept_per_expert, boost::test_tools::per_element());
      BOOST_TEST(dm.dropped == hm.dropped);
      BOOST_TEST(dm.capacity.value_or(-1) == hm.capacity.value_or(-1));
      BOOST_TEST(dm.sinkhorn_iterations == hm.sinkhorn_iterations);
      check_loss(dm.aux_loss, hm.aux_loss, "aux_loss");
      check_loss(dm.z_loss, hm.z_loss, "z_loss");

      check_close(dev.y, fwd.y, "y");
      check_close(dev.dx, dx, "dx");
      check_close(dev.grads.router_weight, grads.router_weight, "d router_weight");
      check_close(dev.grads.fc1, grads.fc1, "d fc1");
      check_close(dev.grads.fc2, grads.fc2, "d fc2");
      check_close(dev.grads.fc1_bias, grads.fc1_bias, "d fc1_bias");
      check_close(dev.grads.fc2_bias, grads.fc2_bias, "d fc2_bias");
      check_close(dev.grads.shared_fc1, grads.shared_fc1, "d shared_fc1");
      check_close(dev.grads.shared_fc2, grads.shared_fc2, "d shared_fc2");
      check_close(dev.grads.shared_gate, grads.shared_gate, "d shared_gate");
    }
}

// Expert migration's move on the device: after move_experts() to another placement (on one GPU
// a reordering of its experts, with NCCL of one rank through the all-to-all), the device layer
// computes what the host layer computes after the same move, its weights are the host's in the
// new order, bit for bit, and the caller's per-expert state went along.
BOOST_AUTO_TEST_CASE(device_experts_moved_to_another_placement_match_the_host_layer) {
  auto c = base(8, 2, true, sy::Activation::silu);
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  c.add_bias_linear = true;
  const std::vector<std::int64_t> slots{5, 0, 7, 2, 1, 3, 4, 6};
  const index_t T = 48, H = c.hidden_size;
  const auto x = normals(11, T * H), dy = normals(12, T * H);
  sy::LocalComm one;
  auto host = sy::make_layer<float, sy::LocalComm>(c, {&one, &one, &one});
  host->initialize(13);
  host->move_experts(sy::ExpertPlacementMap(1, slots));
  auto fwd = host->forward(sy::matrix_view<const float>(x.data(), T, H),
                           {.training = true, .seed = 13, .step = 2});
  auto grads = host->make_grads();
  const auto dx = host->backward(fwd.saved, sy::matrix_view<const float>(dy.data(), T, H), grads);
  std::vector<sy::test::device_run_mode> modes{sy::test::device_run_mode::plain};
  if (sy::test::device_framework_mode_available())
    modes.push_back(sy::test::device_run_mode::framework);
  for (const auto mode : modes) BOOST_TEST_CONTEXT("mode " << static_cast<int>(mode)) {
      const auto dev = sy::test::device_layer_run(c, 13, x, T, dy, true, 2, mode, &slots);
      BOOST_TEST(dev.params.fc1 == host->params().fc1);
      BOOST_TEST(dev.params.fc2 == host->params().fc2);
      BOOST_TEST(dev.params.fc1_bias == host->params().fc1_bias);
      BOOST_TEST(dev.params.fc2_bias == host->params().fc2_bias);
      BOOST_TEST(dev.metrics.tokens_per_expert == fwd.metrics.tokens_per_expert,
                 boost::test_tools::per_element());
      check_close(dev.y, fwd.y, "y");
      check_close(dev.dx, dx, "dx");
      check_close(dev.grads.fc1, grads.fc1, "d fc1");
      check_close(dev.grads.fc2, grads.fc2, "d fc2");
      check_close(dev.grads.fc2_bias, grads.fc2_bias, "d fc2_bias");
      check_close(dev.grads.router_weight, grads.router_weight, "d router_weight");
      BOOST_REQUIRE_EQUAL(dev.moved_state.size(), 24u);
      for (std::size_t j = 0; j < 8; ++j)
        for (std::size_t i = 0; i < 3; ++i)
          BOOST_TEST(dev.moved_state[j * 3 + i] == static_cast<float>(10 * slots[j] + i));
    }
}

BOOST_AUTO_TEST_CASE(device_layer_without_communicators_rejects_expert_parallelism) {
  sy::Config c = base(8, 2, true, sy::Activation::silu);
  c.expert_parallel_size = 2;
  const auto e = sy::test::device_layer_construct_error(c);
  BOOST_TEST(e.kind == "config_error");
  BOOST_TEST(e.message.find("expert_parallel_size: 2 needs the layer's communicators") !=
                 std::string::npos,
             e.message);
}

BOOST_AUTO_TEST_CASE(device_layer_nan_input_is_an_error_naming_the_token) {
  const auto e = sy::test::device_layer_nan_error(base(8, 2, true, sy::Activation::silu), 16, 5);
  BOOST_TEST(e.kind == "numeric_error");
  BOOST_TEST(e.message.find("router logits of token 5 are not finite") != std::string::npos,
             e.message);
}

// Out of memory at any buffer of a row or more, in forward or backward: the call throws
// (std::bad_alloc through fail_together), nothing leaks, and the next step has the same bits.
// Every such allocation comes before the check that precedes the NCCL exchanges, so with
// several ranks it is an error on every rank instead of a hang (device_layer.cuh).
BOOST_AUTO_TEST_CASE(device_layer_out_of_memory_is_an_error_and_the_layer_stays_usable) {
  if (!sy::test::device_framework_mode_available()) return;  // needs NCCL
  auto c = base(8, 2, true, sy::Activation::silu);
  for (const int variant : {0, 1, 2}) BOOST_TEST_CONTEXT("variant " << variant) {
      if (variant >= 1) {  // capacity dispatch
        c.token_dispatch = sy::TokenDispatch::capacity;
        c.capacity_factor = 1.0;
      }
      if (variant == 2) {  // and a gated shared expert: its buffers too
        c.shared_expert_intermediate_size = 40;
        c.shared_expert_gate = true;
      }
      // H = 32 floats: 128 bytes a row; T = 64 tokens.
      const auto r = sy::test::device_layer_allocation_sweep(c, 64, 128);
      BOOST_TEST(r.forward_allocations >= 6);   // x, logits, rows, exchange, expert out, y
      BOOST_TEST(r.backward_allocations >= 5);  // d_rows, exchange, d_in, dx, dx_router
      BOOST_TEST(static_cast<std::int64_t>(r.errors.size()) ==
                 r.forward_allocations + r.backward_allocations);
      for (const std::string& e : r.errors) BOOST_TEST(e.find("bad_alloc") != std::string::npos, e);
      BOOST_TEST(r.steps_differing == 0);
      BOOST_TEST(r.bytes_outstanding == 0);
    }
}

BOOST_AUTO_TEST_CASE(a_failed_forward_leaves_the_global_aux_accumulator_as_it_was) {
  auto c = base(8, 2, true, sy::Activation::silu);
  c.load_balancing_type = sy::LoadBalancingType::global_aux_loss;
  const auto r = sy::test::device_layer_global_aux_after_failure(c, 16, 5);
  BOOST_TEST(r.error.kind == "numeric_error");
  BOOST_TEST(r.micro_batches_good == 1);
  BOOST_TEST(r.micro_batches_after == 1);
  double total = 0;
  for (const double v : r.sums_good) total += v;
  BOOST_TEST(total == 16.0 * 2);  // the good batch's 16 tokens × k = 2 routes
  BOOST_TEST(r.sums_after == r.sums_good, boost::test_tools::per_element());
}

// gradient_compression on the device: reduce_gradients rounds every gradient to bfloat16 (on one
// GPU) or sums it in bfloat16 over NCCL communicators of one rank; either way each value is a
// bfloat16 one, within a bfloat16 step of the host layer's gradient rounded the same way.
BOOST_AUTO_TEST_CASE(device_gradient_compression_gives_bfloat16_gradients) {
  auto c = base(8, 2, true, sy::Activation::silu);
  c.gradient_compression = true;
  c.shared_expert_intermediate_size = 40;
  c.shared_expert_gate = true;
  const index_t T = 64, H = c.hidden_size;
  const auto x = normals(5, T * H), dy = normals(6, T * H);
  sy::LocalComm one;
  auto host = sy::make_layer<float, sy::LocalComm>(c, {&one, &one, &one});
  host->initialize(7);
  auto fwd = host->forward(sy::matrix_view<const float>(x.data(), T, H),
                           {.training = true, .seed = 7, .step = 1});
  auto grads = host->make_grads();
  (void)host->backward(fwd.saved, sy::matrix_view<const float>(dy.data(), T, H), grads);
  host->reduce_gradients(grads);  // rounded to bfloat16 (a group of one)
  std::vector<sy::test::device_run_mode> modes{sy::test::device_run_mode::plain};
  if (sy::test::device_framework_mode_available())
    modes.push_back(sy::test::device_run_mode::framework);
  for (const auto mode : modes) BOOST_TEST_CONTEXT("mode " << static_cast<int>(mode)) {
      auto dev = sy::test::device_layer_run(c, 7, x, T, dy, true, 1, mode);
      std::vector<const std::vector<float>*> want;
      grads.for_each_tensor([&](std::vector<float>& v) { want.push_back(&v); });
      std::size_t i = 0;
      dev.grads.for_each_tensor([&](std::vector<float>& v) {
        for (const float g : v) BOOST_REQUIRE(sy::detail::round_to_bf16(g) == g);
        check_close(v, *want[i++], "a compressed gradient", 0x1p-7f);
      });
    }
}

BOOST_AUTO_TEST_CASE(compile_time_device_layer_equals_the_runtime_bridge) {
  auto c = base(8, 2, true, sy::Activation::silu);
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.capacity_factor = 0.5;
  const index_t T = 32, H = c.hidden_size;
  const auto x = normals(3, T * H), dy = normals(4, T * H);
  const auto a = sy::test::device_layer_run(c, 5, x, T, dy, true, 0);
  const auto b = sy::test::device_layer_run_compile_time(c, 5, x, T, dy);
  // The same kernels in the same order; cuBLAS promises bit-identical results only per stream
  // and workspace, so allow float rounding (1e-6 of the scale).
  check_close(b.y, a.y, "y", 1e-6f);
  check_close(b.dx, a.dx, "dx", 1e-6f);
  check_close(b.grads.fc1, a.grads.fc1, "d fc1", 1e-6f);
  check_close(b.grads.router_weight, a.grads.router_weight, "d router_weight", 1e-6f);
}

BOOST_AUTO_TEST_CASE(compile_time_device_layer_rejects_a_config_naming_other_policies) {
  auto c = base(8, 2, true, sy::Activation::silu);  // dropless, the layer is compiled for capacity
  const auto e = sy::test::device_layer_compile_time_error(c);
  BOOST_TEST(e.kind == "config_error");
  BOOST_TEST(e.message.find("token_dispatch") != std::string::npos, e.message);
}
