#pragma once
// Plain C++ entry points into the device MoE layer (implemented in layer_device.cu). Every
// function takes and returns host memory; the layer itself runs on the device.

#include <cstdint>
#include <string>
#include <vector>

#include "switchyard/config/config_types.hpp"
#include "switchyard/layer/layer_types.hpp"

namespace switchyard::test {

/// One device layer run: make_device_layer(cfg), initialize(seed) or `params` when given, with
/// `expert_of_slot` move_experts() to that placement, a forward of x [T][H] and a backward of
/// dy [T][H] into zeroed gradients.
struct device_layer_out {
  std::vector<float> y, dx;
  MoEParams<float> params;  ///< the weights the layer ran with
  MoEGrads<float> grads;
  MoEMetrics metrics;
  /// With framework resources: the allocations the layer made from the framework's memory
  /// resource, and the bytes not given back once every returned buffer was destroyed.
  std::int64_t allocations = 0, bytes_outstanding = 0;
  /// With `expert_of_slot`: a caller's state of 3 values per local expert (10·e + i for global
  /// expert e, laid out for the initial placement) after move_experts took it along.
  std::vector<float> moved_state;
};

/// plain: one GPU, default memory. framework: what a framework hands the layer, on one GPU:
/// NCCL communicators of one rank (so the token exchange, the group sums and fail_together run)
/// and its own memory resource (counting what the layer takes and gives back).
enum class device_run_mode { plain, framework };

/// Whether framework mode can run here (it needs NCCL).
bool device_framework_mode_available();

device_layer_out device_layer_run(const Config& cfg, std::uint64_t seed,
                                  const std::vector<float>& x, std::int64_t T,
                                  const std::vector<float>& dy, bool training, std::uint32_t step,
                                  device_run_mode mode = device_run_mode::plain,
                                  const std::vector<std::int64_t>* expert_of_slot = nullptr);

/// The same run through DeviceMoELayer<TopK<2, Softmax>, Capacity<DropByProbs>, GLU<SiLU>>
/// (compile-time policies; cfg must select them), training, step 0.
device_layer_out device_layer_run_compile_time(const Config& cfg, std::uint64_t seed,
                                               const std::vector<float>& x, std::int64_t T,
                                               const std::vector<float>& dy);

/// The message of the exception make_device_layer(cfg) throws (empty when it does not throw);
/// exception_kind is "config_error", "numeric_error", ... or "" when nothing was thrown.
struct device_layer_error {
  std::string kind, message;
};
device_layer_error device_layer_construct_error(const Config& cfg);
/// What constructing DeviceMoELayer<TopK<2, Softmax>, Capacity<DropByProbs>, GLU<SiLU>> throws.
device_layer_error device_layer_compile_time_error(const Config& cfg);

/// A forward whose input makes the logits of token `bad_token` NaN: what it throws.
device_layer_error device_layer_nan_error(const Config& cfg, std::int64_t T,
                                          std::int64_t bad_token);

/// With global_aux_loss (cfg must select it): a good training forward, then one whose token
/// `bad_token` has NaN logits; the accumulator after each (micro-batch count, count sums [E]).
struct global_aux_after_failure {
  device_layer_error error;  ///< what the failed forward threw
  std::int64_t micro_batches_good = 0, micro_batches_after = 0;
  std::vector<double> sums_good, sums_after;
};
global_aux_after_failure device_layer_global_aux_after_failure(const Config& cfg, std::int64_t T,
                                                               std::int64_t bad_token);

/// Out of memory in the device layer (framework mode, NCCL communicators of one rank, so
/// fail_together runs): a memory resource that fails on demand counts the layer's allocations
/// of at least `min_bytes` in one forward and in one backward, then fails each of them in turn
/// (a forward; a backward after a good forward). Every failed call must throw, the good step
/// after each must give the first step's y and dx bit for bit, and nothing may stay allocated.
struct device_allocation_sweep {
  std::int64_t forward_allocations = 0, backward_allocations = 0;
  std::vector<std::string> errors;     ///< what each failed call threw ("" when it did not throw)
  std::int64_t steps_differing = 0;    ///< good steps after a failure whose y or dx differ
  std::int64_t bytes_outstanding = 0;  ///< after the layer is gone
};
device_allocation_sweep device_layer_allocation_sweep(const Config& cfg, std::int64_t T,
                                                      std::size_t min_bytes);

}  // namespace switchyard::test
