#pragma once
// Plain C++ entry points into the routing kernels (implemented in routing_device.cu). Every
// function takes and returns host memory; the device runs float.

#include <cstdint>
#include <vector>

#include "switchyard/routing/router_linear.hpp"
#include "switchyard/routing/routing_types.hpp"

namespace switchyard::test {

enum class score_kind { softmax, pre_softmax, sigmoid, sqrtsoftplus };

struct device_routes {
  std::vector<std::int32_t> topk_indices;  // [T][k]
  std::vector<float> topk_probs;           // [T][k]
  std::vector<float> dlogits;              // [T][E]: routing + loss gradients
  std::vector<double> losses;              // balance losses..., z-loss
  int sinkhorn_iterations = 0;
  std::vector<float> plan;                 // Sinkhorn P [T][E] (training only)
  bool used_warp_kernel = false;
};

/// TopK<k, score> forward, losses and backward on the device. k in {1, 2, 4, 6, 8}.
/// Throws numeric_error (from the status word) on NaN/Inf logits.
device_routes device_top_k(score_kind score, int k, const std::vector<float>& logits,
                           index_t T, const RouterParams& p, const std::vector<float>& dprob);

/// Sinkhorn<k> forward, z-loss and backward on the device. k in {1, 2}.
device_routes device_sinkhorn(int k, const std::vector<float>& logits, index_t T, index_t E,
                              bool training, const LossParams& losses,
                              const std::vector<float>& dprob);

struct device_linear {
  std::vector<float> logits, dx, dw, db;
};
/// Router linear forward and backward; bf16 rounds x and w to bfloat16 first.
device_linear device_router_linear(const std::vector<float>& x, const std::vector<float>& w,
                                   const std::vector<float>& b, index_t T, index_t H, index_t E,
                                   const std::vector<float>& dz, bool bf16);

/// Input jitter on the device.
std::vector<float> device_jitter(std::vector<float> x, index_t T, index_t H, JitterParams j);

}  // namespace switchyard::test
