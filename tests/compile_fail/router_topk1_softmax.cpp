// Must not compile: TopK<1, Softmax> has a zero gradient (REFERENCE §2); the static_assert says
// to use PreSoftmax.
#include <switchyard/routing/top_k.hpp>

namespace sy = switchyard;

int main() {
  sy::RouterParams p;
  p.num_experts = 4;
  const sy::TopK<1, sy::Softmax> router(p);
  return static_cast<int>(router.num_experts());
}
