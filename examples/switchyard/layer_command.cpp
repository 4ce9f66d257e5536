// `switchyard layer INPUT.json`: one MoE layer on one rank, host backend in double, through
// make_layer (the code a framework calls); prints one JSON object (docs/cli.md, "layer").
#include <fmt/core.h>

#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "documents.hpp"

namespace switchyard::cli {
namespace {

struct layer_options {
  std::string file;
  std::string backend = "host";
};

int run_layer(const layer_options& o) {
  if (o.backend != "host")
    throw config_error("--backend " + o.backend +
                       ": the layer command runs the host layer only (the CUDA layer runs under "
                       "`switchyard train --backend cuda`)");
  std::vector<problem> syntax;
  const json::value doc = parse_json_text(read_text_file(o.file), syntax, o.file);
  if (!syntax.empty()) throw config_error(join_problems(syntax));
  std::string text;
  write_json(layer_document(doc), text);
  fmt::print("{}\n", text);
  return 0;
}

}  // namespace

void add_layer_command(CLI::App& app, runner& run) {
  auto opts = std::make_shared<layer_options>();
  CLI::App* cmd = app.add_subcommand(
      "layer", "Run one MoE layer (forward, and backward with dy) and print y and gradients");
  cmd->add_option("input", opts->file,
                  "JSON {config, x, router_weight, fc1_weight, fc2_weight[, dy]}")
      ->required();
  cmd->add_option("--backend", opts->backend, "host (default)");
  cmd->callback([opts, &run] { run = [opts] { return run_layer(*opts); }; });
}

}  // namespace switchyard::cli
