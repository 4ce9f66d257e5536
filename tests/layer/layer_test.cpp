#define BOOST_TEST_MODULE layer
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "layer_fixture.hpp"
#include "switchyard/layer.hpp"

namespace sy = switchyard;
using sy_test::random_vector;
using sy_test::small_config;

namespace {

struct layer_case {
  std::string name;
  sy::Config config;
};

std::vector<layer_case> cases() {
  std::vector<layer_case> v;
  v.push_back({"topk softmax dropless GLU silu", small_config(4, 2, true, sy::Activation::silu, false)});
  v.push_back({"topk softmax capacity FFN gelu", small_config(4, 2, false, sy::Activation::gelu, true)});
  auto sig = small_config(8, 3, false, sy::Activation::relu, false);
  sig.score_function = sy::ScoreFunction::sigmoid;
  sig.topk_scaling_factor = 2.0;
  sig.num_groups = 4;
  sig.group_topk = 2;
  v.push_back({"topk sigmoid groups FFN relu", sig});
  auto sh = small_config(4, 1, true, sy::Activation::gelu_tanh, false);
  sh.load_balancing_type = sy::LoadBalancingType::sinkhorn;
  sh.load_balance_loss_coeff = 0;
  v.push_back({"sinkhorn k1 dropless GLU gelu_tanh", sh});
  auto sh2 = sh;
  sh2.num_experts_per_token = 2;
  sh2.gated = false;
  v.push_back({"sinkhorn k2 dropless FFN gelu_tanh", sh2});
  auto pre = small_config(4, 1, false, sy::Activation::silu, true);
  pre.pre_softmax = true;
  pre.drop_policy = sy::DropPolicy::position;
  pre.pad_to_capacity = true;
  v.push_back({"pre-softmax k1 capacity position padded FFN silu", pre});
  auto shared = small_config(4, 2, true, sy::Activation::silu, false);
  shared.shared_expert_intermediate_size = 3;
  shared.shared_expert_gate = true;
  v.push_back({"GLU silu with a gated shared expert", shared});
  auto shared_ffn = small_config(4, 2, false, sy::Activation::gelu, true);
  shared_ffn.shared_expert_intermediate_size = 7;
  v.push_back({"capacity FFN gelu with a shared expert", shared_ffn});
  return v;
}

// f = Σ dy·y + aux + z, the objective whose gradient backward computes.
double objective(sy::MoELayerCore<double, sy::LocalComm>& layer, const std::vector<double>& x,
                 std::int64_t T, const std::vector<double>& dy) {
  auto fwd = layer.forward(sy::matrix_view<const double>(x.data(), T, layer.config().hidden_size),
                           {.training = true, .seed = 3, .step = 0});
  double f = fwd.metrics.aux_loss.value_or(0) + fwd.metrics.z_loss.value_or(0);
  for (std::size_t i = 0; i < dy.size(); ++i) f += dy[i] * fwd.y[i];
  return f;
}

}  // namespace

// Central differences in double with step 1e-6: the layer is smooth away from routing ties, so
// the relative error of a correct gradient is ~1e-9; 1e-6 is the bound CONVENTIONS sets.
BOOST_AUTO_TEST_CASE(whole_layer_finite_difference_gradients) {
  for (const auto& lc : cases()) {
    BOOST_TEST_CONTEXT(lc.name) {
      sy::LocalComm one;
      auto layer = sy::make_layer<double>(lc.config, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
      layer->initialize(11);
      const std::int64_t T = 10, H = lc.config.hidden_size;
      for (auto& w : layer->params().router_weight) w *= 40;  // logits of order 1
      for (auto& w : layer->params().shared_gate) w *= 40;    // gate logits of order 1
      const auto x = random_vector(1, static_cast<std::size_t>(T * H));
      const auto dy = random_vector(2, static_cast<std::size_t>(T * H));
      auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), T, H), {.training = true, .seed = 3});
      auto grads = layer->make_grads();
      const auto dx = layer->backward(fwd.saved, sy::matrix_view<const double>(dy.data(), T, H), grads);
      const double eps = 1e-6;
      // The input x is perturbed like any parameter: the objective always reads `xs`.
      auto xs = x;
      auto check = [&](std::vector<double>& param, const std::vector<double>& analytic, const char* what,
                       std::size_t stride) {
        for (std::size_t i = 0; i < param.size(); i += stride) {
          const double keep = param[i];
          param[i] = keep + eps;
          const double fp = objective(*layer, xs, T, dy);
          param[i] = keep - eps;
          const double fm = objective(*layer, xs, T, dy);
          param[i] = keep;
          const double fd = (fp - fm) / (2 * eps);
          BOOST_TEST(std::abs(fd - analytic[i]) <= 1e-6 * std::max(1.0, std::abs(fd)),
                     what << "[" << i << "]: finite difference " << fd << ", backward " << analytic[i]);
        }
      };
      check(xs, dx, "x", 7);
      check(layer->params().router_weight, grads.router_weight, "router_weight", 5);
      check(layer->params().fc1, grads.fc1, "fc1", 11);
      check(layer->params().fc2, grads.fc2, "fc2", 11);
      BOOST_TEST(layer->params().has_shared_expert() ==
                 lc.config.shared_expert_intermediate_size.has_value());
      check(layer->params().shared_fc1, grads.shared_fc1, "shared_fc1", 3);
      check(layer->params().shared_fc2, grads.shared_fc2, "shared_fc2", 3);
      check(layer->params().shared_gate, grads.shared_gate, "shared_gate", 1);
      BOOST_TEST(grads.shared_gate.size() == (lc.config.shared_expert_gate ? 6u : 0u));
    }
  }
}

// y of a layer with a shared expert = y of the same routed layer without it + sigmoid(x·g) ·
// fc2·relu(fc1·x), written out here; the losses and counts do not change.
BOOST_AUTO_TEST_CASE(shared_expert_adds_its_gated_mlp_to_the_routed_output) {
  sy::LocalComm one;
  auto plain = small_config(4, 2, false, sy::Activation::relu, true);
  auto with_shared = plain;
  with_shared.shared_expert_intermediate_size = 3;
  with_shared.shared_expert_gate = true;
  const sy::MoEComms<sy::LocalComm> comms{&one, &one, &one};
  auto a = sy::make_layer<double>(with_shared, comms);
  auto b = sy::make_layer<double>(plain, comms);
  a->initialize(5);
  for (auto& w : a->params().shared_gate) w *= 30;
  b->params().router_weight = a->params().router_weight;
  b->params().fc1 = a->params().fc1;
  b->params().fc2 = a->params().fc2;
  const std::int64_t T = 9, H = plain.hidden_size, Fs = 3;
  BOOST_TEST(a->params().shared_fc1.size() == static_cast<std::size_t>(Fs * H));
  BOOST_TEST(a->params().shared_fc2.size() == static_cast<std::size_t>(H * Fs));
  const auto x = random_vector(4, static_cast<std::size_t>(T * H));
  const auto ya = a->forward(sy::matrix_view<const double>(x.data(), T, H));
  const auto yb = b->forward(sy::matrix_view<const double>(x.data(), T, H));
  const auto& p = a->params();
  for (std::int64_t t = 0; t < T; ++t) {
    double z = 0;
    for (std::int64_t h = 0; h < H; ++h) z += x[t * H + h] * p.shared_gate[h];
    const double g = 1 / (1 + std::exp(-z));
    BOOST_TEST((g > 0.05 && g < 0.95));
    std::vector<double> act(Fs);
    for (std::int64_t f = 0; f < Fs; ++f) {
      double v = 0;
      for (std::int64_t h = 0; h < H; ++h) v += p.shared_fc1[f * H + h] * x[t * H + h];
      act[f] = std::max(v, 0.0);
    }
    for (std::int64_t h = 0; h < H; ++h) {
      double out = 0;
      for (std::int64_t f = 0; f < Fs; ++f) out += p.shared_fc2[h * Fs + f] * act[f];
      BOOST_TEST(std::abs(ya.y[t * H + h] - (yb.y[t * H + h] + g * out)) <= 1e-14,
                 "token " << t << " column " << h);
    }
  }
  BOOST_TEST(ya.metrics.aux_loss.value() == yb.metrics.aux_loss.value());
  BOOST_TEST(ya.metrics.z_loss.value() == yb.metrics.z_loss.value());
  BOOST_TEST(ya.metrics.kept_per_expert == yb.metrics.kept_per_expert,
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(compile_time_layer_equals_the_runtime_bridge) {
  const auto c = small_config(4, 2, true, sy::Activation::silu, true);
  sy::LocalComm one;
  using Layer = sy::MoELayer<sy::TopK<2, sy::Softmax>, sy::Capacity<sy::DropByProbs>,
                             sy::GLU<sy::SiLU>, double>;
  Layer fixed(c, {&one, &one, &one}, sy::TopK<2, sy::Softmax>(sy::router_params(c)));
  auto runtime = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  fixed.initialize(5);
  runtime->initialize(5);
  const auto x = random_vector(9, 20 * 6);
  auto a = fixed.forward(sy::matrix_view<const double>(x.data(), 20, 6));
  auto b = runtime->forward(sy::matrix_view<const double>(x.data(), 20, 6));
  BOOST_TEST(a.y == b.y, boost::test_tools::per_element());
  BOOST_TEST(a.metrics.dropped == b.metrics.dropped);
  BOOST_TEST(a.metrics.dropped > 0);  // cf = 1.0 on random routes drops some
}

BOOST_AUTO_TEST_CASE(a_config_that_names_other_policies_is_rejected) {
  sy::LocalComm one;
  auto c = small_config(4, 2, true, sy::Activation::silu, false);
  using Layer = sy::MoELayer<sy::TopK<2, sy::Softmax>, sy::Capacity<sy::DropByProbs>,
                             sy::GLU<sy::SiLU>, double>;
  BOOST_CHECK_EXCEPTION(Layer(c, {&one, &one, &one}, sy::TopK<2, sy::Softmax>(sy::router_params(c))),
                        sy::config_error, [](const sy::config_error& e) {
                          return std::string(e.what()).find("token_dispatch: the config has dropless") !=
                                 std::string::npos;
                        });
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.gated = false;
  BOOST_CHECK_EXCEPTION(Layer(c, {&one, &one, &one}, sy::TopK<2, sy::Softmax>(sy::router_params(c))),
                        sy::config_error, [](const sy::config_error& e) {
                          return std::string(e.what()).find("activation, gated") != std::string::npos;
                        });
  auto ep = small_config(4, 2, true, sy::Activation::silu, false);
  ep.expert_parallel_size = 2;
  BOOST_CHECK_EXCEPTION(sy::make_layer<double>(ep, sy::MoEComms<sy::LocalComm>{&one, &one, &one}),
                        sy::config_error, [](const sy::config_error& e) {
                          return std::string(e.what()).find(
                                     "the expert-parallel communicator has 1 ranks but the config needs 2") !=
                                 std::string::npos;
                        });
  auto k9 = small_config(16, 9, true, sy::Activation::silu, false);
  BOOST_CHECK_EXCEPTION(sy::make_layer<double>(k9, sy::MoEComms<sy::LocalComm>{&one, &one, &one}),
                        sy::config_error, [](const sy::config_error& e) {
                          return std::string(e.what()).find("k = 1..8") != std::string::npos;
                        });
}

BOOST_AUTO_TEST_CASE(zero_tokens_forward_and_backward) {
  sy::LocalComm one;
  const auto c = small_config(4, 2, false, sy::Activation::gelu, true);
  auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  layer->initialize(1);
  std::vector<double> none;
  auto fwd = layer->forward(sy::matrix_view<const double>(none.data(), 0, 6));
  BOOST_TEST(fwd.y.empty());
  BOOST_TEST(fwd.metrics.tokens == 0);
  auto g = layer->make_grads();
  const auto dx = layer->backward(fwd.saved, sy::matrix_view<const double>(none.data(), 0, 6), g);
  BOOST_TEST(dx.empty());
  for (double v : g.router_weight) BOOST_TEST(v == 0.0);
}

BOOST_AUTO_TEST_CASE(metrics_count_routes_and_drops) {
  sy::LocalComm one;
  auto c = small_config(4, 2, false, sy::Activation::relu, true);
  c.capacity_factor = 0.5;
  auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  layer->initialize(2);
  const auto x = random_vector(3, 40 * 6);
  auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), 40, 6));
  std::int64_t routed = 0, kept = 0;
  for (auto v : fwd.metrics.tokens_per_expert) routed += v;
  for (auto v : fwd.metrics.kept_per_expert) kept += v;
  BOOST_TEST(routed == 80);
  BOOST_TEST(fwd.metrics.capacity.value() == 10);  // ceil(40·2/4 · 0.5)
  BOOST_TEST(kept <= 40);
  BOOST_TEST(fwd.metrics.dropped == routed - kept);
  BOOST_TEST(fwd.metrics.dropped_fraction == static_cast<double>(routed - kept) / 80.0);
  BOOST_TEST(fwd.metrics.aux_loss.has_value());
  BOOST_TEST(fwd.metrics.z_loss.has_value());
  BOOST_TEST(fwd.metrics.bytes_sent == 0);  // one rank: no exchange
}

// gradient_compression on one rank: reduce_gradients rounds every gradient to bfloat16 (what a
// group of one sums), the shared expert's included; without it nothing changes.
BOOST_AUTO_TEST_CASE(gradient_compression_on_one_rank_rounds_every_gradient_to_bfloat16) {
  sy::LocalComm one;
  auto c = small_config(4, 2, true, sy::Activation::silu, false);
  c.shared_expert_intermediate_size = 4;
  c.shared_expert_gate = true;
  for (const bool compress : {false, true}) BOOST_TEST_CONTEXT("compression " << compress) {
      c.gradient_compression = compress;
      auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
      layer->initialize(2);
      const auto x = random_vector(3, 8 * 6), dy = random_vector(4, 8 * 6);
      auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), 8, 6));
      auto g = layer->make_grads();
      layer->backward(fwd.saved, sy::matrix_view<const double>(dy.data(), 8, 6), g);
      sy::MoEGrads<double> before = g;
      layer->reduce_gradients(g);
      std::size_t tensors = 0, changed = 0;
      std::vector<const std::vector<double>*> was;
      before.for_each_tensor([&](std::vector<double>& v) { was.push_back(&v); });
      g.for_each_tensor([&](std::vector<double>& v) {
        const std::vector<double>& w = *was[tensors++];
        BOOST_REQUIRE_EQUAL(v.size(), w.size());
        for (std::size_t i = 0; i < v.size(); ++i) {
          BOOST_REQUIRE(v[i] == (compress ? sy::detail::round_to_bf16(w[i]) : w[i]));
          changed += v[i] != w[i];
        }
      });
      BOOST_TEST(tensors == 8u);
      BOOST_TEST((changed > 0) == compress);
    }
}

// Expert migration's move on one rank reorders the local experts (what the device layer does on
// one GPU): the same y and dx as without the move, each expert's weights and gradients at its
// new local index, and with migration enabled one EP rank never moves anything.
BOOST_AUTO_TEST_CASE(experts_moved_on_one_rank_compute_what_they_computed) {
  sy::LocalComm one;
  auto c = small_config(8, 2, true, sy::Activation::silu, true);  // capacity dispatch
  c.add_bias_linear = true;
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  c.migration_threshold = 0.0;
  const std::vector<std::int64_t> slots{5, 0, 7, 2, 1, 3, 4, 6};
  const std::int64_t T = 16, H = c.hidden_size;
  const auto x = random_vector(5, static_cast<std::size_t>(T * H));
  const auto dy = random_vector(6, static_cast<std::size_t>(T * H));
  const auto run = [&](bool move) {
    auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
    layer->initialize(9);
    std::vector<double> state{0, 1, 2, 3, 4, 5, 6, 7};  // one value per expert
    std::vector<std::vector<double>*> also{&state};
    if (move) layer->move_experts(sy::ExpertPlacementMap(1, slots), also);
    for (std::size_t j = 0; j < 8; ++j)
      BOOST_REQUIRE(state[j] ==
                    static_cast<double>(move ? slots[j] : static_cast<std::int64_t>(j)));
    // Loads all on expert 0: with one EP rank there is nowhere to move.
    std::vector<std::int64_t> load(8, 0);
    load[0] = 100;
    BOOST_TEST(!layer->migrate_experts(load, also));
    auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), T, H));
    auto g = layer->make_grads();
    auto dx = layer->backward(fwd.saved, sy::matrix_view<const double>(dy.data(), T, H), g);
    return std::make_tuple(std::move(layer), std::move(fwd), std::move(g), std::move(dx));
  };
  auto [ref, rf, rg, rdx] = run(false);
  auto [moved, mf, mg, mdx] = run(true);
  BOOST_TEST(mf.y == rf.y, boost::test_tools::tolerance(1e-12) << boost::test_tools::per_element());
  BOOST_TEST(mdx == rdx, boost::test_tools::tolerance(1e-12) << boost::test_tools::per_element());
  BOOST_TEST(mf.metrics.tokens_per_expert == rf.metrics.tokens_per_expert,
             boost::test_tools::per_element());
  const std::size_t per = ref->params().fc1.size() / 8, per2 = ref->params().fc2_bias.size() / 8;
  for (std::size_t j = 0; j < 8; ++j) {
    const auto e = static_cast<std::size_t>(slots[j]);
    for (std::size_t i = 0; i < per; ++i) {
      BOOST_REQUIRE(moved->params().fc1[j * per + i] == ref->params().fc1[e * per + i]);
      BOOST_REQUIRE(std::abs(mg.fc1[j * per + i] - rg.fc1[e * per + i]) <= 1e-12);
    }
    for (std::size_t i = 0; i < per2; ++i) {
      BOOST_REQUIRE(moved->params().fc2_bias[j * per2 + i] == ref->params().fc2_bias[e * per2 + i]);
      BOOST_REQUIRE(std::abs(mg.fc2_bias[j * per2 + i] - rg.fc2_bias[e * per2 + i]) <= 1e-12);
    }
  }
  BOOST_TEST(mg.router_weight == rg.router_weight, boost::test_tools::tolerance(1e-12)
                                                       << boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_saved_state_from_before_a_move_is_refused) {
  sy::LocalComm one;
  const auto c = small_config(4, 2, false, sy::Activation::gelu, false);
  auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  layer->initialize(3);
  const auto x = random_vector(7, 8 * 6), dy = random_vector(8, 8 * 6);
  auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), 8, 6));
  layer->move_experts(sy::ExpertPlacementMap(1, {3, 1, 0, 2}));
  auto g = layer->make_grads();
  BOOST_CHECK_EXCEPTION(
      layer->backward(fwd.saved, sy::matrix_view<const double>(dy.data(), 8, 6), g),
      sy::precondition_error, [](const sy::precondition_error& e) {
        return std::string(e.what()).find("the experts moved (move_experts) after this forward") !=
               std::string::npos;
      });
  auto again = layer->forward(sy::matrix_view<const double>(x.data(), 8, 6));  // fine after it
  BOOST_CHECK_NO_THROW(
      layer->backward(again.saved, sy::matrix_view<const double>(dy.data(), 8, 6), g));
}

BOOST_AUTO_TEST_CASE(saved_state_is_consumed_once) {
  sy::LocalComm one;
  const auto c = small_config(4, 2, false, sy::Activation::relu, false);
  auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  layer->initialize(2);
  const auto x = random_vector(3, 4 * 6);
  auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), 4, 6));
  auto g = layer->make_grads();
  layer->backward(fwd.saved, sy::matrix_view<const double>(x.data(), 4, 6), g);
  BOOST_CHECK_THROW(layer->backward(fwd.saved, sy::matrix_view<const double>(x.data(), 4, 6), g),
                    sy::precondition_error);
}

// Determinism (ARCHITECTURE.md): the same inputs give bit-identical outputs and gradients.
BOOST_AUTO_TEST_CASE(same_inputs_give_bit_identical_results) {
  sy::LocalComm one;
  auto c = small_config(8, 2, true, sy::Activation::silu, true);
  c.input_jitter_eps = 0.01;
  auto run = [&] {
    auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
    layer->initialize(77);
    const auto x = random_vector(8, 64 * 6);
    auto fwd = layer->forward(sy::matrix_view<const double>(x.data(), 64, 6),
                              {.training = true, .seed = 5, .step = 3});
    auto g = layer->make_grads();
    auto dx = layer->backward(fwd.saved, sy::matrix_view<const double>(x.data(), 64, 6), g);
    return std::make_tuple(fwd.y, dx, g.router_weight, g.fc1, g.fc2);
  };
  const auto a = run();
  const auto b = run();
  BOOST_TEST((a == b));
}

// The expert workspace a backward hands back is reused by the next forward (its old contents
// never reach a result): the same step on a layer that has run larger and smaller batches before
// gives the bits of a fresh layer; release_cached_memory() frees what is kept.
BOOST_AUTO_TEST_CASE(reused_expert_workspace_gives_the_bits_of_a_fresh_layer) {
  sy::LocalComm one;
  const auto c = small_config(8, 2, true, sy::Activation::silu, true);
  const auto step = [&](sy::MoELayerCore<double, sy::LocalComm>& layer, std::int64_t T,
                        unsigned seed) {
    const auto x = random_vector(seed, T * 6), dy = random_vector(seed + 1, T * 6);
    auto fwd = layer.forward(sy::matrix_view<const double>(x.data(), T, 6),
                             {.training = true, .seed = 5, .step = 3});
    auto g = layer.make_grads();
    auto dx = layer.backward(fwd.saved, sy::matrix_view<const double>(dy.data(), T, 6), g);
    return std::make_tuple(fwd.y, dx, g.router_weight, g.fc1, g.fc2);
  };
  auto fresh = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  fresh->initialize(7);
  BOOST_TEST(fresh->cached_bytes() == 0u);
  const auto expected = step(*fresh, 24, 11);
  BOOST_TEST(fresh->cached_bytes() > 0u);

  auto used = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  used->initialize(7);
  step(*used, 64, 21);  // a larger workspace, full of other values
  const std::size_t kept = used->cached_bytes();
  BOOST_TEST(kept > fresh->cached_bytes());
  BOOST_TEST((step(*used, 24, 11) == expected));  // runs in the larger cached buffer
  BOOST_TEST(used->cached_bytes() == kept);
  step(*used, 5, 31);
  BOOST_TEST((step(*used, 24, 11) == expected));
  used->release_cached_memory();
  BOOST_TEST(used->cached_bytes() == 0u);
  BOOST_TEST((step(*used, 24, 11) == expected));
}

// A forward whose saved state is dropped without a backward (evaluation) gives its workspace back
// too; the next forward reuses it with the bits of a fresh layer; a saved state that outlives
// its layer frees its workspace itself (the sanitizer preset checks that nothing leaks or is
// used after free).
BOOST_AUTO_TEST_CASE(dropped_saved_state_returns_its_workspace) {
  sy::LocalComm one;
  const auto c = small_config(8, 2, true, sy::Activation::silu, true);
  const auto x = random_vector(41, 32 * 6);
  const auto xv = sy::matrix_view<const double>(x.data(), 32, 6);
  auto fresh = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  fresh->initialize(3);
  const std::vector<double> expected = fresh->forward(xv, {.training = false}).y;

  auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  layer->initialize(3);
  {
    auto fwd = layer->forward(xv, {.training = false});
    BOOST_TEST(layer->cached_bytes() == 0u);  // held by fwd.saved for a possible backward
    auto moved = std::move(fwd);              // a move hands the workspace over, not back
    BOOST_TEST(layer->cached_bytes() == 0u);
    BOOST_TEST((moved.y == expected));
  }
  const std::size_t kept = layer->cached_bytes();
  BOOST_TEST(kept > 0u);
  for (int i = 0; i < 3; ++i) {
    const auto fwd = layer->forward(xv, {.training = false});
    BOOST_TEST(layer->cached_bytes() == 0u);  // the forward took the cached buffer
    BOOST_TEST((fwd.y == expected));
  }
  BOOST_TEST(layer->cached_bytes() == kept);  // one buffer, reused, not one per call

  // Two forwards alive at once (micro-batches before their backwards): two buffers come back.
  {
    auto a = layer->forward(xv, {.training = false});
    auto b = layer->forward(xv, {.training = false});
    BOOST_TEST((b.y == expected));
  }
  BOOST_TEST(layer->cached_bytes() == 2 * kept);

  auto outliving = layer->forward(xv, {.training = false});
  layer.reset();  // the layer and its cache go first; outliving's workspace is freed with it
  BOOST_TEST((outliving.y == expected));
}

// Bad numbers: a NaN in x is an error naming the first bad token, never a silent routing.
BOOST_AUTO_TEST_CASE(nan_input_is_an_error_naming_the_token) {
  sy::LocalComm one;
  const auto c = small_config(4, 2, false, sy::Activation::relu, false);
  auto layer = sy::make_layer<double>(c, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  layer->initialize(1);
  auto x = random_vector(3, 5 * 6);
  x[3 * 6 + 2] = std::numeric_limits<double>::quiet_NaN();
  BOOST_CHECK_EXCEPTION(layer->forward(sy::matrix_view<const double>(x.data(), 5, 6)),
                        sy::numeric_error, [](const sy::numeric_error& e) {
                          return std::string(e.what()).find("token 3") != std::string::npos;
                        });
}

// Edge sizes (issue 11): one expert, k = E, and H = 1 run (or are rejected with a message).
BOOST_AUTO_TEST_CASE(edge_sizes_one_expert_k_equal_e_and_hidden_one) {
  sy::LocalComm one;
  auto e1 = small_config(1, 1, false, sy::Activation::relu, false);
  e1.pre_softmax = true;  // k = 1 with softmax needs pre-softmax (else a zero gradient)
  e1.load_balance_loss_coeff = 0;
  auto l1 = sy::make_layer<double>(e1, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  l1->initialize(3);
  const auto x = random_vector(4, 7 * 6);
  auto f1 = l1->forward(sy::matrix_view<const double>(x.data(), 7, 6));
  BOOST_TEST(f1.metrics.tokens_per_expert.at(0) == 7);
  auto g1 = l1->make_grads();
  const auto dx1 = l1->backward(f1.saved, sy::matrix_view<const double>(x.data(), 7, 6), g1);
  for (double v : dx1) BOOST_TEST(std::isfinite(v));

  auto kE = small_config(4, 4, true, sy::Activation::silu, false);  // every expert per token
  auto l2 = sy::make_layer<double>(kE, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  l2->initialize(3);
  auto f2 = l2->forward(sy::matrix_view<const double>(x.data(), 7, 6));
  for (auto c : f2.metrics.tokens_per_expert) BOOST_TEST(c == 7);

  auto h1 = small_config(2, 2, false, sy::Activation::gelu, false);
  h1.hidden_size = 1;
  auto l3 = sy::make_layer<double>(h1, sy::MoEComms<sy::LocalComm>{&one, &one, &one});
  l3->initialize(3);
  auto f3 = l3->forward(sy::matrix_view<const double>(x.data(), 7, 1));
  BOOST_TEST(f3.y.size() == 7u);

  auto k2e1 = small_config(1, 2, false, sy::Activation::relu, false);  // k > E
  BOOST_CHECK_EXCEPTION(sy::make_layer<double>(k2e1, sy::MoEComms<sy::LocalComm>{&one, &one, &one}),
                        sy::config_error, [](const sy::config_error& e) {
                          return std::string(e.what()).find("k = 2 with 1 experts") != std::string::npos;
                        });
}

// The exchange arithmetic both layers share (layer/detail/exchange.hpp): 3 peers, 2 local
// experts, block_rows[p][le] rows from peer p for local expert le.
BOOST_AUTO_TEST_CASE(exchange_blocks_between_source_major_and_expert_major_order) {
  namespace d = sy::detail;
  const std::vector<std::int64_t> rows{1, 2, 0, 3, 4, 5};  // p0: 1, 2; p1: 0, 3; p2: 4, 5
  const d::block_offsets o = d::exchange_block_offsets(rows, 3, 2);
  // Source-major [p][le]: 0, 1, 3, 3, 6, 10. Expert-major [le][p]: le 0 is p0 (1), p1 (0), p2 (4)
  // at 0, 1, 1; le 1 is p0 (2), p1 (3), p2 (5) at 5, 7, 10.
  BOOST_TEST(o.source_major == (std::vector<std::int64_t>{0, 1, 3, 3, 6, 10}),
             boost::test_tools::per_element());
  BOOST_TEST(o.expert_major == (std::vector<std::int64_t>{0, 5, 1, 7, 1, 10}),
             boost::test_tools::per_element());
  BOOST_TEST(d::exchange_peer_elements(rows, 3, 2, 4) == (std::vector<std::int64_t>{12, 12, 36}),
             boost::test_tools::per_element());
  BOOST_TEST(d::exchange_peer_elements(rows, 3, 2, 4, 1) == (std::vector<std::int64_t>{12, 0, 36}),
             boost::test_tools::per_element());
  BOOST_TEST(d::exchange_expert_offsets(rows, 3, 2) == (std::vector<sy::index_t>{0, 5, 15}),
             boost::test_tools::per_element());
  BOOST_TEST(d::exchange_expert_offsets(rows, 3, 2, 2) == (std::vector<sy::index_t>{0, 1, 6}),
             boost::test_tools::per_element());
  // Every block keeps its size in both orders: the two offset lists are permutations of the
  // same block starts, and the last block ends at the total.
  std::int64_t total = 0;
  for (auto r : rows) total += r;
  BOOST_TEST(o.source_major.back() + rows.back() == total);
  BOOST_TEST(o.expert_major.back() + rows.back() == total);
}

// Tensor-parallel experts need their communicator, of the config's size; the run itself is
// tested under mpirun.
BOOST_AUTO_TEST_CASE(tensor_parallel_experts_need_their_group) {
  auto c = sy_test::small_config(4, 2, true, sy::Activation::silu, false);
  c.ffn_hidden_size = 8;
  c.tensor_parallel_size = 2;
  sy::LocalComm one;
  using Comms = sy::MoEComms<sy::LocalComm>;
  const auto has = [](const std::string& what) {
    return [what](const sy::config_error& e) {
      return std::string(e.what()).find(what) != std::string::npos;
    };
  };
  BOOST_CHECK_EXCEPTION(sy::make_layer<double>(c, Comms{&one, &one, &one}), sy::config_error,
                        has("tensor_parallel_size: 2 needs MoEComms::tensor_parallel"));
  BOOST_CHECK_EXCEPTION(sy::make_layer<double>(c, Comms{&one, &one, &one, &one}), sy::config_error,
                        has("the tensor-parallel communicator has 1 ranks but the config needs 2"));
  // tp 1 may pass a one-rank TP communicator or none.
  c.tensor_parallel_size = 1;
  const auto layer = sy::make_layer<double>(c, Comms{&one, &one, &one, &one});
  BOOST_TEST(layer->tp_rank() == 0);
  BOOST_TEST(layer->params().ffn_hidden == 8);
}
