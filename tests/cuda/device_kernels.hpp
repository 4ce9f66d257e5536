#pragma once
// Plain C++ entry points into the CUDA kernels under test (implemented in device_kernels.cu, the
// only nvcc translation unit of the tests). Every function takes and returns host memory.

#include <cstdint>
#include <string>
#include <vector>

namespace switchyard::test {

/// Number of usable CUDA devices (0 without a driver or a device).
int device_count();
/// Name of device 0.
std::string device_name();

/// philox_uniform(seed, stream, i, col) for i in [0, n), drawn on the device.
std::vector<float> device_philox_uniform(std::uint64_t seed, std::uint32_t stream,
                                         std::uint32_t col, std::uint32_t n);

}  // namespace switchyard::test
