#pragma once
// Plain C++ entry points into the CUDA experts (implemented in experts_device.cu). Every
// function takes and returns host memory in float; the device stores the chosen type.

#include <cstdint>
#include <vector>

#include "switchyard/config/enums.hpp"
#include "switchyard/experts/expert_types.hpp"

namespace switchyard::test {

enum class storage { f32, bf16, f16 };

/// One expert problem, host side.
struct device_expert_io {
  Activation activation = Activation::silu;
  bool gated = true;
  expert_shape shape{};
  std::vector<std::int64_t> offsets;           // [E+1]
  std::vector<float> fc1, fc2, b1, b2, x, dy;  // layouts of expert_types.hpp
  expert_dropout dropout{};
};

/// Device results converted to float.
struct device_expert_out {
  std::vector<float> y, dx, g_fc1, g_fc2, g_b1, g_b2;
};

/// expert_forward then expert_backward on the device (zeroed gradients; stored in the storage
/// type when grads_in_storage is true, else in float), with `streams` side streams.
device_expert_out device_expert_run(const device_expert_io& io, storage st, bool grads_in_storage,
                                    int streams);

/// The values after a round trip through the storage type (what the device sees).
std::vector<float> round_to_storage(const std::vector<float>& v, storage st);

/// c = grouped_gemm(offsets, a [R][K], b [E][N][K]) on the device in fp32 with beta = 1 over
/// the given c.
std::vector<float> device_grouped_gemm(const std::vector<std::int64_t>& offsets,
                                       const std::vector<float>& a, const std::vector<float>& b,
                                       std::vector<float> c, std::int64_t E, std::int64_t N,
                                       std::int64_t K);

}  // namespace switchyard::test
