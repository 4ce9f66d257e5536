#pragma once
/// \file The host backend: a value type that selects the plain-loop overloads of each algorithm.

#include <concepts>
#include <cstdint>

namespace switchyard::exec {

/// Host execution: every algorithm in float and double; the reference for the CUDA backend.
struct Host {
  static constexpr bool is_device = false;
};

/// A backend is a value type that says whether its memory lives on a device.
template <class B>
concept Backend = std::copyable<B> && requires {
  { B::is_device } -> std::convertible_to<bool>;
};

static_assert(Backend<Host>);

}  // namespace switchyard::exec
