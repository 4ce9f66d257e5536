// switchyard: the command-line driver. `switchyard plan CONFIG.json` validates a config and prints
// its parallel layout, capacity, memory per rank and recommended device count (docs/cli.md).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <new>
#include <string>

#include "commands.hpp"
#include "switchyard/core/error.hpp"
#include "switchyard/version.hpp"

int main(int argc, char** argv) {
  CLI::App app{"switchyard: Mixture-of-Experts layers with expert parallelism"};
  app.set_version_flag("--version", switchyard::version_string);
  app.require_subcommand(1);
  switchyard::cli::runner run;
  switchyard::cli::add_plan_command(app, run);
  switchyard::cli::add_route_command(app, run);
  switchyard::cli::add_train_command(app, run);
  switchyard::cli::add_layer_command(app, run);
  // CLI11 answers an unknown first word with "A subcommand is required": name it instead.
  bool known = false;
  std::string names;
  const CLI::App& commands = app;
  for (const CLI::App* sub : commands.get_subcommands(std::function<bool(const CLI::App*)>{})) {
    known = known || (argc > 1 && sub->check_name(argv[1]));
    if (!names.empty()) names += ", ";
    names += sub->get_name();
  }
  if (argc > 1 && argv[1][0] != '-' && !known) {
    fmt::print(stderr, "switchyard: unknown command \"{}\" (the commands: {}; see --help)\n",
               argv[1], names);
    return 106;
  }
  // ... and the same to an unknown option before the command.
  // (--name=value names --name; "--" is left to CLI11.)
  const std::string first = argc > 1 ? argv[1] : "";
  if (first.starts_with('-') && first != "--" &&
      commands.get_option_no_throw(first.substr(0, first.find('='))) == nullptr) {
    fmt::print(stderr,
               "switchyard: unknown option \"{}\" (before the command: --help, --version; a "
               "command's options follow it, as in switchyard train --help)\n",
               argv[1]);
    return 109;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return run();
  } catch (const switchyard::config_error& e) {
    fmt::print(stderr, "switchyard: invalid input\n{}\n", e.what());
    return 1;
  } catch (const std::bad_alloc& e) {
    fmt::print(stderr,
               "switchyard: error: out of memory ({}): the config's sizes need more memory than "
               "this process can get (`switchyard plan CONFIG` estimates it per rank)\n",
               e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "switchyard: error: {}\n", e.what());
    return 1;
  }
}
