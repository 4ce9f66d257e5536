// Must not compile: Sinkhorn routing with a capacity dispatcher (REFERENCE §3).
#include <switchyard/layer.hpp>

namespace sy = switchyard;

using Bad = sy::MoELayer<sy::Sinkhorn<1>, sy::Capacity<sy::DropByProbs>, sy::FFN<sy::GeLU>>;

int main() { return sizeof(Bad) > 0 ? 0 : 1; }
