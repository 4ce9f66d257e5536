#pragma once
// Device side of the communicator tests (comm_device.cu): a one-rank NCCL communicator.

#include <cstdint>
#include <vector>

namespace switchyard::test {

/// Whether the NCCL communicator was compiled in (SWITCHYARD_HAS_NCCL).
bool nccl_available();

/// On a one-rank NCCL communicator: all_to_all_v of `data` (one block), then all_reduce(sum) and
/// all_gather of the result. Returns the all_gather output (host copy).
std::vector<double> nccl_one_rank_roundtrip(const std::vector<double>& data);

}  // namespace switchyard::test
