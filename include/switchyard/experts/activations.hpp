#pragma once
/// \file Expert activations (REFERENCE §6) as SY_HD function objects: the host loops and the CUDA
/// kernels call the same value() and derivative().

#include <cmath>
#include <concepts>
#include <type_traits>

#include "switchyard/config/enums.hpp"
#include "switchyard/core/macros.hpp"
#include "switchyard/core/math.hpp"

namespace switchyard {

namespace detail {
/// erf for float and double on host and device (libcu++ has no erf; CUDA's ::erf/::erff are
/// __host__ __device__, glibc's are the host ones).
template <class T>
SY_HD inline T erf(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return ::erff(x);
  } else {
    return ::erf(x);
  }
}
}  // namespace detail

/// GeLU, exact: x·Φ(x) = ½x(1 + erf(x/√2)) (torch gelu(approximate='none'), Megatron's default).
struct GeLU {
  static constexpr Activation kind = Activation::gelu;
  template <class T>
  SY_HD static T value(T x) {
    return T(0.5) * x * (T(1) + detail::erf(x * T(0.70710678118654752440)));
  }
  /// d/dx = Φ(x) + x·φ(x).
  template <class T>
  SY_HD static T derivative(T x) {
    const T cdf = T(0.5) * (T(1) + detail::erf(x * T(0.70710678118654752440)));
    const T pdf = T(0.39894228040143267794) * math::exp(T(-0.5) * x * x);
    return cdf + x * pdf;
  }
};

/// GeLU, tanh approximation: ½x(1 + tanh(√(2/π)(x + 0.044715x³))) (torch approximate='tanh').
struct GeLUTanh {
  static constexpr Activation kind = Activation::gelu_tanh;
  static constexpr double sqrt_2_over_pi = 0.79788456080286535588;
  static constexpr double coeff = 0.044715;
  template <class T>
  SY_HD static T value(T x) {
    const T u = T(sqrt_2_over_pi) * (x + T(coeff) * x * x * x);
    return T(0.5) * x * (T(1) + cuda::std::tanh(u));
  }
  /// d/dx = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²), t = tanh(u).
  template <class T>
  SY_HD static T derivative(T x) {
    const T u = T(sqrt_2_over_pi) * (x + T(coeff) * x * x * x);
    const T t = cuda::std::tanh(u);
    return T(0.5) * (T(1) + t) +
           T(0.5) * x * (T(1) - t * t) * T(sqrt_2_over_pi) * (T(1) + T(3 * coeff) * x * x);
  }
};

/// ReLU: max(x, 0); the derivative at 0 is 0, as in torch.
struct ReLU {
  static constexpr Activation kind = Activation::relu;
  template <class T>
  SY_HD static T value(T x) {
    return x > T(0) ? x : T(0);
  }
  template <class T>
  SY_HD static T derivative(T x) {
    return x > T(0) ? T(1) : T(0);
  }
};

/// SiLU (swish): x·σ(x); with GLU it is SwiGLU (Mixtral).
struct SiLU {
  static constexpr Activation kind = Activation::silu;
  template <class T>
  SY_HD static T value(T x) {
    return x * math::sigmoid(x);
  }
  /// d/dx = σ(x)(1 + x(1 − σ(x))).
  template <class T>
  SY_HD static T derivative(T x) {
    const T s = math::sigmoid(x);
    return s * (T(1) + x * (T(1) - s));
  }
  /// value and derivative from one σ(x), the bits of the two above (a GLU's backward needs both;
  /// the compiler cannot share the exp itself, since exp may set errno).
  template <class T>
  SY_HD static void value_and_derivative(T x, T& value, T& derivative) {
    const T s = math::sigmoid(x);
    value = x * s;
    derivative = s * (T(1) + x * (T(1) - s));
  }
};

/// An activation: a stateless type with value and derivative in float and double, and the config
/// enum value it stands for.
template <class A>
concept ActivationFunction = std::is_empty_v<A> && requires(float f, double d) {
  { A::kind } -> std::convertible_to<Activation>;
  { A::value(f) } -> std::same_as<float>;
  { A::derivative(f) } -> std::same_as<float>;
  { A::value(d) } -> std::same_as<double>;
  { A::derivative(d) } -> std::same_as<double>;
};

/// Activation A's value and derivative at x: through A::value_and_derivative when A has one (it
/// shares work between the two and gives the same bits), else value() and derivative().
template <ActivationFunction A, class T>
SY_HD inline void value_and_derivative(T x, T& value, T& derivative) {
  if constexpr (requires { A::value_and_derivative(x, value, derivative); }) {
    A::value_and_derivative(x, value, derivative);
  } else {
    value = A::value(x);
    derivative = A::derivative(x);
  }
}

static_assert(ActivationFunction<GeLU>);
static_assert(ActivationFunction<GeLUTanh>);
static_assert(ActivationFunction<ReLU>);
static_assert(ActivationFunction<SiLU>);

}  // namespace switchyard
