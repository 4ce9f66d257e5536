#pragma once
/// \file The device layer's two policy-dependent places, as in layer/detail/hooks.hpp: the
/// router (TopK<K, Score> or Sinkhorn<K> with their losses, on the device) and the experts (FFN
/// or GLU through cuBLAS). Each policy is compiled once and the layer body calls it through these
/// interfaces. nvcc only.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "switchyard/exec/cuda.cuh"
#include "switchyard/exec/device_buffer.cuh"
#include "switchyard/experts/experts.cuh"
#include "switchyard/layer/detail/hooks.hpp"
#include "switchyard/routing/losses.cuh"
#include "switchyard/routing/sinkhorn.cuh"
#include "switchyard/routing/top_k.cuh"

namespace switchyard::detail {

/// The buffers of one device router forward (device memory; `logits` [T][E]).
struct device_route_io {
  matrix_view<const float> logits;
  bool training = true;
  void* scratch = nullptr;               ///< scratch_bytes(T): forward only
  std::int32_t* indices = nullptr;       ///< [T][k]
  float* probs = nullptr;                ///< [T][k]
  int* iterations = nullptr;             ///< one int: Sinkhorn iterations (0 for TopK)
  unsigned long long* status = nullptr;  ///< routing status word, reset by the caller
  void* loss_workspace = nullptr;        ///< losses_workspace_bytes: kept for backward
  double* loss_values = nullptr;         ///< losses().balance.size() + 1 doubles
  DeviceGlobalAux* global_aux = nullptr;
  const DeviceLossGroup* group = nullptr;  ///< the losses' data-parallel group; null on one GPU
};

struct device_router_hooks {
  virtual ~device_router_hooks() = default;
  virtual int k() const = 0;
  virtual const LossParams& losses() const = 0;
  virtual std::size_t scratch_bytes(index_t T, bool training) const = 0;
  virtual std::size_t loss_workspace_bytes(index_t T) const = 0;
  virtual void forward(exec::Cuda cuda, const device_route_io& io) const = 0;
  /// dlogits [T][E] (overwritten) from d prob [T][k], plus the loss gradients (`loss_tokens`:
  /// the z-loss's token count, the group's with a group; negative: T).
  virtual void backward(exec::Cuda cuda, matrix_view<const float> logits,
                        const std::int32_t* indices, const float* dprob, float* dlogits,
                        const void* loss_workspace, double loss_tokens) const = 0;
  virtual void update_expert_bias(std::span<const std::int64_t> counts, cudaStream_t stream) = 0;
  virtual std::vector<double> expert_bias() const = 0;
};

template <class R>
struct device_router_hooks_impl;

template <int K, class Score>
struct device_router_hooks_impl<TopK<K, Score>> final : device_router_hooks {
  device_router_hooks_impl(TopK<K, Score> r, cudaStream_t stream) : router(std::move(r)) {
    upload_bias(stream);
  }
  int k() const override { return K; }
  const LossParams& losses() const override { return router.params().losses; }
  std::size_t scratch_bytes(index_t, bool) const override { return 0; }
  std::size_t loss_workspace_bytes(index_t T) const override {
    return losses_workspace_bytes(T, router.num_experts(), K, losses());
  }
  void forward(exec::Cuda cuda, const device_route_io& io) const override {
    const index_t T = io.logits.extent(0);
    top_k_forward<K, Score>(cuda, args(), io.logits, matrix_view<std::int32_t>(io.indices, T, K),
                            matrix_view<float>(io.probs, T, K), io.status);
    SY_CUDA_TRY(cudaMemsetAsync(io.iterations, 0, sizeof(int), cuda.stream));
    losses_forward<K, Score>(cuda, io.logits, losses(), io.loss_workspace, io.loss_values,
                             io.global_aux, io.group);
  }
  void backward(exec::Cuda cuda, matrix_view<const float> logits, const std::int32_t* indices,
                const float* dprob, float* dlogits, const void* loss_ws,
                double loss_tokens) const override {
    const index_t T = logits.extent(0), E = logits.extent(1);
    top_k_backward<K, Score>(cuda, args(), logits, matrix_view<const std::int32_t>(indices, T, K),
                             matrix_view<const float>(dprob, T, K),
                             matrix_view<float>(dlogits, T, E));
    losses_backward<K, Score>(cuda, logits, losses(), loss_ws, matrix_view<float>(dlogits, T, E),
                              loss_tokens);
  }
  void update_expert_bias(std::span<const std::int64_t> counts, cudaStream_t stream) override {
    router.update_expert_bias(counts);
    upload_bias(stream);
  }
  std::vector<double> expert_bias() const override { return router.expert_bias(); }

 private:
  route_args<float> args() const {
    return router.template args_with_bias<float>(bias.empty() ? nullptr : bias.data());
  }
  // β in float on the device (the host router keeps the double master copy).
  void upload_bias(cudaStream_t stream) {
    const std::vector<double>& b = router.expert_bias();
    if (b.empty()) return;
    bias_host.assign(b.begin(), b.end());
    if (bias.size() != bias_host.size()) bias = device_buffer<float>(bias_host.size());
    bias.upload(bias_host.data(), stream);
    SY_CUDA_TRY(cudaStreamSynchronize(stream));  // bias_host may change at the next update
  }
  TopK<K, Score> router;
  std::vector<float> bias_host;
  device_buffer<float> bias;
};

template <int K>
struct device_router_hooks_impl<Sinkhorn<K>> final : device_router_hooks {
  device_router_hooks_impl(Sinkhorn<K> r, cudaStream_t) : router(std::move(r)) {}
  int k() const override { return K; }
  const LossParams& losses() const override { return router.losses(); }
  std::size_t scratch_bytes(index_t T, bool training) const override {
    return training ? sinkhorn_workspace_bytes(T, router.num_experts()) : 0;
  }
  std::size_t loss_workspace_bytes(index_t T) const override {
    return losses_workspace_bytes(T, router.num_experts(), K, losses());
  }
  void forward(exec::Cuda cuda, const device_route_io& io) const override {
    const index_t T = io.logits.extent(0);
    sinkhorn_forward<K>(cuda, router, io.logits, io.training, io.scratch,
                        matrix_view<std::int32_t>(io.indices, T, K),
                        matrix_view<float>(io.probs, T, K), io.iterations, io.status);
    losses_forward<K, Softmax>(cuda, io.logits, losses(), io.loss_workspace, io.loss_values,
                               io.global_aux, io.group);
  }
  void backward(exec::Cuda cuda, matrix_view<const float> logits, const std::int32_t* indices,
                const float* dprob, float* dlogits, const void* loss_ws,
                double loss_tokens) const override {
    const index_t T = logits.extent(0), E = logits.extent(1);
    sinkhorn_backward<K>(cuda, logits, matrix_view<const std::int32_t>(indices, T, K),
                         matrix_view<const float>(dprob, T, K), matrix_view<float>(dlogits, T, E));
    losses_backward<K, Softmax>(cuda, logits, losses(), loss_ws, matrix_view<float>(dlogits, T, E),
                                loss_tokens);
  }
  void update_expert_bias(std::span<const std::int64_t>, cudaStream_t) override {
    throw_no_expert_bias();
  }
  std::vector<double> expert_bias() const override { return {}; }

 private:
  Sinkhorn<K> router;
};

struct device_expert_hooks {
  virtual ~device_expert_hooks() = default;
  virtual int fc1_multiplier() const = 0;
  virtual std::size_t workspace_bytes(const expert_shape& s, index_t rows) const = 0;
  virtual void forward(exec::Cuda cuda, cuda_expert_resources& res, const expert_shape& s,
                       const expert_weights<float>& w, matrix_view<const float> x,
                       std::span<const index_t> offsets, matrix_view<float> y,
                       std::span<std::byte> ws, const expert_options& opt) const = 0;
  virtual void backward(exec::Cuda cuda, cuda_expert_resources& res, const expert_shape& s,
                        const expert_weights<float>& w, matrix_view<const float> x,
                        std::span<const index_t> offsets, matrix_view<const float> dy,
                        matrix_view<float> dx, const expert_grads<float>& g,
                        std::span<std::byte> ws, const expert_options& opt) const = 0;
  /// The host hooks of the same policy (the weight initialisation is the host layer's).
  virtual std::unique_ptr<expert_hooks<float>> host() const = 0;
};

template <ExpertPolicy X>
struct device_expert_hooks_impl final : device_expert_hooks {
  int fc1_multiplier() const override { return X::fc1_multiplier; }
  std::size_t workspace_bytes(const expert_shape& s, index_t rows) const override {
    return expert_workspace_bytes<float>(X{}, s, rows);
  }
  void forward(exec::Cuda cuda, cuda_expert_resources& res, const expert_shape& s,
               const expert_weights<float>& w, matrix_view<const float> x,
               std::span<const index_t> offsets, matrix_view<float> y, std::span<std::byte> ws,
               const expert_options& opt) const override {
    expert_forward(X{}, cuda, res, s, w, x, offsets, y, ws, opt);
  }
  void backward(exec::Cuda cuda, cuda_expert_resources& res, const expert_shape& s,
                const expert_weights<float>& w, matrix_view<const float> x,
                std::span<const index_t> offsets, matrix_view<const float> dy,
                matrix_view<float> dx, const expert_grads<float>& g, std::span<std::byte> ws,
                const expert_options& opt) const override {
    expert_backward(X{}, cuda, res, s, w, x, offsets, dy, dx, g, ws, opt);
  }
  std::unique_ptr<expert_hooks<float>> host() const override {
    return std::make_unique<expert_hooks_impl<X, float>>();
  }
};

}  // namespace switchyard::detail
