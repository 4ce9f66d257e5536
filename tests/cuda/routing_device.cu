// The routing kernels behind routing_device.hpp: device buffers in, host vectors out.
#include "routing_device.hpp"

#include <cuda_bf16.h>

#include <switchyard/routing.cuh>

namespace switchyard::test {
namespace {

template <class T>
struct dbuf {
  T* p = nullptr;
  std::size_t n = 0;
  explicit dbuf(std::size_t count) : n(count) {
    SY_CUDA_TRY(cudaMalloc(&p, sizeof(T) * (count ? count : 1)));
  }
  explicit dbuf(const std::vector<T>& h) : dbuf(h.size()) {
    if (n) SY_CUDA_TRY(cudaMemcpy(p, h.data(), sizeof(T) * n, cudaMemcpyHostToDevice));
  }
  dbuf(const dbuf&) = delete;
  dbuf& operator=(const dbuf&) = delete;
  ~dbuf() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    if (n) SY_CUDA_TRY(cudaMemcpy(h.data(), p, sizeof(T) * n, cudaMemcpyDeviceToHost));
    return h;
  }
};

template <int K, class Score>
device_routes run_top_k(const std::vector<float>& logits, index_t T, const RouterParams& p,
                        const std::vector<float>& dprob) {
  const TopK<K, Score> router(p);
  const index_t E = p.num_experts;
  exec::Cuda cuda{};
  dbuf<float> z(logits), g(dprob), dz(static_cast<std::size_t>(T * E)), probs(T * K);
  dbuf<std::int32_t> idx(static_cast<std::size_t>(T * K));
  std::vector<float> bias_h(p.expert_bias.begin(), p.expert_bias.end());
  dbuf<float> bias(bias_h);
  dbuf<unsigned long long> status(1);
  const auto a = router.template args_with_bias<float>(bias_h.empty() ? nullptr : bias.p);
  const matrix_view<const float> zv(z.p, T, E);
  reset_routing_status(cuda, status.p);
  top_k_forward<K, Score>(cuda, a, zv, matrix_view<std::int32_t>(idx.p, T, K),
                          matrix_view<float>(probs.p, T, K), status.p);
  check_routing_status(cuda, status.p);
  dbuf<unsigned char> ws(losses_workspace_bytes(T, E, K, p.losses));
  dbuf<double> values(p.losses.balance.size() + 1);
  dbuf<double> gsum(static_cast<std::size_t>(E));
  SY_CUDA_TRY(cudaMemset(gsum.p, 0, sizeof(double) * gsum.n));
  DeviceGlobalAux global{gsum.p, 0};
  losses_forward<K, Score>(cuda, zv, p.losses, ws.p, values.p, &global);
  top_k_backward<K, Score>(cuda, a, zv, matrix_view<const std::int32_t>(idx.p, T, K),
                           matrix_view<const float>(g.p, T, K), matrix_view<float>(dz.p, T, E));
  losses_backward<K, Score>(cuda, zv, p.losses, ws.p, matrix_view<float>(dz.p, T, E));
  SY_CUDA_TRY(cudaStreamSynchronize(cuda.stream));
  device_routes r;
  r.topk_indices = idx.get();
  r.topk_probs = probs.get();
  r.dlogits = dz.get();
  r.losses = values.get();
  r.used_warp_kernel = top_k_uses_warp_kernel(E, a.num_groups);
  return r;
}

template <int K>
device_routes run_top_k_score(score_kind s, const std::vector<float>& z, index_t T,
                              const RouterParams& p, const std::vector<float>& g) {
  switch (s) {
    case score_kind::softmax:
      if constexpr (K > 1) return run_top_k<K, Softmax>(z, T, p, g);
      break;
    case score_kind::pre_softmax: return run_top_k<K, PreSoftmax>(z, T, p, g);
    case score_kind::sigmoid: return run_top_k<K, Sigmoid>(z, T, p, g);
    case score_kind::sqrtsoftplus: return run_top_k<K, SqrtSoftplus>(z, T, p, g);
  }
  throw precondition_error("device_top_k: softmax top-k-first needs k >= 2");
}

template <int K>
device_routes run_sinkhorn(const std::vector<float>& logits, index_t T, index_t E, bool training,
                           const LossParams& losses, const std::vector<float>& dprob) {
  const Sinkhorn<K> router(E, losses);
  exec::Cuda cuda{};
  dbuf<float> z(logits), g(dprob), dz(static_cast<std::size_t>(T * E)), probs(T * K);
  dbuf<std::int32_t> idx(static_cast<std::size_t>(T * K));
  dbuf<float> ws(sinkhorn_workspace_bytes(T, E) / sizeof(float));
  dbuf<int> it(1);
  dbuf<unsigned long long> status(1);
  const matrix_view<const float> zv(z.p, T, E);
  reset_routing_status(cuda, status.p);
  sinkhorn_forward<K>(cuda, router, zv, training, ws.p, matrix_view<std::int32_t>(idx.p, T, K),
                      matrix_view<float>(probs.p, T, K), it.p, status.p);
  check_routing_status(cuda, status.p);
  dbuf<unsigned char> lws(losses_workspace_bytes(T, E, K, losses));
  dbuf<double> values(1);
  losses_forward<K, Softmax>(cuda, zv, losses, lws.p, values.p);
  sinkhorn_backward<K>(cuda, zv, matrix_view<const std::int32_t>(idx.p, T, K),
                       matrix_view<const float>(g.p, T, K), matrix_view<float>(dz.p, T, E));
  losses_backward<K, Softmax>(cuda, zv, losses, lws.p, matrix_view<float>(dz.p, T, E));
  SY_CUDA_TRY(cudaStreamSynchronize(cuda.stream));
  device_routes r;
  r.topk_indices = idx.get();
  r.topk_probs = probs.get();
  r.dlogits = dz.get();
  r.losses = values.get();
  r.sinkhorn_iterations = it.get()[0];
  if (training) {
    auto all = ws.get();
    r.plan.assign(all.begin(), all.begin() + T * E);
  }
  return r;
}

}  // namespace

device_routes device_top_k(score_kind score, int k, const std::vector<float>& logits, index_t T,
                           const RouterParams& p, const std::vector<float>& dprob) {
  switch (k) {
    case 1: return run_top_k_score<1>(score, logits, T, p, dprob);
    case 2: return run_top_k_score<2>(score, logits, T, p, dprob);
    case 4: return run_top_k_score<4>(score, logits, T, p, dprob);
    case 6: return run_top_k_score<6>(score, logits, T, p, dprob);
    case 8: return run_top_k_score<8>(score, logits, T, p, dprob);
    default: throw precondition_error("device_top_k: k must be 1, 2, 4, 6 or 8");
  }
}

device_routes device_sinkhorn(int k, const std::vector<float>& logits, index_t T, index_t E,
                              bool training, const LossParams& losses,
                              const std::vector<float>& dprob) {
  if (k == 1) return run_sinkhorn<1>(logits, T, E, training, losses, dprob);
  if (k == 2) return run_sinkhorn<2>(logits, T, E, training, losses, dprob);
  throw precondition_error("device_sinkhorn: k must be 1 or 2");
}

device_linear device_router_linear(const std::vector<float>& x, const std::vector<float>& w,
                                   const std::vector<float>& b, index_t T, index_t H, index_t E,
                                   const std::vector<float>& dz, bool bf16) {
  exec::Cuda cuda{};
  dbuf<float> bias(b), g(dz), z(static_cast<std::size_t>(T * E)), dx(T * H), dw(E * H), db(E);
  const auto run = [&](const auto* xp, const auto* wp) {
    using In = std::remove_cvref_t<decltype(*xp)>;
    router_linear_forward<In>(cuda, matrix_view<const In>(xp, T, H), matrix_view<const In>(wp, E, H),
                              bias.p, matrix_view<float>(z.p, T, E));
    router_linear_backward<In>(cuda, matrix_view<const In>(xp, T, H),
                               matrix_view<const In>(wp, E, H), matrix_view<const float>(g.p, T, E),
                               matrix_view<float>(dx.p, T, H), matrix_view<float>(dw.p, E, H),
                               db.p);
  };
  if (bf16) {
    std::vector<__nv_bfloat16> xb(x.size()), wb(w.size());
    for (std::size_t i = 0; i < x.size(); ++i) xb[i] = __float2bfloat16(x[i]);
    for (std::size_t i = 0; i < w.size(); ++i) wb[i] = __float2bfloat16(w[i]);
    dbuf<__nv_bfloat16> xd(xb), wd(wb);
    run(static_cast<const __nv_bfloat16*>(xd.p), static_cast<const __nv_bfloat16*>(wd.p));
    SY_CUDA_TRY(cudaStreamSynchronize(cuda.stream));
  } else {
    dbuf<float> xd(x), wd(w);
    run(static_cast<const float*>(xd.p), static_cast<const float*>(wd.p));
    SY_CUDA_TRY(cudaStreamSynchronize(cuda.stream));
  }
  return {z.get(), dx.get(), dw.get(), db.get()};
}

std::vector<float> device_jitter(std::vector<float> x, index_t T, index_t H, JitterParams j) {
  dbuf<float> d(x);
  apply_input_jitter<float>(exec::Cuda{}, matrix_view<float>(d.p, T, H), j);
  SY_CUDA_TRY(cudaDeviceSynchronize());
  return d.get();
}

}  // namespace switchyard::test
