#pragma once
// Device side of the dispatch tests (dispatch_device.cu): builds the plan and runs permute,
// unpermute and both backward passes on the GPU from host inputs, returning host copies.

#include <cstdint>
#include <vector>

#include "switchyard/dispatch/dispatch_types.hpp"
#include "switchyard/dispatch/plan.hpp"

namespace switchyard::test {

struct device_dispatch_result {
  DispatchPlan plan;
  std::vector<float> rows, y, d_rows, d_prob, dx;
};

/// expert [T·k], prob [T·k], x [T·H], dy [T·H], all host memory, fp32 storage.
device_dispatch_result device_dispatch(const DispatchOptions& opt, std::int64_t T, std::int64_t k,
                                       std::int64_t H, const std::vector<std::int32_t>& expert,
                                       const std::vector<float>& prob, const std::vector<float>& x,
                                       const std::vector<float>& dy);

}  // namespace switchyard::test
