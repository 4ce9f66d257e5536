#pragma once
/// \file Host/device macros shared by every header.

#if defined(__CUDACC__)
#define SY_HD __host__ __device__
#define SY_DEVICE __device__
#define SY_IS_NVCC 1
#else
#define SY_HD
#define SY_DEVICE
#define SY_IS_NVCC 0
#endif

#if defined(__CUDA_ARCH__)
#define SY_DEVICE_CODE 1
#else
#define SY_DEVICE_CODE 0
#endif

#define SY_STRINGIFY_DETAIL(x) #x
#define SY_STRINGIFY(x) SY_STRINGIFY_DETAIL(x)
