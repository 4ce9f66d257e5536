// `switchyard plan CONFIG.json [--json] [--rank R]`.
#include <fmt/core.h>

#include <cstdio>
#include <string>
#include <vector>

#include "commands.hpp"
#include "switchyard/config.hpp"
#include "switchyard/config/json.hpp"

namespace switchyard::cli {
namespace {

struct group_kind_info {
  GroupKind kind;
  const char* key;
  const char* label;
};
constexpr group_kind_info group_kinds[] = {
    {GroupKind::expert_parallel, "expert_parallel", "expert-parallel (all_to_all)"},
    {GroupKind::data_parallel, "data_parallel", "data-parallel (replicas of one expert shard)"},
    {GroupKind::expert_data_parallel, "expert_data_parallel",
     "expert-data-parallel (expert grads, sync)"},
    {GroupKind::dense_data_parallel, "dense_data_parallel",
     "dense data-parallel (router gradients)"},
    {GroupKind::tensor_parallel, "tensor_parallel", "tensor-parallel"},
    {GroupKind::pipeline_parallel, "pipeline_parallel", "pipeline-parallel"},
};

// "0-7" for a run of consecutive ids, else "0,2,4,6".
std::string compact(const std::vector<std::int64_t>& ids) {
  bool consecutive = ids.size() > 2;
  for (std::size_t i = 1; i < ids.size() && consecutive; ++i) consecutive = ids[i] == ids[i - 1] + 1;
  if (consecutive) return fmt::format("{}-{}", ids.front(), ids.back());
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

std::string mib(std::int64_t bytes) {
  return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

boost::json::array to_array(const std::vector<std::int64_t>& v) {
  boost::json::array a;
  for (auto x : v) a.push_back(x);
  return a;
}

struct plan_options {
  std::string file;
  bool json = false;
  std::int64_t rank = 0;
};

int run_plan(const plan_options& o) {
  const ParsedConfig parsed = load_config_file(o.file);
  const Config& c = parsed.config;
  const Layout layout(c);
  if (o.rank < 0 || o.rank >= layout.world())
    throw config_error(fmt::format("--rank {} is outside the world of {} ranks", o.rank,
                                   layout.world()));
  const std::int64_t tokens = c.tokens_per_rank();
  const auto cap = capacity(c, tokens);
  const MemoryEstimate mem = estimate_memory(c, o.rank);
  const std::int64_t ep_groups = c.sharding_strategy == ShardingStrategy::DataParallel
                                     ? 1
                                     : c.expert_parallel_size;
  std::vector<std::vector<std::int64_t>> experts;
  for (std::int64_t r = 0; r < ep_groups; ++r)
    experts.push_back(experts_of_ep_rank(c.num_experts, ep_groups, r, c.expert_placement));

  if (o.json) {
    boost::json::object out;
    out["config"] = o.file;
    out["dialect"] = std::string(enum_name(parsed.dialect));
    out["world_size"] = layout.world();
    out["data_parallel_size"] = layout.dp();
    out["expert_parallel_size"] = layout.ep();
    out["tensor_parallel_size"] = layout.tp();
    out["pipeline_parallel_size"] = layout.pp();
    boost::json::object groups;
    for (const auto& g : group_kinds) {
      boost::json::array all;
      for (const auto& members : layout.groups(g.kind)) all.push_back(to_array(members));
      groups[g.key] = std::move(all);
    }
    out["groups"] = std::move(groups);
    out["expert_placement"] = std::string(enum_name(c.expert_placement));
    boost::json::array per_rank;
    for (const auto& e : experts) per_rank.push_back(to_array(e));
    out["experts_per_ep_rank"] = std::move(per_rank);
    out["local_experts"] = mem.local_experts;
    out["tokens_per_rank"] = tokens;
    out["micro_batches_per_step"] = c.micro_batches_per_step();
    out["token_dispatch"] = std::string(enum_name(c.token_dispatch));
    out["capacity_formula"] = std::string(enum_name(c.capacity_formula));
    out["capacity"] = cap ? boost::json::value(*cap) : boost::json::value(nullptr);
    boost::json::object m;
    m["rank"] = o.rank;
    m["moe_layers"] = mem.moe_layers;
    m["local_experts"] = mem.local_experts;
    m["rows_per_layer"] = mem.rows_per_layer;
    m["expert_parameters_bytes"] = mem.expert_parameters;
    m["expert_gradients_bytes"] = mem.expert_gradients;
    m["optimizer_state_bytes"] = mem.optimizer_state;
    m["router_bytes"] = mem.router;
    m["shared_expert_bytes"] = mem.shared_expert;
    m["activations_bytes"] = mem.activations;
    m["total_bytes"] = mem.total();
    m["per_expert_bytes"] = mem.per_expert;
    m["memory_per_expert_mb"] = c.memory_per_expert_mb;
    m["fits_memory_per_expert"] = mem.fits_memory_per_expert(c);
    out["memory_per_rank"] = std::move(m);
    out["recommended_num_devices"] = recommended_num_devices(c);
    fmt::print("{}\n", boost::json::serialize(out));
    return 0;
  }

  fmt::print("config {} ({} dialect): valid\n", o.file, enum_name(parsed.dialect));
  fmt::print("layout: world {} = dp {} x ep {} x tp {} x pp {}\n", layout.world(), layout.dp(),
             layout.ep(), layout.tp(), layout.pp());
  constexpr std::size_t max_groups = 16;
  for (const auto& g : group_kinds) {
    const auto all = layout.groups(g.kind);
    std::string line;
    for (std::size_t i = 0; i < all.size() && i < max_groups; ++i) {
      // Appended piece by piece: GCC 12 warns (-Wrestrict) on "{" + std::string here.
      line += '{';
      line += compact(all[i]);
      line += "} ";
    }
    if (all.size() > max_groups) line += fmt::format("... ({} groups)", all.size());
    fmt::print("  {:<46} {}\n", g.label, line);
  }
  fmt::print(
      "experts ({} per EP rank, {}, sharding {}{}):\n", mem.local_experts,
      enum_name(c.expert_placement), enum_name(c.sharding_strategy),
      c.migrates_experts() ? "; the initial placement: " + migration_summary(c) : std::string());
  for (std::size_t r = 0; r < experts.size() && r < max_groups; ++r)
    fmt::print("  ep rank {:<4} experts {}\n", r, compact(experts[r]));
  if (experts.size() > max_groups) fmt::print("  ... ({} EP ranks)\n", experts.size());
  fmt::print(
      "tokens per rank: {} x {} = {}{}\n", c.batch_size_per_gpu, c.sequence_length, tokens,
      c.micro_batches_per_step() > 1
          ? fmt::format(" per micro-batch, {} micro-batches per step", c.micro_batches_per_step())
          : std::string());
  if (cap)
    fmt::print("capacity per expert: {} ({} formula, capacity_factor {}, min_capacity {})\n", *cap,
               enum_name(c.capacity_formula), c.capacity_factor, c.min_capacity);
  else
    fmt::print("capacity per expert: none ({} dispatch)\n", enum_name(c.token_dispatch));
  fmt::print("memory on rank {} ({} MoE layers on its stage, {} local experts, {} rows/layer, {}):\n",
             o.rank, mem.moe_layers, mem.local_experts, mem.rows_per_layer, enum_name(c.precision));
  fmt::print("  expert weights      {:>14}\n", mib(mem.expert_parameters));
  fmt::print("  expert gradients    {:>14}\n", mib(mem.expert_gradients));
  fmt::print("  optimizer state     {:>14}  ({})\n", mib(mem.optimizer_state), enum_name(c.optimizer));
  fmt::print("  router              {:>14}\n", mib(mem.router));
  if (mem.shared_expert > 0) fmt::print("  shared expert       {:>14}\n", mib(mem.shared_expert));
  fmt::print("  MoE activations     {:>14}\n", mib(mem.activations));
  fmt::print("  total               {:>14}\n", mib(mem.total()));
  fmt::print("  one expert          {:>14}  ({} memory_per_expert_mb {})\n", mib(mem.per_expert),
             mem.fits_memory_per_expert(c) ? "fits" : "EXCEEDS", c.memory_per_expert_mb);
  fmt::print("recommended devices: {} ({})\n", recommended_num_devices(c),
             enum_name(c.sharding_strategy));
  return 0;
}

}  // namespace

std::string migration_summary(const Config& c) {
  std::string s = c.migration_periodic()
                      ? std::string(
                            "experts migrate at every check where that lowers the busiest EP "
                            "rank's load (Periodic trigger)")
                      : fmt::format("experts migrate when the EP ranks' imbalance is above {}",
                                    c.migration_imbalance_threshold());
  if (!c.load_balancing.present && !c.migration.present) return s;
  s += fmt::format(" (checked every {} step(s)", c.migration_check_frequency());
  if (c.load_balancing.present)
    s += fmt::format(" on the loads smoothed by {}", c.migration_load_smoothing());
  s += c.migration_move_limit() > 0
           ? fmt::format(", at most {} experts moved per check", c.migration_move_limit())
           : std::string(", as many experts moved per check as the balance needs");
  if (c.migration.present)
    s += fmt::format(
        ", no move within {} step(s) of the last, experts at most {} EP rank(s) "
        "from where they were",
        c.migration_cooldown(), c.migration_max_distance());
  return s + ")";
}

void add_plan_command(CLI::App& app, runner& run) {
  auto opts = std::make_shared<plan_options>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "Validate a config and print its layout, capacity, memory per rank and device count");
  cmd->add_option("config", opts->file, "config JSON (flat, nested or model_config dialect)")
      ->required();
  cmd->add_flag("--json", opts->json, "print the plan as one JSON object");
  cmd->add_option("--rank", opts->rank, "the rank whose memory is estimated (default 0)")
      ->transform(whole_number<std::int64_t>(0, INT64_MAX));
  cmd->callback([opts, &run] { run = [opts] { return run_plan(*opts); }; });
}

}  // namespace switchyard::cli
