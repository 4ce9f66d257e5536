#pragma once
/// \file Storage types on the device and their accumulation type: fp32 accumulation for
/// float, bf16 and fp16 storage, double for double (CONVENTIONS: "fp32 accumulation").

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "switchyard/core/macros.hpp"

namespace switchyard {

/// to_acc(v) widens a stored value; from_acc<T>(a) rounds back (round-to-nearest-even).
template <class T>
struct storage_traits {
  using accum = float;
  SY_HD static float to_acc(T v) { return static_cast<float>(v); }
  SY_HD static T from_acc(float a) { return static_cast<T>(a); }
};
template <>
struct storage_traits<double> {
  using accum = double;
  SY_HD static double to_acc(double v) { return v; }
  SY_HD static double from_acc(double a) { return a; }
};
template <>
struct storage_traits<__nv_bfloat16> {
  using accum = float;
  SY_HD static float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  SY_HD static __nv_bfloat16 from_acc(float a) { return __float2bfloat16_rn(a); }
};
template <>
struct storage_traits<__half> {
  using accum = float;
  SY_HD static float to_acc(__half v) { return __half2float(v); }
  SY_HD static __half from_acc(float a) { return __float2half_rn(a); }
};

}  // namespace switchyard
