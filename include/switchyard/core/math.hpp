#pragma once
/// \file Numerically stable scalar math shared by host loops and CUDA kernels.

#include <cuda/std/cmath>
#include <cuda/std/limits>

#include "switchyard/core/macros.hpp"

namespace switchyard::math {

template <class T>
SY_HD inline T exp(T x) {
  return cuda::std::exp(x);
}
template <class T>
SY_HD inline T log(T x) {
  return cuda::std::log(x);
}
template <class T>
SY_HD inline T sqrt(T x) {
  return cuda::std::sqrt(x);
}
template <class T>
SY_HD inline T abs(T x) {
  return cuda::std::fabs(x);
}
template <class T>
SY_HD inline bool isfinite(T x) {
  return cuda::std::isfinite(x);
}
template <class T>
SY_HD constexpr T infinity() {
  return cuda::std::numeric_limits<T>::infinity();
}

/// σ(x), evaluated without overflow for either sign.
template <class T>
SY_HD inline T sigmoid(T x) {
  if (x >= T(0)) {
    const T e = exp(-x);
    return T(1) / (T(1) + e);
  }
  const T e = exp(x);
  return e / (T(1) + e);
}

/// softplus(x) = log(1 + e^x), stable for large |x|.
template <class T>
SY_HD inline T softplus(T x) {
  return x > T(0) ? x + cuda::std::log1p(exp(-x)) : cuda::std::log1p(exp(x));
}

}  // namespace switchyard::math
