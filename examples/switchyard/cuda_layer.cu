// The device MoE layer for `switchyard train --backend cuda` (see cuda_layer.hpp).
#include "cuda_layer.hpp"

#include <cuda_runtime.h>

#include <utility>

#include "switchyard/layer/device_layer.cuh"

namespace switchyard::cli {
namespace {

struct saved_impl final : CudaSaved {
  DeviceMoESaved s;
  index_t tokens = 0;
};

struct global_aux_impl final : CudaGlobalAux {
  explicit global_aux_impl(std::int64_t E) : count_sum(static_cast<std::size_t>(E)) {
    count_sum.zero(nullptr);
    SY_CUDA_TRY(cudaStreamSynchronize(nullptr));
    acc.count_sum = count_sum.data();
  }
  device_buffer<double> count_sum;
  DeviceGlobalAux acc;
};

device_buffer<float> upload(const std::vector<float>& h, cudaStream_t stream) {
  device_buffer<float> d(h.size());
  d.upload(h.data(), stream);
  return d;
}

class block_impl final : public CudaMoEBlock {
 public:
  explicit block_impl(const Config& c) {
    SY_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      layer_ = make_device_layer(c, stream_);
      grads_ = layer_->make_grads(stream_);
      host_grads_ = layer_->host_params();
    } catch (...) {
      (void)cudaStreamDestroy(stream_);
      throw;
    }
  }
  block_impl(const block_impl&) = delete;
  block_impl& operator=(const block_impl&) = delete;
  ~block_impl() override {
    layer_.reset();
    grads_ = {};
    (void)cudaStreamDestroy(stream_);
  }

  void set_params(const MoEParams<float>& p) override { layer_->set_params(p, stream_); }

  CudaForward forward(const std::vector<float>& x, index_t T, bool training, std::uint64_t seed,
                      std::uint32_t step, CudaGlobalAux* global_aux) override {
    const device_buffer<float> dx = upload(x, stream_);
    DeviceForwardOptions opt{training, seed, step, nullptr};
    if (global_aux) opt.global_aux = &static_cast<global_aux_impl*>(global_aux)->acc;
    DeviceMoEForward f = layer_->forward(dx.data(), T, stream_, opt);
    CudaForward out;
    out.y = f.y.download(stream_);
    out.metrics = std::move(f.metrics);
    auto saved = std::make_unique<saved_impl>();
    saved->s = std::move(f.saved);
    out.saved = std::move(saved);
    return out;
  }

  std::vector<float> backward(CudaSaved& saved, const std::vector<float>& dy,
                              MoEGrads<float>& grads) override {
    const device_buffer<float> ddy = upload(dy, stream_);
    grads_.set_zero(stream_);
    const device_buffer<float> dx =
        layer_->backward(static_cast<saved_impl&>(saved).s, ddy.data(), stream_, grads_);
    std::vector<float> out = dx.download(stream_);
    grads_.download(host_grads_, stream_);
    const std::vector<float>* from[] = {&host_grads_.router_weight, &host_grads_.fc1,
                                        &host_grads_.fc2, &host_grads_.fc1_bias,
                                        &host_grads_.fc2_bias};
    int i = 0;
    grads.for_each_tensor([&](std::vector<float>& g) {
      const std::vector<float>& d = *from[i++];
      SY_EXPECTS(g.size() == d.size(), "CudaMoEBlock::backward: gradients of another shape");
      for (std::size_t j = 0; j < g.size(); ++j) g[j] += d[j];
    });
    return out;
  }

  void update_expert_bias(std::span<const std::int64_t> kept) override {
    layer_->update_expert_bias(kept, stream_);
  }

 private:
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<DeviceMoELayerCore> layer_;
  DeviceMoEGrads grads_;
  MoEParams<float> host_grads_;
};

}  // namespace

int cuda_device_count() {
  return exec::cuda_device_count();
}

std::unique_ptr<CudaMoEBlock> make_cuda_block(const Config& c) {
  return std::make_unique<block_impl>(c);
}

std::unique_ptr<CudaGlobalAux> make_cuda_global_aux(std::int64_t num_experts) {
  return std::make_unique<global_aux_impl>(num_experts);
}

}  // namespace switchyard::cli
