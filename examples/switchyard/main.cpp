// switchyard: the command-line driver. `switchyard plan CONFIG.json` validates a config and prints
// its parallel layout, capacity, memory per rank and recommended device count (docs/cli.md).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <exception>
#include <new>

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
