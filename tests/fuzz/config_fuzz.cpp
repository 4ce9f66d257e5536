// libFuzzer harness: config JSON in any dialect, or raw bytes. Parsing and validation must never
// crash, hang or trip a sanitizer; a config that parses without problems must survive a write
// and read in each of the three dialects unchanged.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "switchyard/config.hpp"
#include "switchyard/config/json.hpp"

namespace sy = switchyard;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  sy::ParsedConfig parsed = sy::parse_and_validate(text, "fuzz");
  for (const auto& p : parsed.problems)
    if (p.message.empty() || p.path.empty()) __builtin_trap();  // every problem says something
  if (!parsed.problems.empty()) return 0;
  // A valid config: derived sizes are consistent, and every dialect round-trips it.
  const sy::Config& c = parsed.config;
  if (c.world() != c.dp() * c.expert_parallel_size * c.tensor_parallel_size *
                       c.pipeline_parallel_size)
    __builtin_trap();
  for (auto d : {sy::Dialect::flat, sy::Dialect::nested, sy::Dialect::model_config}) {
    const std::string back = boost::json::serialize(sy::to_json(c, d));
    const auto again = sy::parse_config(boost::json::parse(back));
    if (!again.problems.empty() || !(again.config == c)) __builtin_trap();
  }
  (void)sy::capacity(c, c.tokens_per_rank());
  (void)sy::estimate_memory(c, 0);
  return 0;
}
