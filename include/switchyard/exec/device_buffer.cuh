#pragma once
/// \file An owning buffer of device memory (RAII over cudaMalloc / cudaFree), for the owning
/// conveniences of the device layer and for tests. nvcc only.

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/cuda.cuh"

namespace switchyard {

/// `size()` elements of T in device memory; movable, not copyable. Contents start undefined
/// (zero() clears them).
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t n) : n_(n) {
    if (n_) SY_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&p_), n_ * sizeof(T)));
  }
  device_buffer(device_buffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { release(); }

  T* data() { return p_; }
  const T* data() const { return p_; }
  std::size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

  /// Sets every byte to 0 (asynchronous on `stream`).
  void zero(cudaStream_t stream) {
    if (n_) SY_CUDA_TRY(cudaMemsetAsync(p_, 0, n_ * sizeof(T), stream));
  }
  /// Copies size() elements from host memory (asynchronous on `stream`: keep `src` alive and
  /// unchanged until the stream reaches the copy).
  void upload(const T* src, cudaStream_t stream) {
    if (n_) SY_CUDA_TRY(cudaMemcpyAsync(p_, src, n_ * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  /// Copies size() elements from device memory (asynchronous on `stream`).
  void copy_from_device(const T* src, cudaStream_t stream) {
    if (n_) SY_CUDA_TRY(cudaMemcpyAsync(p_, src, n_ * sizeof(T), cudaMemcpyDeviceToDevice, stream));
  }
  /// The contents on the host (synchronises `stream`).
  std::vector<T> download(cudaStream_t stream) const {
    std::vector<T> h(n_);
    if (n_) {
      SY_CUDA_TRY(cudaMemcpyAsync(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost, stream));
      SY_CUDA_TRY(cudaStreamSynchronize(stream));
    }
    return h;
  }

 private:
  void release() noexcept {
    if (p_) (void)cudaFree(p_);  // destruction must not throw
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace switchyard
