// The device MoE layer for `switchyard train --backend cuda` (see cuda_layer.hpp).
#include "cuda_layer.hpp"

#include <cuda_runtime.h>

#include <utility>

#include "switchyard/layer/device_layer.cuh"
#if defined(SWITCHYARD_HAS_NCCL)
#include <cstring>

#include "switchyard/comm/nccl.cuh"
#endif

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

#if defined(SWITCHYARD_HAS_NCCL)
// Three ncclComm_t (owned) and their NcclComm views.
class comms_impl final : public CudaComms {
 public:
  comms_impl(const CudaGroup& ep, const CudaGroup& dense, const CudaGroup& edp) {
    const CudaGroup* g[3] = {&ep, &dense, &edp};
    for (int i = 0; i < 3; ++i) {
      ncclUniqueId id{};
      SY_EXPECTS(g[i]->id.size() == sizeof(id), "CudaGroup: the id is not an NCCL unique id");
      std::memcpy(&id, g[i]->id.data(), sizeof(id));
      try {
        SY_NCCL_TRY(ncclCommInitRank(&raw_[i], g[i]->size, id, g[i]->rank));
      } catch (...) {
        destroy();
        throw;
      }
      views_[i] = std::make_unique<NcclComm>(raw_[i], nullptr);
    }
  }
  comms_impl(const comms_impl&) = delete;
  comms_impl& operator=(const comms_impl&) = delete;
  ~comms_impl() override { destroy(); }
  DeviceMoEComms comms() const { return {views_[0].get(), views_[1].get(), views_[2].get()}; }

 private:
  void destroy() noexcept {
    for (auto& r : raw_)
      if (r) (void)ncclCommDestroy(std::exchange(r, nullptr));
  }
  ncclComm_t raw_[3] = {nullptr, nullptr, nullptr};
  std::unique_ptr<NcclComm> views_[3];
};
#endif

class block_impl final : public CudaMoEBlock {
 public:
  block_impl(const Config& c, std::shared_ptr<CudaComms> comms) : comms_(std::move(comms)) {
    SY_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      DeviceLayerResources resources;
#if defined(SWITCHYARD_HAS_NCCL)
      if (comms_) resources.comms = static_cast<const comms_impl&>(*comms_).comms();
#endif
      layer_ = make_device_layer(c, stream_, resources);
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
  void set_placement(const std::vector<std::int64_t>& expert_of_slot) override {
    layer_->set_placement(ExpertPlacementMap(layer_->placement().ep(), expert_of_slot), stream_);
  }

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
                                        &host_grads_.fc2,           &host_grads_.fc1_bias,
                                        &host_grads_.fc2_bias,      &host_grads_.shared_fc1,
                                        &host_grads_.shared_fc2,    &host_grads_.shared_gate};
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
  std::shared_ptr<CudaComms> comms_;  // outlives the layer, which holds views of it
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<DeviceMoELayerCore> layer_;
  DeviceMoEGrads grads_;
  MoEParams<float> host_grads_;
};

}  // namespace

int cuda_device_count() {
  return exec::cuda_device_count();
}

std::size_t nccl_unique_id_bytes() {
#if defined(SWITCHYARD_HAS_NCCL)
  return sizeof(ncclUniqueId);
#else
  return 0;
#endif
}

std::vector<unsigned char> nccl_unique_id() {
#if defined(SWITCHYARD_HAS_NCCL)
  ncclUniqueId id{};
  SY_NCCL_TRY(ncclGetUniqueId(&id));
  const auto* b = reinterpret_cast<const unsigned char*>(&id);
  return std::vector<unsigned char>(b, b + sizeof(id));
#else
  throw config_error("this switchyard was built without NCCL: the CUDA layer runs on one GPU");
#endif
}

std::shared_ptr<CudaComms> make_cuda_comms(const CudaGroup& expert_parallel,
                                           const CudaGroup& dense_data_parallel,
                                           const CudaGroup& expert_data_parallel) {
#if defined(SWITCHYARD_HAS_NCCL)
  return std::make_shared<comms_impl>(expert_parallel, dense_data_parallel, expert_data_parallel);
#else
  (void)expert_parallel;
  (void)dense_data_parallel;
  (void)expert_data_parallel;
  throw config_error("this switchyard was built without NCCL: the CUDA layer runs on one GPU");
#endif
}

void select_cuda_device(int local_rank, int local_size) {
  const int n = exec::cuda_device_count();
  if (n < local_size)
    throw config_error(detail::concat(
        "--backend cuda: ", local_size, " processes on this node but ", n,
        " visible GPU(s): NCCL needs one GPU per process (start at most ", n, " per node)"));
  SY_CUDA_TRY(cudaSetDevice(local_rank));
}

std::unique_ptr<CudaMoEBlock> make_cuda_block(const Config& c, std::shared_ptr<CudaComms> comms) {
  return std::make_unique<block_impl>(c, std::move(comms));
}

std::unique_ptr<CudaGlobalAux> make_cuda_global_aux(std::int64_t num_experts) {
  return std::make_unique<global_aux_impl>(num_experts);
}

}  // namespace switchyard::cli
