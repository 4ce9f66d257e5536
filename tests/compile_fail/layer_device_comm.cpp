// Must not compile: the host layer over a communicator of device memory (as NcclComm declares),
// which would hand host pointers to device collectives.
#include <switchyard/layer.hpp>

namespace sy = switchyard;

struct DeviceLikeComm : sy::LocalComm {
  static constexpr bool device_memory = true;
};
static_assert(sy::Communicator<DeviceLikeComm> && !sy::HostCommunicator<DeviceLikeComm>);

using Bad =
    sy::MoELayer<sy::TopK<2, sy::Softmax>, sy::Dropless, sy::GLU<sy::SiLU>, float, DeviceLikeComm>;

int main() {
  return sizeof(Bad) > 0 ? 0 : 1;
}
