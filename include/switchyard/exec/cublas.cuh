#pragma once
/// \file cuBLAS error checking (CONVENTIONS.md, "Errors"). Included only by nvcc translation units.

#include <cublas_v2.h>

#include "switchyard/core/error.hpp"

namespace switchyard::detail {
[[noreturn]] inline void throw_cublas(cublasStatus_t status, const char* call, const char* file,
                                      int line) {
  throw cuda_error(concat(call, " failed at ", file, ":", line, ": ", cublasGetStatusName(status),
                          " (", cublasGetStatusString(status), ")"));
}
}  // namespace switchyard::detail

/// Every cuBLAS call goes through this: it throws cuda_error with the call and cuBLAS's status.
#define SY_CUBLAS_TRY(call)                                                      \
  do {                                                                           \
    const cublasStatus_t sy_status_ = (call);                                    \
    if (sy_status_ != CUBLAS_STATUS_SUCCESS)                                     \
      ::switchyard::detail::throw_cublas(sy_status_, #call, __FILE__, __LINE__); \
  } while (0)
