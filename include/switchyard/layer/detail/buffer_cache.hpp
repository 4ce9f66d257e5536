#pragma once
/// \file The host layer's cache of expert workspaces: a backward hands its segments' workspaces
/// (the fc1 output and activation of every row, the largest buffers of a step) to the next
/// forward instead of freeing them. Buffers of this size come from mmap and go back to the
/// system when freed, so a fresh one costs a page fault per 4 KiB page at its first touch,
/// about a tenth of a SwiGLU layer's forward+backward time at T 4096 on the CPUs measured
/// (docs/benchmarks.md); a reused one costs nothing.

#include <cstddef>
#include <utility>
#include <vector>

namespace switchyard::detail {

/// At most max_buffers byte buffers, handed out smallest-that-fits first. Contents are
/// unspecified: the user writes before reading (the experts' forward writes all it reads).
/// Not thread-safe: one layer call at a time, as the layer itself.
class buffer_cache {
 public:
  static constexpr std::size_t max_buffers = 2;

  /// A buffer of at least `bytes` (a cached one when one is large enough, else a new one).
  std::vector<std::byte> take(std::size_t bytes) {
    if (bytes == 0) return {};
    auto best = cached_.end();
    for (auto it = cached_.begin(); it != cached_.end(); ++it)
      if (it->size() >= bytes && (best == cached_.end() || it->size() < best->size())) best = it;
    if (best == cached_.end()) return std::vector<std::byte>(bytes);
    std::vector<std::byte> v = std::move(*best);
    cached_.erase(best);
    return v;
  }

  /// Keeps `v` for a later take(); beyond max_buffers the smallest buffer is freed.
  void give(std::vector<std::byte>&& v) {
    if (v.empty()) return;
    cached_.push_back(std::move(v));
    v = {};
    if (cached_.size() <= max_buffers) return;
    auto smallest = cached_.begin();
    for (auto it = cached_.begin(); it != cached_.end(); ++it)
      if (it->size() < smallest->size()) smallest = it;
    cached_.erase(smallest);
  }

  /// Frees every cached buffer.
  void clear() { cached_.clear(); }

  /// Bytes held.
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& v : cached_) n += v.size();
    return n;
  }

 private:
  std::vector<std::vector<std::byte>> cached_;
};

}  // namespace switchyard::detail
