#pragma once
/// \file Where the device layer takes its memory from. A framework that manages GPU memory itself
/// (a caching allocator, RMM, an arena it sized up front) implements device_memory_resource and
/// hands it to the layer; without one the layer uses cudaMallocAsync / cudaFreeAsync on the
/// current device's default memory pool. Both are stream-ordered: memory returned on a stream
/// may be reused by later work on that stream only, so freeing a call's temporaries never waits
/// for the device. nvcc only.

#include <cuda_runtime.h>

#include <cstddef>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/cuda.cuh"

namespace switchyard {

/// Stream-ordered device memory (the contract of cudaMallocAsync): allocate() returns memory
/// that work queued on `stream` after the call may use; deallocate() returns it once the work
/// queued on `stream` before the call is done with it (the resource decides when to reuse it).
class device_memory_resource {
 public:
  virtual ~device_memory_resource() = default;
  /// `bytes` (> 0) of device memory, aligned to at least 256 bytes. Throws on failure (e.g.
  /// cuda_error for cudaErrorMemoryAllocation); never returns null.
  virtual void* allocate(std::size_t bytes, cudaStream_t stream) = 0;
  /// Gives back what allocate(bytes, stream') returned, ordered after the work on `stream`.
  virtual void deallocate(void* p, std::size_t bytes, cudaStream_t stream) noexcept = 0;
};

/// cudaMallocAsync / cudaFreeAsync on the current device's default memory pool.
class cuda_async_memory_resource final : public device_memory_resource {
 public:
  void* allocate(std::size_t bytes, cudaStream_t stream) override {
    void* p = nullptr;
    SY_CUDA_TRY(cudaMallocAsync(&p, bytes, stream));
    return p;
  }
  void deallocate(void* p, std::size_t, cudaStream_t stream) noexcept override {
    (void)cudaFreeAsync(p, stream);  // a destructor's path: must not throw
  }
};

/// The resource used when none is given (one per process, never destroyed before its users).
inline device_memory_resource& default_device_memory() {
  static cuda_async_memory_resource r;
  return r;
}

}  // namespace switchyard
