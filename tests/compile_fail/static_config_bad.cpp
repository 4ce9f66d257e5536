// Must not compile: 64 experts cannot be split over 3 EP ranks.
#include <switchyard/config/static_check.hpp>

namespace sy = switchyard;

constexpr sy::Config bad = sy::static_config<[] {
  sy::Config c;
  c.num_experts = 64;
  c.expert_parallel_size = 3;
  return c;
}>::value;

int main() { return static_cast<int>(bad.num_experts); }
