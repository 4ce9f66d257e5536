// Must not compile: top-1 with softmax top-k-first has a zero gradient.
#include <switchyard/config/static_check.hpp>

namespace sy = switchyard;

constexpr sy::Config bad = sy::static_config<[] {
  sy::Config c;
  c.num_experts_per_token = 1;
  return c;
}>::value;

int main() { return static_cast<int>(bad.num_experts); }
