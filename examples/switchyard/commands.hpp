#pragma once
// The subcommands of the switchyard driver. Each registers itself on the app and sets `run` to
// the function that executes it; that function returns the process exit code.

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace switchyard {
struct Config;
}

namespace switchyard::cli {

using runner = std::function<int()>;

void add_plan_command(CLI::App& app, runner& run);
void add_route_command(CLI::App& app, runner& run);
void add_train_command(CLI::App& app, runner& run);
void add_layer_command(CLI::App& app, runner& run);

/// When the experts migrate, for plan's and train's text: "experts migrate when the EP ranks'
/// imbalance is above t" (or, with the Periodic trigger, "at every check ...") and, with a
/// load_balancing or migration object, its schedule (plan_command.cpp).
std::string migration_summary(const Config& c);

}  // namespace switchyard::cli
