#pragma once
// The subcommands of the switchyard driver. Each registers itself on the app and sets `run` to
// the function that executes it; that function returns the process exit code.

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include <charconv>
#include <functional>
#include <string>
#include <system_error>

namespace switchyard {
struct Config;
}

namespace switchyard::cli {

using runner = std::function<int()>;

void add_plan_command(CLI::App& app, runner& run);
void add_route_command(CLI::App& app, runner& run);
void add_train_command(CLI::App& app, runner& run);
void add_layer_command(CLI::App& app, runner& run);

/// Checks an integer option's text before CLI11 converts it: CLI11 2.1 reads "" as 0, clamps a
/// number beyond the type to its largest value, wraps "-1" into an unsigned one and reads a
/// leading zero as octal ("010" is 8). Decimal digits with an optional '+' pass and are rewritten
/// in canonical form ("010" is 10) for CLI11 to convert; the error names the range and echoes
/// the text ("--seed: expected a whole number from 0 to ..., got "-1"").
template <class Int>
CLI::Validator whole_number(Int lo, Int hi) {
  const std::string range = fmt::format("a whole number from {} to {}", lo, hi);
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        Int v{};
        const char* begin = text.data() + (text.starts_with('+') ? 1 : 0);
        const char* end = text.data() + text.size();
        const auto [at, ec] = std::from_chars(begin, end, v);
        // A '-' only where a negative number is in range ("-0" is not a count).
        const bool minus = begin != end && *begin == '-' && (begin != text.data() || lo >= 0);
        if (begin == end || minus || ec != std::errc{} || at != end || v < lo || v > hi)
          return fmt::format("expected {}, got \"{}\"", range, text);
        text = fmt::format("{}", v);
        return {};
      },
      range);
}

/// Rejects an empty option value ("--metrics ''" would otherwise mean "no metrics").
inline CLI::Validator non_empty() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return text.empty() ? std::string("expected a value, got an empty string") : "";
      },
      "non-empty");
}

/// When the experts migrate, for plan's and train's text: "experts migrate when the EP ranks'
/// imbalance is above t" (or, with the Periodic trigger, "at every check ...") and, with a
/// load_balancing or migration object, its schedule (plan_command.cpp).
std::string migration_summary(const Config& c);

}  // namespace switchyard::cli
