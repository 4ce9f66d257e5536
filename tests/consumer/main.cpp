// Uses the public API through the installed or fetched package; exits non-zero on a wrong value.
#include <switchyard/config/json.hpp>
#include <switchyard/switchyard.hpp>

#include <iostream>

namespace sy = switchyard;

int main() {
  sy::Config c;
  c.num_experts = 64;
  c.expert_parallel_size = 8;
  c.data_parallel_size = 2;
  if (!sy::validate(c).empty()) return 1;
  const sy::Layout layout(c);
  if (layout.world() != 16 || layout.group(sy::GroupKind::expert_parallel, 9).front() != 8) return 2;
  const auto text = boost::json::serialize(sy::to_json(c, sy::Dialect::nested));
  const auto back = sy::parse_config(boost::json::parse(text));
  if (!back.problems.empty() || !(back.config == c)) return 3;
  std::cout << "switchyard " << sy::version_string << ": consumer OK\n";
  return 0;
}
