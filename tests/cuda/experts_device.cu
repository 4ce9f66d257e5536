// The CUDA experts behind the plain C++ interface of experts_device.hpp.
#include "experts_device.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>
#include <span>

#include <switchyard/experts/experts.cuh>

namespace switchyard::test {
namespace {

template <class T>
T from_f(float v) {
  if constexpr (std::is_same_v<T, float>)
    return v;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else
    return __float2half_rn(v);
}
template <class T>
float to_f(T v) {
  if constexpr (std::is_same_v<T, float>)
    return v;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(v);
  else
    return __half2float(v);
}

/// Device buffer of n elements (RAII), filled from host floats.
template <class T>
struct dev_buf {
  T* p = nullptr;
  std::size_t n = 0;
  explicit dev_buf(std::size_t count) : n(count) {
    if (n) SY_CUDA_TRY(cudaMalloc(&p, n * sizeof(T)));
    if (n) SY_CUDA_TRY(cudaMemset(p, 0, n * sizeof(T)));
  }
  explicit dev_buf(const std::vector<float>& h) : dev_buf(h.size()) {
    std::vector<T> t(h.size());
    for (std::size_t i = 0; i < h.size(); ++i) t[i] = from_f<T>(h[i]);
    if (n) SY_CUDA_TRY(cudaMemcpy(p, t.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  dev_buf(const dev_buf&) = delete;
  dev_buf& operator=(const dev_buf&) = delete;
  ~dev_buf() {
    if (p) (void)cudaFree(p);
  }
  std::vector<float> get() const {
    std::vector<T> t(n);
    if (n) SY_CUDA_TRY(cudaMemcpy(t.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<float> h(n);
    for (std::size_t i = 0; i < n; ++i) h[i] = to_f(t[i]);
    return h;
  }
};

template <class T, class G, ExpertPolicy P>
device_expert_out run(P p, const device_expert_io& io, int streams) {
  const auto& s = io.shape;
  const index_t E = s.num_experts, H = s.hidden, F = s.ffn_hidden, F1 = P::fc1_multiplier * F;
  const index_t R = io.offsets.back();
  dev_buf<T> fc1(io.fc1), fc2(io.fc2), b1(io.b1), b2(io.b2), x(io.x), dy(io.dy);
  dev_buf<T> y(static_cast<std::size_t>(R * H)), dx(static_cast<std::size_t>(R * H));
  dev_buf<G> g1(static_cast<std::size_t>(E * F1 * H)), g2(static_cast<std::size_t>(E * H * F));
  dev_buf<G> gb1(s.bias ? static_cast<std::size_t>(E * F1) : 0),
      gb2(s.bias ? static_cast<std::size_t>(E * H) : 0);
  dev_buf<std::byte> ws(expert_workspace_bytes<T>(p, s, R));
  const expert_weights<T> w{tensor3_view<const T>(fc1.p, E, F1, H),
                            tensor3_view<const T>(fc2.p, E, H, F),
                            s.bias ? matrix_view<const T>(b1.p, E, F1) : matrix_view<const T>(),
                            s.bias ? matrix_view<const T>(b2.p, E, H) : matrix_view<const T>()};
  const expert_grads<G> g{tensor3_view<G>(g1.p, E, F1, H), tensor3_view<G>(g2.p, E, H, F),
                          s.bias ? matrix_view<G>(gb1.p, E, F1) : matrix_view<G>(),
                          s.bias ? matrix_view<G>(gb2.p, E, H) : matrix_view<G>()};
  cudaStream_t stream = nullptr;
  SY_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cuda_expert_resources res(streams);
  const std::span<const index_t> off(io.offsets.data(), io.offsets.size());
  const expert_options opt{.dropout = io.dropout, .gemm = host_gemm::automatic};
  const std::span<std::byte> wsp(ws.p, ws.n);
  expert_forward(p, exec::Cuda{stream}, res, s, w, matrix_view<const T>(x.p, R, H), off,
                 matrix_view<T>(y.p, R, H), wsp, opt);
  expert_backward(p, exec::Cuda{stream}, res, s, w, matrix_view<const T>(x.p, R, H), off,
                  matrix_view<const T>(dy.p, R, H), matrix_view<T>(dx.p, R, H), g, wsp, opt);
  SY_CUDA_TRY(cudaStreamSynchronize(stream));
  SY_CUDA_TRY(cudaStreamDestroy(stream));
  return {y.get(), dx.get(), g1.get(), g2.get(), gb1.get(), gb2.get()};
}

}  // namespace

device_expert_out device_expert_run(const device_expert_io& io, storage st, bool grads_in_storage,
                                    int streams) {
  return visit_expert_policy(io.activation, io.gated, [&](auto p) {
    switch (st) {
      case storage::bf16:
        return grads_in_storage ? run<__nv_bfloat16, __nv_bfloat16>(p, io, streams)
                                : run<__nv_bfloat16, float>(p, io, streams);
      case storage::f16:
        return grads_in_storage ? run<__half, __half>(p, io, streams)
                                : run<__half, float>(p, io, streams);
      case storage::f32: break;
    }
    return run<float, float>(p, io, streams);
  });
}

std::vector<float> round_to_storage(const std::vector<float>& v, storage st) {
  std::vector<float> r(v.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    r[i] = st == storage::bf16  ? to_f(from_f<__nv_bfloat16>(v[i]))
           : st == storage::f16 ? to_f(from_f<__half>(v[i]))
                                : v[i];
  return r;
}

std::vector<float> device_grouped_gemm(const std::vector<std::int64_t>& offsets,
                                       const std::vector<float>& a, const std::vector<float>& b,
                                       std::vector<float> c, std::int64_t E, std::int64_t N,
                                       std::int64_t K) {
  const index_t R = offsets.back();
  dev_buf<float> da(a), db(b), dc(c);
  cuda_expert_resources res(3);
  grouped_gemm(exec::Cuda{nullptr}, res, std::span<const index_t>(offsets.data(), offsets.size()),
               matrix_view<const float>(da.p, R, K), tensor3_view<const float>(db.p, E, N, K),
               matrix_view<float>(dc.p, R, N), 1.0f);
  SY_CUDA_TRY(cudaDeviceSynchronize());
  return dc.get();
}

}  // namespace switchyard::test
