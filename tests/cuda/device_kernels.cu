// The CUDA side of the tests: kernels calling the same SY_HD functions as the host code.
#include "device_kernels.hpp"

#include <switchyard/switchyard.hpp>

namespace switchyard::test {
namespace {

struct philox_body {
  std::uint64_t seed;
  std::uint32_t stream, col, n;
  float* out;
  __device__ void operator()(std::uint32_t i) const {
    out[i] = philox_uniform(seed, stream, i, col);
  }
};

template <class Body>
__global__ void for_each_kernel(Body body, std::uint32_t n) {
  const std::uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) body(i);
}

}  // namespace

int device_count() { return exec::cuda_device_count(); }

std::string device_name() {
  cudaDeviceProp prop{};
  SY_CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
  return prop.name;
}

std::vector<float> device_philox_uniform(std::uint64_t seed, std::uint32_t stream,
                                         std::uint32_t col, std::uint32_t n) {
  float* d = nullptr;
  SY_CUDA_TRY(cudaMalloc(&d, sizeof(float) * n));
  for_each_kernel<<<(n + 255) / 256, 256>>>(philox_body{seed, stream, col, n, d}, n);
  SY_CUDA_TRY(cudaGetLastError());
  std::vector<float> h(n);
  SY_CUDA_TRY(cudaMemcpy(h.data(), d, sizeof(float) * n, cudaMemcpyDeviceToHost));
  SY_CUDA_TRY(cudaFree(d));
  return h;
}

}  // namespace switchyard::test
