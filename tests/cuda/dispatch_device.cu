// The dispatch plan and permute/unpermute on the device, for the host-vs-CUDA tests.
#include "dispatch_device.hpp"

#include <switchyard/dispatch/permute.cuh>
#include <switchyard/dispatch/plan.cuh>

namespace switchyard::test {
namespace {
template <class T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  SY_CUDA_TRY(cudaMalloc(&d, sizeof(T) * (h.size() ? h.size() : 1)));
  if (!h.empty()) SY_CUDA_TRY(cudaMemcpy(d, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice));
  return d;
}
template <class T>
std::vector<T> download(const T* d, std::size_t n) {
  std::vector<T> h(n);
  if (n) SY_CUDA_TRY(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost));
  return h;
}
}  // namespace

device_dispatch_result device_dispatch(const DispatchOptions& opt, std::int64_t T, std::int64_t k,
                                       std::int64_t H, const std::vector<std::int32_t>& expert,
                                       const std::vector<float>& prob, const std::vector<float>& x,
                                       const std::vector<float>& dy) {
  exec::Cuda cuda{};
  const std::size_t ws_bytes = plan_workspace_bytes<float>(cuda, T, k, opt);
  void* ws = nullptr;
  SY_CUDA_TRY(cudaMalloc(&ws, ws_bytes));
  auto* d_expert = upload(expert);
  auto* d_prob = upload(prob);
  auto* d_x = upload(x);
  auto* d_dy = upload(dy);
  const DevicePlan plan = build_plan<float>(cuda, opt, d_expert, d_prob, T, k, ws, ws_bytes);
  const auto rows_n = static_cast<std::size_t>(std::max<std::int64_t>(plan.max_rows, 1) * H);
  float *rows = nullptr, *y = nullptr, *d_rows = nullptr, *dp = nullptr, *dx = nullptr;
  SY_CUDA_TRY(cudaMalloc(&rows, sizeof(float) * rows_n));
  SY_CUDA_TRY(cudaMalloc(&d_rows, sizeof(float) * rows_n));
  SY_CUDA_TRY(cudaMalloc(&y, sizeof(float) * static_cast<std::size_t>(std::max<std::int64_t>(T * H, 1))));
  SY_CUDA_TRY(cudaMalloc(&dx, sizeof(float) * static_cast<std::size_t>(std::max<std::int64_t>(T * H, 1))));
  SY_CUDA_TRY(cudaMalloc(&dp, sizeof(float) * static_cast<std::size_t>(std::max<std::int64_t>(T * k, 1))));
  permute(cuda, plan, d_x, H, rows);
  unpermute(cuda, plan, rows, d_prob, H, y);
  unpermute_backward(cuda, plan, rows, d_prob, d_dy, H, d_rows, dp);
  permute_backward(cuda, plan, d_rows, H, dx);
  device_dispatch_result out;
  out.plan = to_host(cuda, plan);
  const auto R = static_cast<std::size_t>(out.plan.rows() * H);
  out.rows = download(rows, R);
  out.d_rows = download(d_rows, R);
  out.y = download(y, static_cast<std::size_t>(T * H));
  out.dx = download(dx, static_cast<std::size_t>(T * H));
  out.d_prob = download(dp, static_cast<std::size_t>(T * k));
  for (void* p : {static_cast<void*>(rows), static_cast<void*>(d_rows), static_cast<void*>(y),
                  static_cast<void*>(dx), static_cast<void*>(dp), ws, static_cast<void*>(d_expert),
                  static_cast<void*>(d_prob), static_cast<void*>(d_x), static_cast<void*>(d_dy)})
    SY_CUDA_TRY(cudaFree(p));
  return out;
}

}  // namespace switchyard::test
