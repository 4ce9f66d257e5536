#pragma once
/// \file Two-phase workspaces (CUB's pattern): the same carving code first measures the bytes a
/// call needs (no buffer), then hands out aligned pieces of the caller's buffer.

#include <cstddef>
#include <cstdint>

#include "switchyard/core/error.hpp"

namespace switchyard {

/// Hands out 256-byte aligned pieces of a caller-provided buffer; with a null buffer it only
/// counts the bytes (the size query).
class workspace_carver {
 public:
  static constexpr std::size_t alignment = 256;

  workspace_carver(void* base, std::size_t capacity)
      : base_(static_cast<std::byte*>(base)), capacity_(capacity) {}
  /// A measuring carver: take() returns nullptr and bytes() sums the request.
  workspace_carver() = default;

  template <class T>
  T* take(std::size_t count) {
    const std::size_t offset = used_;
    used_ += (count * sizeof(T) + alignment - 1) / alignment * alignment;
    if (!base_) return nullptr;
    SY_EXPECTS(used_ <= capacity_, detail::concat("workspace of ", capacity_,
                                                  " bytes is too small: needs at least ", used_));
    return reinterpret_cast<T*>(base_ + offset);
  }
  /// Bytes handed out (or requested) so far.
  std::size_t bytes() const { return used_; }

 private:
  std::byte* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
};

}  // namespace switchyard
