// GLU<Act> takes an activation type (GeLU, GeLUTanh, ReLU, SiLU), not a number type.
#include "switchyard/experts.hpp"

int main() {
  return switchyard::GLU<float>::gated ? 0 : 1;
}
