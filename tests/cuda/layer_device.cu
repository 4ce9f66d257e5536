// The device MoE layer behind the plain C++ interface of layer_device.hpp.
#include "layer_device.hpp"

#include <cmath>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <utility>

#include <switchyard/layer/device_layer.cuh>
#if defined(SWITCHYARD_HAS_NCCL)
#include <switchyard/comm/nccl.cuh>
#endif

namespace switchyard::test {
namespace {

device_buffer<float> to_device(const std::vector<float>& h, cudaStream_t stream) {
  device_buffer<float> d(h.size());
  d.upload(h.data(), stream);
  SY_CUDA_TRY(cudaStreamSynchronize(stream));
  return d;
}

/// A stream for one test call (RAII).
struct test_stream {
  cudaStream_t s = nullptr;
  test_stream() { SY_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  test_stream(const test_stream&) = delete;
  test_stream& operator=(const test_stream&) = delete;
  ~test_stream() { (void)cudaStreamDestroy(s); }
};

template <class F>
device_layer_error catch_error(F&& f) {
  try {
    f();
  } catch (const config_error& e) {
    return {"config_error", e.what()};
  } catch (const numeric_error& e) {
    return {"numeric_error", e.what()};
  } catch (const std::exception& e) {
    return {"other", e.what()};
  }
  return {};
}

/// A framework's memory resource: cudaMallocAsync underneath, counting what it hands out.
class counting_memory final : public device_memory_resource {
 public:
  void* allocate(std::size_t bytes, cudaStream_t stream) override {
    ++allocations;
    outstanding += static_cast<std::int64_t>(bytes);
    return default_device_memory().allocate(bytes, stream);
  }
  void deallocate(void* p, std::size_t bytes, cudaStream_t stream) noexcept override {
    outstanding -= static_cast<std::int64_t>(bytes);
    default_device_memory().deallocate(p, bytes, stream);
  }
  std::int64_t allocations = 0, outstanding = 0;
};

#if defined(SWITCHYARD_HAS_NCCL)
/// A memory resource failing on demand: it counts, while armed, the allocations of at least
/// `min_bytes`, and the `fail_at`-th of them throws std::bad_alloc (0: count only).
class failing_memory final : public device_memory_resource {
 public:
  void* allocate(std::size_t bytes, cudaStream_t stream) override {
    if (armed && bytes >= min_bytes && ++seen == fail_at) throw std::bad_alloc();
    outstanding += static_cast<std::int64_t>(bytes);
    return default_device_memory().allocate(bytes, stream);
  }
  void deallocate(void* p, std::size_t bytes, cudaStream_t stream) noexcept override {
    outstanding -= static_cast<std::int64_t>(bytes);
    default_device_memory().deallocate(p, bytes, stream);
  }
  bool armed = false;
  std::size_t min_bytes = 0;
  std::int64_t seen = 0, fail_at = 0, outstanding = 0;
};

/// An ncclComm_t of one rank on device 0 (RAII), as a framework would own it.
struct one_rank_nccl {
  ncclComm_t raw = nullptr;
  one_rank_nccl() {
    int dev = 0;
    SY_NCCL_TRY(ncclCommInitAll(&raw, 1, &dev));
  }
  one_rank_nccl(const one_rank_nccl&) = delete;
  one_rank_nccl& operator=(const one_rank_nccl&) = delete;
  ~one_rank_nccl() { (void)ncclCommDestroy(raw); }
};
#endif

}  // namespace

namespace {
/// initialize(seed), forward, backward into zero gradients, everything back on the host.
device_layer_out run_layer(DeviceMoELayerCore& layer, cudaStream_t stream, std::uint64_t seed,
                           const std::vector<float>& x, std::int64_t T,
                           const std::vector<float>& dy, bool training, std::uint32_t step,
                           const std::vector<std::int64_t>* expert_of_slot = nullptr) {
  layer.initialize(seed, stream);
  std::vector<float> moved_state;
  if (expert_of_slot) {
    const ExpertPlacementMap& from = layer.placement();
    const std::int64_t El = from.local_experts(), me = 0;  // one GPU (or one EP rank)
    std::vector<float> state(static_cast<std::size_t>(El * 3));
    for (std::int64_t j = 0; j < El; ++j)
      for (std::int64_t i = 0; i < 3; ++i)
        state[static_cast<std::size_t>(j * 3 + i)] =
            static_cast<float>(10 * from.expert(me, j) + i);
    device_buffer<float> d_state = to_device(state, stream);
    const std::span<float> also[1] = {std::span<float>(d_state.data(), d_state.size())};
    layer.move_experts(ExpertPlacementMap(from.ep(), *expert_of_slot), stream, also);
    moved_state = d_state.download(stream);
  }
  const device_buffer<float> dx_in = to_device(x, stream), ddy = to_device(dy, stream);
  device_buffer<double> count_sum(static_cast<std::size_t>(layer.config().num_experts));
  count_sum.zero(stream);
  DeviceGlobalAux global{count_sum.data(), 0};
  DeviceMoEForward fwd =
      layer.forward(dx_in.data(), T, stream,
                    {.training = training, .seed = seed, .step = step, .global_aux = &global});
  DeviceMoEGrads grads = layer.make_grads(stream);
  const device_buffer<float> dx = layer.backward(fwd.saved, ddy.data(), stream, grads);
  layer.reduce_gradients(grads, stream);  // over the groups (a no-op on one GPU)
  device_layer_out out;
  out.y = fwd.y.download(stream);
  out.dx = dx.download(stream);
  out.params = layer.get_params(stream);
  out.grads = layer.host_params();
  grads.download(out.grads, stream);
  out.metrics = fwd.metrics;
  out.moved_state = std::move(moved_state);
  return out;
}
}  // namespace

bool device_framework_mode_available() {
#if defined(SWITCHYARD_HAS_NCCL)
  return true;
#else
  return false;
#endif
}

device_layer_out device_layer_run(const Config& cfg, std::uint64_t seed,
                                  const std::vector<float>& x, std::int64_t T,
                                  const std::vector<float>& dy, bool training, std::uint32_t step,
                                  device_run_mode mode,
                                  const std::vector<std::int64_t>* expert_of_slot) {
  test_stream st;
  if (mode == device_run_mode::plain) {
    auto layer = make_device_layer(cfg, st.s);
    return run_layer(*layer, st.s, seed, x, T, dy, training, step, expert_of_slot);
  }
#if defined(SWITCHYARD_HAS_NCCL)
  counting_memory memory;
  one_rank_nccl nccl;
  NcclComm comm(nccl.raw, st.s);
  device_layer_out out;
  {
    auto layer = make_device_layer(cfg, st.s, {.comms = {&comm, &comm, &comm}, .memory = &memory});
    out = run_layer(*layer, st.s, seed, x, T, dy, training, step, expert_of_slot);
  }
  SY_CUDA_TRY(cudaStreamSynchronize(st.s));
  out.allocations = memory.allocations;
  out.bytes_outstanding = memory.outstanding;
  return out;
#else
  throw std::logic_error("device_run_mode::framework needs NCCL");
#endif
}

device_layer_out device_layer_run_compile_time(const Config& cfg, std::uint64_t seed,
                                               const std::vector<float>& x, std::int64_t T,
                                               const std::vector<float>& dy) {
  test_stream st;
  DeviceMoELayer<TopK<2, Softmax>, Capacity<DropByProbs>, GLU<SiLU>> layer(
      cfg, TopK<2, Softmax>(router_params(cfg)), st.s);
  return run_layer(layer, st.s, seed, x, T, dy, true, 0);
}

device_layer_error device_layer_compile_time_error(const Config& cfg) {
  return catch_error([&] {
    DeviceMoELayer<TopK<2, Softmax>, Capacity<DropByProbs>, GLU<SiLU>> layer(
        cfg, TopK<2, Softmax>(router_params(cfg)));
  });
}

device_layer_error device_layer_construct_error(const Config& cfg) {
  return catch_error([&] { (void)make_device_layer(cfg); });
}

device_layer_error device_layer_nan_error(const Config& cfg, std::int64_t T,
                                          std::int64_t bad_token) {
  test_stream st;
  auto layer = make_device_layer(cfg, st.s);
  layer->initialize(1, st.s);
  std::vector<float> x(static_cast<std::size_t>(T * cfg.hidden_size), 0.5f);
  x[static_cast<std::size_t>(bad_token * cfg.hidden_size)] =
      std::numeric_limits<float>::quiet_NaN();
  const device_buffer<float> dx = to_device(x, st.s);
  return catch_error([&] { (void)layer->forward(dx.data(), T, st.s); });
}

global_aux_after_failure device_layer_global_aux_after_failure(const Config& cfg, std::int64_t T,
                                                               std::int64_t bad_token) {
  test_stream st;
  auto layer = make_device_layer(cfg, st.s);
  layer->initialize(1, st.s);
  const auto E = static_cast<std::size_t>(cfg.num_experts);
  device_buffer<double> sums(E);
  SY_CUDA_TRY(cudaMemsetAsync(sums.data(), 0, sizeof(double) * E, st.s));
  DeviceGlobalAux global{sums.data(), 0};
  const auto read_sums = [&] {
    std::vector<double> h(E);
    SY_CUDA_TRY(
        cudaMemcpyAsync(h.data(), sums.data(), sizeof(double) * E, cudaMemcpyDeviceToHost, st.s));
    SY_CUDA_TRY(cudaStreamSynchronize(st.s));
    return h;
  };
  std::vector<float> x(static_cast<std::size_t>(T * cfg.hidden_size));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.7f * static_cast<float>(i));
  global_aux_after_failure r;
  {
    const device_buffer<float> good = to_device(x, st.s);
    (void)layer->forward(good.data(), T, st.s, {.training = true, .global_aux = &global});
  }
  r.micro_batches_good = global.micro_batches;
  r.sums_good = read_sums();
  x[static_cast<std::size_t>(bad_token * cfg.hidden_size)] =
      std::numeric_limits<float>::quiet_NaN();
  const device_buffer<float> bad = to_device(x, st.s);
  r.error = catch_error([&] {
    (void)layer->forward(bad.data(), T, st.s, {.training = true, .global_aux = &global});
  });
  r.micro_batches_after = global.micro_batches;
  r.sums_after = read_sums();
  return r;
}

device_allocation_sweep device_layer_allocation_sweep(const Config& cfg, std::int64_t T,
                                                      std::size_t min_bytes) {
#if defined(SWITCHYARD_HAS_NCCL)
  test_stream st;
  failing_memory memory;
  memory.min_bytes = min_bytes;
  one_rank_nccl nccl;
  NcclComm comm(nccl.raw, st.s);
  device_allocation_sweep r;
  {
    auto layer = make_device_layer(cfg, st.s, {.comms = {&comm, &comm, &comm}, .memory = &memory});
    layer->initialize(3, st.s);
    std::vector<float> x(static_cast<std::size_t>(T * cfg.hidden_size)), dy(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = std::sin(0.37f * static_cast<float>(i));
      dy[i] = std::cos(0.23f * static_cast<float>(i));
    }
    const device_buffer<float> dx_in = to_device(x, st.s), ddy = to_device(dy, st.s);
    const auto step = [&] {
      DeviceMoEForward f = layer->forward(dx_in.data(), T, st.s);
      DeviceMoEGrads g = layer->make_grads(st.s);
      const device_buffer<float> dx = layer->backward(f.saved, ddy.data(), st.s, g);
      return std::make_pair(f.y.download(st.s), dx.download(st.s));
    };
    // Runs `call` armed (fail_at 0 counts only); returns the allocations counted.
    const auto armed = [&](std::int64_t fail_at, auto&& call) {
      memory.seen = 0;
      memory.fail_at = fail_at;
      memory.armed = true;
      std::string error;
      try {
        call();
      } catch (const std::exception& e) {
        error = e.what();
      }
      memory.armed = false;
      SY_CUDA_TRY(cudaStreamSynchronize(st.s));
      if (fail_at > 0) r.errors.push_back(error);
      return memory.seen;
    };
    const auto reference = step();
    const auto good_step_after = [&] {
      if (step() != reference) ++r.steps_differing;
    };
    r.forward_allocations = armed(0, [&] { (void)layer->forward(dx_in.data(), T, st.s); });
    for (std::int64_t n = 1; n <= r.forward_allocations; ++n) {
      armed(n, [&] { (void)layer->forward(dx_in.data(), T, st.s); });
      good_step_after();
    }
    const auto backward_armed = [&](std::int64_t fail_at) {
      DeviceMoEForward f = layer->forward(dx_in.data(), T, st.s);
      DeviceMoEGrads g = layer->make_grads(st.s);
      return armed(fail_at, [&] { (void)layer->backward(f.saved, ddy.data(), st.s, g); });
    };
    r.backward_allocations = backward_armed(0);
    for (std::int64_t n = 1; n <= r.backward_allocations; ++n) {
      backward_armed(n);
      good_step_after();
    }
  }
  SY_CUDA_TRY(cudaStreamSynchronize(st.s));
  r.bytes_outstanding = memory.outstanding;
  return r;
#else
  (void)cfg, (void)T, (void)min_bytes;
  throw std::logic_error("device_layer_allocation_sweep needs NCCL");
#endif
}

}  // namespace switchyard::test
