#pragma once
/// \file An owning buffer of device memory: RAII over cudaMalloc / cudaFree (long-lived buffers:
/// parameters, tests) or over a stream-ordered device_memory_resource (a call's buffers: the
/// framework's allocator or cudaMallocAsync). nvcc only.

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/cuda.cuh"
#include "switchyard/exec/device_memory.cuh"

namespace switchyard {

/// `size()` elements of T in device memory; movable, not copyable. Contents start undefined
/// (zero() clears them).
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  /// cudaMalloc (synchronous; freed with cudaFree, which waits for the device).
  explicit device_buffer(std::size_t n) : n_(n) {
    if (n_) SY_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&p_), n_ * sizeof(T)));
  }
  /// From `memory`, ordered on `stream`: usable by work queued on `stream` from now on, and
  /// given back on `stream` when destroyed (work on other streams must be ordered after
  /// `stream` by the caller, as with any stream-ordered allocation).
  device_buffer(std::size_t n, device_memory_resource& memory, cudaStream_t stream)
      : n_(n), memory_(&memory), stream_(stream) {
    if (n_) p_ = static_cast<T*>(memory.allocate(n_ * sizeof(T), stream));
  }
  device_buffer(device_buffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)),
        n_(std::exchange(o.n_, 0)),
        memory_(std::exchange(o.memory_, nullptr)),
        stream_(o.stream_) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
      memory_ = std::exchange(o.memory_, nullptr);
      stream_ = o.stream_;
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
    if (p_) {  // destruction must not throw
      if (memory_)
        memory_->deallocate(p_, n_ * sizeof(T), stream_);
      else
        (void)cudaFree(p_);
    }
    p_ = nullptr;
    n_ = 0;
    memory_ = nullptr;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
  device_memory_resource* memory_ = nullptr;  ///< null: cudaMalloc / cudaFree
  cudaStream_t stream_ = nullptr;
};

}  // namespace switchyard
