// Must not compile: an expert policy in the router slot (and a router in the expert slot).
#include <switchyard/layer.hpp>

namespace sy = switchyard;

using Bad = sy::MoELayer<sy::GLU<sy::SiLU>, sy::Dropless, sy::TopK<2, sy::Softmax>>;

int main() { return sizeof(Bad) > 0 ? 0 : 1; }
