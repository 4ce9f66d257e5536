// `switchyard train CONFIG.json [--steps N] [--backend host|cuda] [--seed S] [--metrics FILE]`.
#include <boost/json.hpp>
#include <fmt/core.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

#include "commands.hpp"
#include "documents.hpp"
#include "switchyard/config/json.hpp"
#include "train_model.hpp"
#if defined(SWITCHYARD_CLI_HAS_CUDA)
#include "cuda_layer.hpp"
#endif
#if defined(SWITCHYARD_HAS_MPI)
#include "switchyard/comm/mpi.hpp"
#include "switchyard/sharding/mpi_groups.hpp"
#endif

namespace switchyard::cli {
namespace {

struct train_options {
  std::string file;
  std::int64_t steps = 100;
  std::string backend = "host";
  std::uint64_t seed = 1234;
  std::string metrics;
};

boost::json::value nested_counts(const std::vector<std::vector<std::int64_t>>& v) {
  boost::json::array out;
  for (const auto& layer : v) {
    boost::json::array a;
    for (auto c : layer) a.push_back(c);
    out.push_back(std::move(a));
  }
  return out;
}

std::string metrics_line(const train::StepMetrics& m) {
  boost::json::object o;
  o["step"] = m.step;
  o["loss"] = m.loss;
  o["aux_loss"] = m.has_aux ? boost::json::value(m.aux_loss) : boost::json::value(nullptr);
  o["z_loss"] = m.has_z ? boost::json::value(m.z_loss) : boost::json::value(nullptr);
  o["dropped_fraction"] = m.dropped_fraction;
  o["load_cv"] = m.load_cv;
  o["tokens_per_second"] = m.tokens_per_second;
  o["tokens"] = m.tokens;
  o["micro_batches"] = m.micro_batches;
  o["expert_sync"] = m.expert_sync;
  boost::json::array imbalance;
  for (double v : m.rank_load_imbalance) imbalance.push_back(v);
  o["rank_load_imbalance"] = std::move(imbalance);
  o["expert_migrations"] = m.expert_migrations;
  o["seconds"] = m.seconds;
  o["tokens_per_expert"] = nested_counts(m.tokens_per_expert);
  o["kept_per_expert"] = nested_counts(m.kept_per_expert);
  std::string line;  // numbers in their shortest form, as route's and layer's documents
  write_json(o, line);
  return line;
}

// A loss for the step line: six decimals, or six significant digits in exponent form when it
// is large (a loss of 1e70 printed with %f is 71 digits).
std::string loss_text(double v) {
  return std::fabs(v) < 1e6 ? fmt::format("{:.6f}", v) : fmt::format("{:.6e}", v);
}

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

// Trains on communicator type Comm; only the rank that `prints` writes output.
// `nccl`: the GPU MoE blocks use NCCL communicators of the groups of `comms`.
template <class Comm>
int train_loop(const Config& cfg, MoEComms<Comm> comms, const train_options& o, bool prints,
               bool nccl) {
  // The synthetic data keys each token and each micro-batch's draws with 32 bits: more would
  // silently repeat tokens or draws.
  const std::int64_t n = cfg.micro_batches_per_step();
  const auto micro = static_cast<double>(n);
  const double keys =
      micro * static_cast<double>(cfg.world()) * static_cast<double>(cfg.tokens_per_rank());
  if (keys > 4294967296.0)
    throw config_error(fmt::format(
        "the synthetic data keys its tokens with 32 bits: {} micro-batches x {} token ranks x {} "
        "tokens per rank is {:.4g} tokens per step, above 2^32",
        n, cfg.world(), cfg.tokens_per_rank(), keys));
  if (micro * static_cast<double>(o.steps) > 4294967295.0)
    throw config_error(
        fmt::format("--steps {} x {} micro-batches is above 2^32 - 1 micro-batches "
                    "(the draws count them with 32 bits)",
                    o.steps, n));
  if (cfg.hidden_size > 65536)
    throw config_error(
        fmt::format("the teacher keys its H x H weights with 32 bits: hidden_size "
                    "{} is above 65536",
                    cfg.hidden_size));
  train::Model<Comm> model(cfg, comms, o.seed, o.backend == "cuda", nccl);
  std::ofstream jsonl;
  if (prints && !o.metrics.empty()) {
    jsonl.open(o.metrics);
    if (!jsonl) throw config_error("--metrics: cannot write " + o.metrics);
  }
  // The progress bar only on a terminal; mpirun hands each rank a pseudo-terminal whatever its
  // own stdout is, so under mpirun there is none.
  const bool tty = prints && isatty(fileno(stdout)) && !launched_by_mpirun();
  if (prints)
    fmt::print(
        "training {} MoE-or-dense blocks (H {}, F {}, E {}, k {}{}) on {} rank(s), {} tokens "
        "per rank per {}{}{}{}{}\n",
        cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_experts,
        cfg.num_experts_per_token,
        cfg.shared_expert_intermediate_size
            ? fmt::format(", shared expert F {}{}", *cfg.shared_expert_intermediate_size,
                          cfg.shared_expert_gate ? " gated" : "")
            : std::string(),
        cfg.world(), cfg.tokens_per_rank(),
        n > 1 ? fmt::format("micro-batch, {} micro-batches per step", n) : std::string("step"),
        cfg.enable_expert_sync
            ? fmt::format(", expert weights averaged over {} replica(s) every {} step(s)", cfg.dp(),
                          cfg.sync_frequency)
            : std::string(),
        cfg.gradient_compression ? ", gradients summed in bfloat16" : "",
        cfg.migrates_experts() ? ", " + migration_summary(cfg) : std::string(),
        o.backend != "cuda" ? ""
        : nccl              ? ", MoE blocks on the GPU, tokens exchanged over NCCL"
                            : ", MoE blocks on the GPU");
  const auto diverged = [&cfg](std::int64_t step, const std::string& what) {
    return numeric_error(fmt::format(
        "training diverged at step {}: {} (learning_rate {}, load_balance_loss_coeff {}, "
        "router_z_loss_coeff {}{}: lower them)",
        step, what, cfg.learning_rate, switchyard::detail::to_text(cfg.load_balance_loss_coeff),
        cfg.router_z_loss_coeff,
        cfg.topk_scaling_factor ? fmt::format(", topk_scaling_factor {}", *cfg.topk_scaling_factor)
                                : std::string()));
  };
  for (std::int64_t step = 1; step <= o.steps; ++step) {
    train::StepMetrics m;
    try {
      m = model.step(step);
    } catch (const numeric_error& e) {  // weights gone non-finite: NaN logits in a router
      throw diverged(step, e.what());
    }
    // The losses are global (the same on every rank): a diverged run stops here, on every rank,
    // before a line or a metrics record with nan in it.
    if (!std::isfinite(m.loss) || !std::isfinite(m.aux_loss) || !std::isfinite(m.z_loss))
      throw diverged(step, fmt::format("loss {}, aux {}, z {}", m.loss, m.aux_loss, m.z_loss));
    if (!prints) continue;
    if (tty) fmt::print("\r\033[K");
    fmt::print(
        "step {:>5}  loss {}  aux {}  z {}  dropped {:5.2f}%  load_cv {:.4f}  "
        "tokens/s {:.0f}{}\n",
        step, loss_text(m.loss), m.has_aux ? loss_text(m.aux_loss) : std::string("-"),
        m.has_z ? loss_text(m.z_loss) : std::string("-"), 100.0 * m.dropped_fraction, m.load_cv,
        m.tokens_per_second,
        m.expert_migrations > 0
            ? fmt::format("  experts migrated in {} layer(s)", m.expert_migrations)
            : std::string());
    if (tty) {
      constexpr int width = 40;
      const int done = static_cast<int>(width * step / o.steps);
      fmt::print("[{}{}] {}/{}", std::string(static_cast<std::size_t>(done), '#'),
                 std::string(static_cast<std::size_t>(width - done), '.'), step, o.steps);
      std::fflush(stdout);
    }
    if (jsonl.is_open()) {
      jsonl << metrics_line(m) << '\n';
      jsonl.flush();
      if (!jsonl) throw std::runtime_error("--metrics: cannot write to " + o.metrics);
    }
  }
  if (tty) fmt::print("\n");
  return 0;
}

// --backend cuda: a visible GPU, in a build that has the CUDA layer.
void check_cuda_backend() {
#if defined(SWITCHYARD_CLI_HAS_CUDA)
  if (cli::cuda_device_count() == 0)
    throw config_error("--backend cuda: no CUDA device is visible (cudaGetDeviceCount found "
                       "none); run with --backend host");
#else
  throw config_error("--backend cuda: this switchyard was built without CUDA; run with "
                     "--backend host");
#endif
}

int run_train(const train_options& o) {
  if (o.backend == "cuda") check_cuda_backend();
  ParsedConfig parsed = parse_and_validate(read_text_file(o.file), o.file);
  if (!parsed.problems.empty()) throw config_error(join_problems(parsed.problems));
  Config cfg = parsed.config;
  // Every rank trains all num_layers blocks on its own tokens: no stage holds a part of the
  // model, so pipeline stages would be copies that differ only in their data.
  if (cfg.pipeline_parallel_size != 1)
    throw config_error(fmt::format(
        "{}: {}: switchyard train runs no pipeline schedule (every rank trains all num_layers "
        "blocks); set it to 1 (plan and the library's MoELayer take pipeline stages)",
        parsed.paths.at("pipeline_parallel_size"), cfg.pipeline_parallel_size));
  if (!o.metrics.empty()) {
    std::error_code same_ec;
    if (std::filesystem::equivalent(o.metrics, o.file, same_ec))
      throw config_error("--metrics " + o.metrics + " is the config file: it would be overwritten");
  }
  if (cfg.precision != Precision::float32)
    throw config_error(fmt::format("{}: {}: the {} backend trains in float32",
                                   parsed.paths.at("precision"), enum_name(cfg.precision),
                                   o.backend));

  // distributed_backend: auto follows the launch; local and mpi must match it; nccl needs the
  // device layer.
  const bool mpirun = launched_by_mpirun();
  const std::string where = parsed.paths.at("distributed_backend");
  switch (cfg.distributed_backend) {
    case DistributedBackend::automatic: break;
    case DistributedBackend::local:
      if (mpirun)
        throw config_error(where + ": local, but the driver was launched by mpirun (use auto or mpi)");
      break;
    case DistributedBackend::mpi:
      if (!mpirun) throw config_error(where + ": mpi: launch the driver with mpirun");
      break;
    case DistributedBackend::nccl:
      if (o.backend != "cuda")
        throw config_error(where +
                           ": nccl exchanges the MoE tokens between GPUs: add --backend "
                           "cuda (the host backend exchanges over MPI: use auto or mpi)");
      break;
  }
  if (!mpirun) {
    if (cfg.world() != 1)
      throw config_error(fmt::format("the config describes {} ranks: launch with mpirun -np {}{}",
                                     cfg.world(), cfg.world(),
                                     o.backend == "cuda" ? " (one GPU per process)" : ""));
    LocalComm one;
    return train_loop<LocalComm>(cfg, {&one, &one, &one}, o, true,
                                 cfg.distributed_backend == DistributedBackend::nccl);
  }
#if defined(SWITCHYARD_HAS_MPI)
  MPI_Init(nullptr, nullptr);
  int rc = 1;
  try {
    MpiComm world;
    // DP fills the processes when the config leaves world_size and data_parallel_size out.
    if (!cfg.world_size && !cfg.data_parallel_size) {
      const std::int64_t inner = cfg.expert_parallel_size * cfg.tensor_parallel_size;
      if (world.size() % inner != 0)
        throw config_error(
            fmt::format("mpirun started {} processes, not a multiple of "
                        "expert_parallel_size x tensor_parallel_size = {}",
                        world.size(), inner));
      cfg.data_parallel_size = world.size() / inner;
    }
    require_valid(cfg, &parsed.paths);
    if (cfg.world() != world.size())
      throw config_error(fmt::format("the config describes {} ranks but mpirun started {}",
                                     cfg.world(), world.size()));
    const Layout layout(cfg);
    MpiGroups groups = make_mpi_groups(world, layout);
#if defined(SWITCHYARD_CLI_HAS_CUDA)
    if (o.backend == "cuda") {  // one GPU per process of a node, as NCCL needs
      MPI_Comm node = MPI_COMM_NULL;
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node);
      int local_rank = 0, local_size = 1;
      MPI_Comm_rank(node, &local_rank);
      MPI_Comm_size(node, &local_size);
      MPI_Comm_free(&node);
      cli::select_cuda_device(local_rank, local_size);
    }
#endif
    rc = train_loop<MpiComm>(cfg,
                             {&groups.expert_parallel, &groups.dense_data_parallel,
                              &groups.expert_data_parallel, &groups.tensor_parallel},
                             o, world.rank() == 0, /*nccl=*/true);
  } catch (const std::exception& e) {
    // One rank's error must not leave the others waiting: report it and abort the job.
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fmt::print(stderr, "switchyard: rank {}: {}\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
#else
  throw config_error("launched by mpirun, but this switchyard was built without MPI");
#endif
}

}  // namespace

void add_train_command(CLI::App& app, runner& run) {
  auto opts = std::make_shared<train_options>();
  CLI::App* cmd = app.add_subcommand(
      "train",
      "Train residual MoE blocks on a synthetic teacher task (CPU, DP x EP x TP under mpirun; "
      "the MoE blocks on GPUs with --backend cuda, one GPU per process)");
  cmd->add_option("config", opts->file, "config JSON (flat, nested or model_config dialect)")
      ->required();
  cmd->add_option("--steps", opts->steps, "optimizer steps (default 100)")
      ->transform(whole_number<std::int64_t>(1, INT64_MAX));
  cmd->add_option("--backend", opts->backend,
                  "host (default) or cuda (MoE blocks on the GPU; under mpirun one GPU per "
                  "process, tokens exchanged over NCCL)")
      ->check(CLI::IsMember({"host", "cuda"}));
  cmd->add_option("--seed", opts->seed, "seed of weights, data and teacher (default 1234)")
      ->transform(whole_number<std::uint64_t>(0, UINT64_MAX));
  cmd->add_option("--metrics", opts->metrics, "write one JSON object per step to this file")
      ->check(non_empty());
  cmd->callback([opts, &run] { run = [opts] { return run_train(*opts); }; });
}

}  // namespace switchyard::cli
