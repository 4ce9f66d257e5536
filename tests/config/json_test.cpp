#include <boost/test/unit_test.hpp>

#include <string>

#include "switchyard/config.hpp"
#include "switchyard/config/json.hpp"
#include "switchyard/routing/from_config.hpp"

namespace sy = switchyard;

namespace {

std::string data(const std::string& name) { return std::string(SY_TEST_DATA_DIR) + "/" + name; }

bool mentions(const std::vector<sy::problem>& ps, const std::string& text) {
  for (const auto& p : ps)
    if (p.message.find(text) != std::string::npos) return true;
  return false;
}

// A config with every field away from its default (valid or not: round trips do not validate).
sy::Config unusual_config() {
  sy::Config c;
  c.num_experts = 64;
  c.num_experts_per_token = 6;
  c.capacity_factor = 1.0625;
  c.router_z_loss_coeff = 0.0005;
  c.expert_dropout = 0.125;
  c.enable_load_balancing = false;
  c.sharding_strategy = sy::ShardingStrategy::Dynamic;
  c.max_expert_batch_size = 4096;
  c.enable_gradient_accumulation = true;
  c.gradient_accumulation_steps = 8;
  c.initialization_strategy = sy::InitStrategy::TruncatedNormal;
  c.enable_expert_sync = true;
  c.sync_frequency = 7;
  c.gate_network.present = true;
  c.load_balancing.present = true;
  c.load_balancing.enable_auto_balancing = false;
  c.load_balancing.imbalance_threshold = 0.15;
  c.load_balancing.check_frequency = 7;
  c.load_balancing.max_concurrent_migrations = 3;
  c.load_balancing.load_smoothing_factor = 0.25;
  c.migration.present = true;
  c.migration.enable_migration = true;
  c.migration.triggers = {sy::MigrationTrigger::Periodic, sy::MigrationTrigger::LoadImbalance};
  c.migration.preferred_strategies = sy::MigrationStrategy::CompleteMigration;
  c.migration.cooldown_period = 9;
  c.migration.max_migration_distance = 3;
  c.enable_expert_migration = true;
  c.migration_threshold = 0.45;
  c.memory_per_expert_mb = 1024;
  c.communication_overlap = false;
  c.gradient_compression = true;
  c.score_function = sy::ScoreFunction::sqrtsoftplus;
  c.pre_softmax = true;
  c.topk_scaling_factor = 2.5;
  c.num_groups = 8;
  c.group_topk = 3;
  c.enable_expert_bias = true;
  c.expert_bias.assign(64, 0.0);
  c.expert_bias[5] = -0.001;
  c.expert_bias_update_rate = 0.01;
  c.load_balancing_type = {sy::LoadBalancingType::seq_aux_loss, sy::LoadBalancingType::aux_loss};
  c.load_balance_loss_coeff = {0.02, 0.0};
  c.input_jitter_eps = 0.01;
  c.token_layout = sy::TokenLayout::batch_seq;
  c.token_dispatch = sy::TokenDispatch::capacity;
  c.drop_policy = sy::DropPolicy::position;
  c.pad_to_capacity = true;
  c.capacity_formula = sy::CapacityFormula::deepspeed;
  c.min_capacity = 4;
  c.hidden_size = 7168;
  c.ffn_hidden_size = 2048;
  c.num_layers = 61;
  c.moe_layer_frequency = 3;
  c.moe_layer_pattern = {0, 0, 0, 1, 1};
  c.activation = sy::Activation::gelu_tanh;
  c.gated = true;
  c.add_bias_linear = true;
  c.num_attention_heads = 128;
  c.world_size = 256;
  c.data_parallel_size = 4;
  c.expert_parallel_size = 64;
  c.tensor_parallel_size = 1;
  c.pipeline_parallel_size = 1;
  c.expert_placement = sy::ExpertPlacement::round_robin;
  c.distributed_backend = sy::DistributedBackend::nccl;
  c.batch_size_per_gpu = 3;
  c.sequence_length = 4096;
  c.optimizer = sy::Optimizer::sgd;
  c.learning_rate = 3e-5;
  c.weight_decay = 0.05;
  c.precision = sy::Precision::float16;
  return c;
}

}  // namespace

BOOST_AUTO_TEST_CASE(nested_dialect_loads_seed_003) {
  const auto p = sy::load_config_file(data("seed003_nested.json"));
  BOOST_TEST((p.dialect == sy::Dialect::nested));
  const auto& c = p.config;
  BOOST_TEST(c.num_layers == 32);
  BOOST_TEST(c.hidden_size == 4096);
  BOOST_TEST(c.num_attention_heads.value() == 32);
  BOOST_TEST(c.moe_layer_frequency == 2);
  BOOST_TEST(c.num_experts == 64);
  BOOST_TEST(c.num_experts_per_token == 2);
  BOOST_TEST(c.batch_size_per_gpu == 4);
  BOOST_TEST(c.sequence_length == 2048);
  BOOST_TEST((c.optimizer == sy::Optimizer::adamw));
  BOOST_TEST(c.learning_rate == 1e-4);
  BOOST_TEST((c.precision == sy::Precision::bfloat16));
  BOOST_TEST(c.dp() == 2);
  BOOST_TEST(c.expert_parallel_size == 8);
  BOOST_TEST(c.world() == 16);
  BOOST_TEST(c.capacity_factor == 1.25);
  BOOST_TEST(c.load_balance_loss_coeff == 0.01);
  BOOST_TEST(c.router_z_loss_coeff == 0.001);
}

BOOST_AUTO_TEST_CASE(model_config_dialect_loads_seed_001) {
  const auto p = sy::load_config_file(data("seed001_model_config.json"));
  BOOST_TEST((p.dialect == sy::Dialect::model_config));
  const auto& c = p.config;
  BOOST_TEST(c.hidden_size == 4096);
  BOOST_TEST(c.num_layers == 32);
  BOOST_TEST(c.num_experts == 64);
  BOOST_TEST(c.num_experts_per_token == 2);
  BOOST_TEST(c.moe_layer_frequency == 2);
  BOOST_TEST(c.load_balance_loss_coeff == 0.01);
  BOOST_TEST(c.world() == 16);
  BOOST_TEST(c.dp() == 8);
  BOOST_TEST(c.expert_parallel_size == 2);
  BOOST_TEST(c.communication_overlap);
  BOOST_TEST((c.distributed_backend == sy::DistributedBackend::nccl));
}

BOOST_AUTO_TEST_CASE(flat_dialect_loads_the_torsh_example) {
  const auto p = sy::load_config_file(data("seed000_flat.json"));
  BOOST_TEST((p.dialect == sy::Dialect::flat));
  BOOST_TEST(p.config.num_experts == 16);
  BOOST_TEST(p.config.capacity_factor == 1.5);
  BOOST_TEST((p.config.sharding_strategy == sy::ShardingStrategy::ModelParallel));
}

BOOST_AUTO_TEST_CASE(write_then_read_gives_the_same_config_in_every_dialect) {
  for (auto d : {sy::Dialect::flat, sy::Dialect::nested, sy::Dialect::model_config}) {
    for (const sy::Config& c : {sy::Config{}, sy::presets::large_scale(), unusual_config()}) {
      BOOST_TEST_CONTEXT("dialect " << sy::enum_name(d)) {
        const std::string text = boost::json::serialize(sy::to_json(c, d));
        const auto back = sy::parse_config(boost::json::parse(text));
        BOOST_TEST(back.problems.empty(), sy::join_problems(back.problems));
        BOOST_TEST((back.dialect == d));
        BOOST_TEST((back.config == c), text);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(several_aux_losses_in_megatrons_list_form) {
  using LB = sy::LoadBalancingType;
  // Megatron-Core's moe_router_load_balancing_type / moe_aux_loss_coeff lists, paired by position.
  auto p = sy::parse_and_validate(R"({"num_experts": 8, "sequence_length": 4,
      "load_balancing_type": ["global_aux_loss", "seq_aux_loss"],
      "load_balance_loss_coeff": [0.001, 0.0001]})");
  BOOST_TEST(p.problems.empty(), sy::join_problems(p.problems));
  const sy::Config& c = p.config;
  BOOST_TEST(c.load_balancing_type.size() == 2u);
  BOOST_TEST((c.load_balancing_type[0] == LB::global_aux_loss));
  BOOST_TEST(c.aux_loss_coeff(LB::seq_aux_loss) == 0.0001);
  BOOST_TEST(c.aux_loss_coeff(LB::global_aux_loss) == 0.001);
  BOOST_TEST(c.aux_loss_coeff(LB::aux_loss) == 0.0);
  BOOST_TEST(c.has_aux_loss());
  BOOST_TEST(!(c.load_balancing_type == LB::global_aux_loss));  // a list is not one value
  BOOST_TEST(sy::detail::field_text(c, "load_balancing_type") == "[global_aux_loss, seq_aux_loss]");
  const auto flat = sy::to_json(c);
  BOOST_TEST(boost::json::serialize(flat.at("load_balancing_type")) ==
             R"(["global_aux_loss","seq_aux_loss"])");
  BOOST_TEST(boost::json::serialize(flat.at("load_balance_loss_coeff")) == "[1E-3,1E-4]");
  // The losses in Megatron's order (aux, seq, global); a zero coefficient turns one off.
  const sy::LossParams lp = sy::loss_params(c);
  BOOST_TEST(lp.balance.size() == 2u);
  BOOST_TEST((lp.balance.at(0).type == LB::seq_aux_loss));
  BOOST_TEST(lp.balance.at(0).coeff == 0.0001);
  BOOST_TEST((lp.balance.at(1).type == LB::global_aux_loss));
  sy::Config off = c;
  off.load_balance_loss_coeff = {0.0, 0.0001};
  BOOST_TEST(sy::loss_params(off).balance.size() == 1u);

  // A one-entry list is the single value.
  p = sy::parse_and_validate(R"({"load_balancing_type": ["seq_aux_loss"],
      "load_balance_loss_coeff": [0.02]})");
  BOOST_TEST(p.problems.empty(), sy::join_problems(p.problems));
  BOOST_TEST((p.config.load_balancing_type == LB::seq_aux_loss));
  BOOST_TEST((p.config.load_balance_loss_coeff == 0.02));

  // Malformed lists name the entry; rules catch what parses.
  p = sy::parse_and_validate(
      R"({"load_balancing_type": [], "load_balance_loss_coeff": [1, 2, 3, 4]})");
  BOOST_TEST(mentions(p.problems, "load_balancing_type: expected 1 to 3 entries, got 0"));
  BOOST_TEST(mentions(p.problems, "load_balance_loss_coeff: expected 1 to 3 entries, got 4"));
  p = sy::parse_and_validate(R"({"load_balancing_type": ["aux_loss", "seq_aux_los"],
      "load_balance_loss_coeff": [0.01, "x"]})");
  BOOST_TEST(mentions(p.problems, R"(load_balancing_type: entry 1: "seq_aux_los" is not one of)"));
  BOOST_TEST(mentions(p.problems, R"(did you mean "seq_aux_loss"?)"));
  BOOST_TEST(
      mentions(p.problems, "load_balance_loss_coeff: entry 1: expected a number, got a string"));
  p = sy::parse_and_validate(R"({"load_balancing_type": ["aux_loss", "seq_aux_loss"],
      "load_balance_loss_coeff": 0.01})");
  BOOST_TEST(mentions(p.problems,
                      "load_balance_loss_coeff: 1 coefficient (0.01) for 2 "
                      "load_balancing_type entries ([aux_loss, seq_aux_loss])"));
  p = sy::parse_and_validate(R"({"load_balancing_type": ["aux_loss", "sinkhorn"],
      "load_balance_loss_coeff": [0.01, 0]})");
  BOOST_TEST(mentions(p.problems,
                      "load_balancing_type: entry 1: sinkhorn is not an aux loss; a "
                      "list combines aux_loss, seq_aux_loss and global_aux_loss"));
  // Megatron routes a list ["sinkhorn"] with plain top-k: not the same as "sinkhorn", so rejected.
  p = sy::parse_and_validate(
      R"({"load_balancing_type": ["sinkhorn"], "load_balance_loss_coeff": [0]})");
  BOOST_TEST(mentions(p.problems, "load_balancing_type: entry 0: sinkhorn is not an aux loss"));
  p = sy::parse_and_validate(
      R"({"load_balancing_type": ["none"], "load_balance_loss_coeff": [0]})");
  BOOST_TEST(mentions(p.problems, "load_balancing_type: entry 0: none is not an aux loss"));
  p = sy::parse_and_validate(R"({"load_balancing_type": ["aux_loss", "aux_loss"],
      "load_balance_loss_coeff": [0.01, -0.5]})");
  BOOST_TEST(mentions(p.problems,
                      "load_balancing_type: got [aux_loss, aux_loss] (a list in "
                      "load_balancing_type combines 1 to 3 aux losses"));
  BOOST_TEST(mentions(p.problems,
                      "load_balance_loss_coeff: got [0.01, -0.5] (load_balance_loss_coeff must be "
                      "a number >= 0 that float32 holds, at most 3.4e38 (each entry))"));
  p = sy::parse_and_validate(R"({"semantics": "deepspeed", "pre_softmax": true,
      "router_z_loss_coeff": 0, "load_balancing_type": ["aux_loss", "seq_aux_loss"],
      "load_balance_loss_coeff": [0.01, 0.01]})");
  BOOST_TEST(mentions(p.problems, "semantics deepspeed has DeepSpeed's aux loss only"));
}

// torsh's load_balancing object: its fields (the rest at torsh's defaults), in the nested
// dialect too; an unknown or mistyped key names the key inside the object.
BOOST_AUTO_TEST_CASE(load_balancing_object_fields) {
  auto p = sy::parse_and_validate(R"({"sharding_strategy": "Dynamic", "expert_parallel_size": 2,
      "load_balancing": {"check_frequency": 10, "load_smoothing_factor": 0.5}})");
  BOOST_TEST(p.problems.empty(), sy::join_problems(p.problems));
  BOOST_TEST(p.config.load_balancing.present);
  BOOST_TEST(p.config.load_balancing.check_frequency == 10);
  BOOST_TEST(p.config.load_balancing.load_smoothing_factor == 0.5);
  BOOST_TEST(p.config.load_balancing.imbalance_threshold == 0.3);
  BOOST_TEST(p.config.load_balancing.max_concurrent_migrations == 2);
  BOOST_TEST(p.config.load_balancing.enable_auto_balancing);
  BOOST_TEST(sy::detail::field_text(p.config, "load_balancing") ==
             "{enable_auto_balancing: true, imbalance_threshold: 0.3, check_frequency: 10, "
             "max_concurrent_migrations: 2, load_smoothing_factor: 0.5}");
  p = sy::parse_and_validate(R"({"distributed": {"sharding_strategy": "Dynamic",
      "expert_parallel_size": 2}, "moe_optimization": {"load_balancing": {}}})");
  BOOST_TEST(p.problems.empty(), sy::join_problems(p.problems));
  BOOST_TEST((p.config.load_balancing == sy::load_balancing_object{.present = true}));
  p = sy::parse_and_validate(R"({"sharding_strategy": "Dynamic", "expert_parallel_size": 2,
      "load_balancing": {"check_frequncy": 10}})");
  BOOST_TEST(mentions(p.problems,
                      "load_balancing: check_frequncy: unknown key; did you mean "
                      "\"check_frequency\"?"),
             sy::join_problems(p.problems));
  p = sy::parse_and_validate(R"({"sharding_strategy": "Dynamic", "expert_parallel_size": 2,
      "load_balancing": {"max_concurrent_migrations": 2.5}})");
  BOOST_TEST(mentions(p.problems, "load_balancing: max_concurrent_migrations: expected an integer"),
             sy::join_problems(p.problems));
  p = sy::parse_and_validate(R"({"load_balancing": {}})");
  BOOST_TEST(mentions(p.problems, "load_balancing: an object with sharding_strategy ModelParallel"),
             sy::join_problems(p.problems));
  p = sy::parse_and_validate(R"({"load_balancing": true})");
  BOOST_TEST(mentions(p.problems, "load_balancing: expected an object or null"),
             sy::join_problems(p.problems));
}

BOOST_AUTO_TEST_CASE(boost_json_value_from_and_value_to) {
  sy::Config c;
  c.num_experts = 32;
  c.expert_parallel_size = 4;
  const boost::json::value v = boost::json::value_from(c);
  BOOST_TEST(v.at("num_experts").as_int64() == 32);
  BOOST_TEST((boost::json::value_to<sy::Config>(v) == c));
  boost::json::value bad = v;
  bad.as_object()["expert_parallel_size"] = 3;
  BOOST_CHECK_THROW(boost::json::value_to<sy::Config>(bad), sy::config_error);
}

BOOST_AUTO_TEST_CASE(unknown_keys_are_errors_with_did_you_mean) {
  auto p = sy::parse_and_validate(R"({"num_expert": 8})");
  BOOST_TEST(mentions(p.problems, R"(num_expert: unknown key; did you mean "num_experts"?)"));
  p = sy::parse_and_validate(R"({"model": {"moe": {"num_experts_per_token": 2}}})");
  BOOST_TEST(mentions(p.problems, R"(model.moe.num_experts_per_token: unknown key; did you mean "num_experts_per_tok"?)"));
  p = sy::parse_and_validate(R"({"totally_unrelated": 1})");
  BOOST_TEST(mentions(p.problems, "totally_unrelated: unknown key"));
  BOOST_TEST(!mentions(p.problems, "did you mean"));
  // Found by the config fuzzer: an empty key used to give a problem with an empty path.
  p = sy::parse_and_validate(R"({"num_experts": 16, "": 1.5})");
  BOOST_TEST(mentions(p.problems, R"("": unknown key)"));
  BOOST_TEST(!p.problems.at(0).path.empty());
  p = sy::parse_and_validate(R"({"model": {"": {}}})");
  BOOST_TEST(mentions(p.problems, R"(model."": unknown key)"));
  p = sy::parse_and_validate(R"({"model": {"moe": 3}})");
  BOOST_TEST(mentions(p.problems, "model.moe: expected an object, got an integer"));
}

// A file that mixes dialects: the unknown key says which dialect the file is read in, why, and
// where the field lives there (it used to be a bare "unknown key").
BOOST_AUTO_TEST_CASE(a_key_of_another_dialect_names_the_dialect_read) {
  auto p = sy::parse_and_validate(R"({"model": {"hidden_size": 64}, "num_experts": 8})");
  BOOST_TEST(mentions(
      p.problems,
      R"(num_experts: unknown key: the file is read in the nested dialect (it has "model"), where this field is model.moe.num_experts; "num_experts" is the flat dialect's key (a file uses one dialect))"));
  p = sy::parse_and_validate(
      R"({"distributed_config": {"world_size": 1}, "model": {"num_layers": 2}})");
  BOOST_TEST(mentions(
      p.problems,
      R"(model: unknown key: the file is read in the model_config dialect (it has "distributed_config"); "model" is a section of the nested dialect (a file uses one dialect))"));
  p = sy::parse_and_validate(
      R"({"model_config": {"moe_layer_config": {"top_k": 2}}, "training": {"learning_rate": 0.1}})");
  BOOST_TEST(mentions(
      p.problems,
      R"(training: unknown key: the file is read in the model_config dialect (it has "model_config"); "training" is a section of the nested dialect)"));
  p = sy::parse_and_validate(R"({"model": {"moe": {"top_k": 2}}})");
  BOOST_TEST(mentions(p.problems, "model.moe.top_k: unknown key"));
  BOOST_TEST(!mentions(p.problems, "dialect"));  // no dialect has that path
}

BOOST_AUTO_TEST_CASE(wrong_types_and_bad_enum_names_are_reported) {
  auto p = sy::parse_and_validate(R"({"num_experts": "eight", "capacity_factor": true,
      "score_function": "softmx", "expert_bias": [1, "x"], "pre_softmax": 1})");
  BOOST_TEST(mentions(p.problems, "num_experts: expected an integer, got a string"));
  BOOST_TEST(mentions(p.problems, "capacity_factor: expected a number, got a boolean"));
  BOOST_TEST(mentions(p.problems, R"(score_function: "softmx" is not one of "softmax", "sigmoid", "sqrtsoftplus"; did you mean "softmax"?)"));
  BOOST_TEST(mentions(p.problems, "expert_bias: entry 1: expected a number, got a string"));
  BOOST_TEST(mentions(p.problems, "pre_softmax: expected true or false, got an integer"));
  p = sy::parse_and_validate(R"({"num_experts": 2.5})");
  BOOST_TEST(mentions(p.problems, "num_experts: expected an integer, got 2.5"));
  // Found by the config fuzzer (UBSan): a huge double used to be cast to an integer first.
  p = sy::parse_and_validate(R"({"num_experts": 2.2e22})");
  BOOST_TEST(mentions(p.problems, "num_experts: expected an integer, got 2.2e+22"));
  p = sy::parse_and_validate(R"({"num_experts": 16.0})");
  BOOST_TEST(p.problems.empty());
  BOOST_TEST(p.config.num_experts == 16);
  // Beyond int64 the refused value is named.
  p = sy::parse_and_validate(R"({"num_experts": 18446744073709551615})");
  BOOST_TEST(mentions(p.problems, "num_experts: integer too large, got 18446744073709551615"));
}

BOOST_AUTO_TEST_CASE(whole_numbers_are_read_within_their_range) {
  namespace json = boost::json;
  using sy::detail::read_whole;
  std::int64_t i = 7;
  std::uint64_t u = 7;
  // Integers of either JSON kind, and doubles with no fraction.
  BOOST_TEST(read_whole(json::value(-5), i, INT64_MIN, INT64_MAX).empty());
  BOOST_TEST(i == -5);
  BOOST_TEST(read_whole(json::value(UINT64_MAX), u, std::uint64_t{0}, UINT64_MAX).empty());
  BOOST_TEST(u == UINT64_MAX);
  BOOST_TEST(read_whole(json::value(5.0), u, std::uint64_t{0}, UINT64_MAX).empty());
  BOOST_TEST(u == 5u);
  BOOST_TEST(read_whole(json::value(-0.0), u, std::uint64_t{0}, UINT64_MAX).empty());
  BOOST_TEST(u == 0u);
  BOOST_TEST(read_whole(json::value(-9223372036854775808.0), i, INT64_MIN, INT64_MAX).empty());
  BOOST_TEST(i == INT64_MIN);
  BOOST_TEST(read_whole(json::value(18446744073709549568.0), u, std::uint64_t{0}, UINT64_MAX)
                 .empty());  // the largest double below 2^64
  BOOST_TEST(u == 18446744073709549568u);
  // Refused: what the value is, and the output left alone.
  u = 7;
  BOOST_TEST(read_whole(json::value(-1), u, std::uint64_t{0}, UINT64_MAX) == "-1");
  BOOST_TEST(read_whole(json::value(4294967296), u, std::uint64_t{0}, std::uint64_t{UINT32_MAX}) ==
             "4294967296");
  BOOST_TEST(read_whole(json::value(UINT64_MAX), i, INT64_MIN, INT64_MAX) ==
             "18446744073709551615");
  BOOST_TEST(read_whole(json::value(2.5), u, std::uint64_t{0}, UINT64_MAX) == "2.5");
  BOOST_TEST(read_whole(json::value(-1.0), u, std::uint64_t{0}, UINT64_MAX) == "-1");
  BOOST_TEST(read_whole(json::value(18446744073709551616.0), u, std::uint64_t{0}, UINT64_MAX) ==
             "18446744073709551616");  // 2^64: the conversion would be undefined
  BOOST_TEST(read_whole(json::value(9223372036854775808.0), i, INT64_MIN, INT64_MAX) ==
             "9223372036854775808");  // 2^63
  BOOST_TEST(read_whole(json::value(3.0), u, std::uint64_t{4}, UINT64_MAX) == "3");
  BOOST_TEST(read_whole(json::value("5"), u, std::uint64_t{0}, UINT64_MAX) == "a string");
  BOOST_TEST(read_whole(json::value(nullptr), i, INT64_MIN, INT64_MAX) == "null");
  BOOST_TEST(u == 7u);
  BOOST_TEST(i == INT64_MIN);
}

// Megatron-Core's moe_layer_freq list form (e.g. DeepSeek-V3's first three layers dense).
BOOST_AUTO_TEST_CASE(moe_layer_pattern_is_megatrons_moe_layer_freq_list) {
  auto p = sy::parse_and_validate(R"({"num_layers": 5, "moe_layer_pattern": [0, 0, 1, 1, 0]})");
  BOOST_TEST(p.problems.empty(), sy::join_problems(p.problems));
  const std::vector<bool> moe = {false, false, true, true, false};
  for (std::int64_t i = 0; i < 5; ++i) BOOST_TEST(p.config.is_moe_layer(i) == moe[i]);
  BOOST_TEST(!p.config.is_moe_layer(5));
  BOOST_TEST(sy::detail::field_text(p.config, "moe_layer_pattern") == "[0, 0, 1, 1, 0]");
  BOOST_TEST(boost::json::serialize(sy::to_json(p.config).at("moe_layer_pattern")) ==
             "[0,0,1,1,0]");
  // Without a pattern, the frequency: block i is MoE when i % frequency == 0.
  sy::Config f;
  f.num_layers = 5;
  f.moe_layer_frequency = 2;
  for (std::int64_t i = 0; i < 5; ++i) BOOST_TEST(f.is_moe_layer(i) == (i % 2 == 0));
  BOOST_TEST(!f.is_moe_layer(-2));
  // The nested dialect reads it under model.
  p = sy::parse_and_validate(R"({"model": {"num_layers": 2, "moe_layer_pattern": [1, 0]}})");
  BOOST_TEST(p.problems.empty(), sy::join_problems(p.problems));
  BOOST_TEST((p.config.moe_layer_pattern == std::vector<std::int64_t>{1, 0}));
  // Wrong types name the entry; Megatron's one-field form is pointed to the pattern.
  p = sy::parse_and_validate(R"({"num_layers": 2, "moe_layer_pattern": [1, 0.5]})");
  BOOST_TEST(mentions(p.problems, "moe_layer_pattern: entry 1: expected an integer, got 0.5"));
  p = sy::parse_and_validate(R"({"num_layers": 2, "moe_layer_pattern": 1})");
  BOOST_TEST(
      mentions(p.problems, "moe_layer_pattern: expected an array of integers, got an integer"));
  p = sy::parse_and_validate(R"({"num_layers": 2, "moe_layer_frequency": [1, 0]})");
  BOOST_TEST(mentions(p.problems,
                      "moe_layer_frequency: expected an integer, got an array; a "
                      "per-layer list of 1 (MoE) and 0 (dense) goes in "
                      "the field moe_layer_pattern"));
}

BOOST_AUTO_TEST_CASE(syntax_errors_and_wrong_roots_are_reported) {
  auto p = sy::parse_and_validate("{\n  \"num_experts\": 8,\n  oops\n}");
  BOOST_TEST(p.problems.size() == 1u);
  BOOST_TEST(mentions(p.problems, "invalid JSON at line 3"));
  p = sy::parse_and_validate("[1, 2]");
  BOOST_TEST(mentions(p.problems, "$: a config must be a JSON object, got an array"));
  p = sy::parse_and_validate(std::string(200, '[') + std::string(200, ']'));
  BOOST_TEST(mentions(p.problems, "invalid JSON"));
  BOOST_CHECK_THROW(sy::load_config_file(data("does_not_exist.json")), sy::config_error);
}

BOOST_AUTO_TEST_CASE(a_key_given_twice_is_reported_with_its_path) {
  // Boost.JSON's DOM would keep the second value without a word.
  auto p = sy::parse_and_validate(R"({"num_experts": 8, "num_experts_per_token": 2,
                                      "num_experts": 16})");
  BOOST_TEST(p.problems.size() == 1u);
  BOOST_TEST(p.problems[0].path == "num_experts");
  BOOST_TEST(mentions(p.problems, "config: num_experts: the key \"num_experts\" is given twice"));
  // Nested objects and arrays give the path; equal keys in different objects are fine, and a key
  // written with an escape is the same key.
  std::vector<sy::problem> problems;
  sy::parse_json_text(R"({"a": {"k": 1}, "b": [{"k": 1}, {"k": 2, "x": [], "\u006B": 3}]})",
                      problems);
  BOOST_TEST(problems.size() == 1u);
  BOOST_TEST(problems.at(0).path == "b[1].k");
  problems.clear();
  sy::parse_json_text(R"({"": 1, "": 2})", problems);  // the empty key too, with a visible path
  BOOST_TEST(problems.size() == 1u);
  BOOST_TEST(problems.at(0).path == "\"\"");
  problems.clear();
  const auto v = sy::parse_json_text(R"({"a": {"k": 1}, "b": [{"k": 1}, {"k": 2}]})", problems);
  BOOST_TEST(problems.empty());
  BOOST_TEST(v.at("b").at(1).at("k").as_int64() == 2);
}

BOOST_AUTO_TEST_CASE(model_config_constants_accept_only_their_value) {
  auto p = sy::parse_and_validate(
      R"({"distributed_config": {"master_addr": "10.0.0.1", "master_port": "env://"}})");
  BOOST_TEST(mentions(
      p.problems,
      R"(distributed_config.master_addr: the only supported value is "env://", got "10.0.0.1")"));
  p = sy::parse_and_validate(R"({"model_config": {"model_type": "dense"}})");
  BOOST_TEST(mentions(p.problems, "model_config.model_type"));
}

// torsh's ExpertMigrationConfig, as serde writes it (arrays of variant names).
BOOST_AUTO_TEST_CASE(migration_object_fields) {
  auto p = sy::parse_and_validate(R"({"expert_parallel_size": 2,
      "migration": {"enable_migration": true, "triggers": ["Periodic"], "cooldown_period": 20}})");
  BOOST_TEST(p.problems.empty(), sy::join_problems(p.problems));
  const sy::migration_object& m = p.config.migration;
  BOOST_TEST(m.present);
  BOOST_TEST(m.enable_migration);
  BOOST_TEST((m.triggers == sy::MigrationTrigger::Periodic));
  BOOST_TEST((m.preferred_strategies == sy::MigrationStrategy::GradualMigration));
  BOOST_TEST(m.cooldown_period == 20);
  BOOST_TEST(m.max_migration_distance == 1);
  BOOST_TEST(p.config.migration_requested());
  BOOST_TEST(sy::detail::field_text(p.config, "migration") ==
             "{enable_migration: true, triggers: [Periodic], preferred_strategies: "
             "[GradualMigration], cooldown_period: 20, max_migration_distance: 1}");
  // Written as torsh's serde would read it: the lists as arrays.
  const auto flat = sy::to_json(p.config, sy::Dialect::flat);
  BOOST_TEST(boost::json::serialize(flat.at("migration")) ==
             R"({"enable_migration":true,"triggers":["Periodic"],"preferred_strategies":)"
             R"(["GradualMigration"],"cooldown_period":20,"max_migration_distance":1})");
  p = sy::parse_and_validate(R"({"distributed": {"expert_parallel_size": 2}, "moe_optimization":
      {"migration": {"enable_migration": true, "preferred_strategies": ["CompleteMigration"]}}})");
  BOOST_TEST(p.problems.empty(), sy::join_problems(p.problems));
  BOOST_TEST(p.config.migration_move_limit() == 0);
  p = sy::parse_and_validate(R"({"expert_parallel_size": 2,
      "migration": {"enable_migration": true, "cooldown_perod": 5}})");
  BOOST_TEST(mentions(p.problems,
                      "migration: cooldown_perod: unknown key; did you mean \"cooldown_period\"?"),
             sy::join_problems(p.problems));
  p = sy::parse_and_validate(R"({"expert_parallel_size": 2,
      "migration": {"enable_migration": true, "triggers": ["LoadImbalanced"]}})");
  BOOST_TEST(mentions(p.problems, "migration: triggers: entry 0: "), sy::join_problems(p.problems));
  p = sy::parse_and_validate(R"({"expert_parallel_size": 2,
      "migration": {"enable_migration": true, "triggers": []}})");
  BOOST_TEST(mentions(p.problems, "migration: triggers: expected 1 to 4 entries, got 0"),
             sy::join_problems(p.problems));
  p = sy::parse_and_validate(R"({"migration": {"enable_migration": "yes"}})");
  BOOST_TEST(mentions(p.problems, "migration: enable_migration: expected true or false"),
             sy::join_problems(p.problems));
  // torsh's default object has enable_migration false: an object that would do nothing.
  p = sy::parse_and_validate(R"({"expert_parallel_size": 2, "migration": {}})");
  BOOST_TEST(mentions(p.problems, "migration: migration.enable_migration false in"),
             sy::join_problems(p.problems));
}

BOOST_AUTO_TEST_CASE(unbuilt_torsh_objects_are_rejected_not_ignored) {
  auto p = sy::parse_and_validate(R"({"gate_network": {"num_gate_layers": 2}})");
  BOOST_TEST(mentions(p.problems, "gate_network: got {...} (gate_network is not built yet"));
  p = sy::parse_and_validate(R"({"gate_network": null, "migration": null, "load_balancing": null})");
  BOOST_TEST(p.problems.empty());
}

BOOST_AUTO_TEST_CASE(shipped_example_configs_are_valid) {
  for (const char* name :
       {"quickstart.json", "mixtral_8x7b_ep8.json", "deepseek_v3_like.json", "migration.json"}) {
    BOOST_TEST_CONTEXT(name) {
      BOOST_CHECK_NO_THROW(sy::load_config_file(std::string(SY_EXAMPLE_CONFIG_DIR) + "/" + name));
    }
  }
}
