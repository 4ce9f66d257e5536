// An activation is not an expert policy: the expert slot must name FFN<Act> or GLU<Act>.
#include "switchyard/experts.hpp"

namespace sy = switchyard;

int main() {
  const sy::expert_shape s{2, 8, 4, false};
  return static_cast<int>(sy::expert_workspace_bytes<float>(sy::SiLU{}, s, 4));
}
