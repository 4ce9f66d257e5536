// Must not compile: an infinite learning rate passes a bare sign check; the rule asks for a
// finite number, and says so at compile time too.
#include <limits>

#include <switchyard/config/static_check.hpp>

namespace sy = switchyard;

constexpr sy::Config bad = sy::static_config<[] {
  sy::Config c;
  c.learning_rate = std::numeric_limits<double>::infinity();
  return c;
}>::value;

int main() {
  return static_cast<int>(bad.num_experts);
}
