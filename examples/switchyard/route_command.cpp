// `switchyard route INPUT.json`: routes the tokens of INPUT with the router its config describes
// (host backend, double precision) and prints one JSON object (docs/cli.md, "route").
#include <fmt/core.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "documents.hpp"

namespace switchyard::cli {
namespace {

int run_route(const std::string& file) {
  std::vector<problem> syntax;
  const json::value doc = parse_json_text(read_text_file(file), syntax, file);
  if (!syntax.empty()) throw config_error(join_problems(syntax));
  std::string text;
  write_json(route_document(doc), text);
  fmt::print("{}\n", text);
  return 0;
}

}  // namespace

void add_route_command(CLI::App& app, runner& run) {
  auto file = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "route", "Route tokens with the router of a config and print indices, weights and losses");
  cmd->add_option("input", *file,
                  "JSON {\"config\": {...}, \"logits\": [[...]]} or x + router_weight")
      ->required();
  cmd->callback([file, &run] { run = [file] { return run_route(*file); }; });
}

}  // namespace switchyard::cli
