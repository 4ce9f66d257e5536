// The device MoE layer behind the plain C++ interface of layer_device.hpp.
#include "layer_device.hpp"

#include <cmath>
#include <exception>
#include <limits>

#include <switchyard/layer/device_layer.cuh>

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

}  // namespace

device_layer_out device_layer_run(const Config& cfg, std::uint64_t seed,
                                  const std::vector<float>& x, std::int64_t T,
                                  const std::vector<float>& dy, bool training,
                                  std::uint32_t step) {
  test_stream st;
  auto layer = make_device_layer(cfg, st.s);
  layer->initialize(seed, st.s);
  const device_buffer<float> dx_in = to_device(x, st.s), ddy = to_device(dy, st.s);
  device_buffer<double> count_sum(static_cast<std::size_t>(cfg.num_experts));
  count_sum.zero(st.s);
  DeviceGlobalAux global{count_sum.data(), 0};
  DeviceMoEForward fwd = layer->forward(dx_in.data(), T, st.s,
                                        {.training = training, .seed = seed, .step = step,
                                         .global_aux = &global});
  DeviceMoEGrads grads = layer->make_grads(st.s);
  const device_buffer<float> dx = layer->backward(fwd.saved, ddy.data(), st.s, grads);
  device_layer_out out;
  out.y = fwd.y.download(st.s);
  out.dx = dx.download(st.s);
  out.params = layer->get_params(st.s);
  out.grads = layer->host_params();
  grads.download(out.grads, st.s);
  out.metrics = fwd.metrics;
  return out;
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
  x[static_cast<std::size_t>(bad_token * cfg.hidden_size)] = std::numeric_limits<float>::quiet_NaN();
  const device_buffer<float> dx = to_device(x, st.s);
  return catch_error([&] { (void)layer->forward(dx.data(), T, st.s); });
}

}  // namespace switchyard::test
