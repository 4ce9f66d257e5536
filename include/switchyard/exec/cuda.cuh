#pragma once
/// \file The CUDA backend value and the checked-call macro. Included only by nvcc translation
/// units.

#include <cuda_runtime.h>

#include <string>

#include "switchyard/core/error.hpp"
#include "switchyard/exec/host.hpp"

namespace switchyard::detail {
[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file,
                                    int line) {
  (void)cudaGetLastError();  // clear the sticky error so later calls start clean
  throw cuda_error(concat(call, " failed at ", file, ":", line, ": ", cudaGetErrorName(err), " (",
                          cudaGetErrorString(err), ")"));
}
}  // namespace switchyard::detail

/// Every CUDA runtime call goes through this: it throws cuda_error with the call and the error.
#define SY_CUDA_TRY(call)                                                              \
  do {                                                                                 \
    const cudaError_t sy_err_ = (call);                                                \
    if (sy_err_ != cudaSuccess) ::switchyard::detail::throw_cuda(sy_err_, #call, __FILE__, \
                                                                 __LINE__);            \
  } while (0)

namespace switchyard::exec {

/// CUDA execution on the caller's stream (the default stream when none is given).
struct Cuda {
  static constexpr bool is_device = true;
  cudaStream_t stream = nullptr;
};

static_assert(Backend<Cuda>);

/// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
inline int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace switchyard::exec
