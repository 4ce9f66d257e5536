#pragma once
/// \file The host layer's cache of expert workspaces: the workspace a forward saved (the fc1
/// output and activation of every row, the largest buffers of a step) goes back to the layer when
/// the saved state lets go of it: after backward has used it, or when a forward's saved state is
/// dropped without a backward (evaluation). The next forward takes it instead of a new one.
/// Buffers of this size come from mmap and go back to the system when freed, so a fresh one costs
/// a page fault per 4 KiB page at its first touch, about a tenth of a SwiGLU layer's
/// forward+backward time at T 4096 on the CPUs measured (docs/benchmarks.md); a reused one costs
/// nothing.

#include <cstddef>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

namespace switchyard::detail {

/// The buffers a cache holds, shared with the cached_buffer handles it gave out (which hold it
/// weakly: a handle that outlives its cache frees its buffer).
struct buffer_pool {
  // A forward takes one workspace per segment of rows (this rank's own, the ones received over
  // EP) and one for the shared expert: the three come back after its backward.
  static constexpr std::size_t max_buffers = 3;
  std::mutex mutex;  // handles may be dropped on another thread than the layer's
  std::vector<std::vector<std::byte>> buffers;

  // Keeps `v`; beyond max_buffers the smallest buffer is freed (outside the lock).
  void put(std::vector<std::byte>&& v) {
    std::vector<std::byte> freed;
    std::lock_guard<std::mutex> lock(mutex);
    buffers.push_back(std::move(v));
    if (buffers.size() <= max_buffers) return;
    auto smallest = buffers.begin();
    for (auto it = buffers.begin(); it != buffers.end(); ++it)
      if (it->size() < smallest->size()) smallest = it;
    freed = std::move(*smallest);
    buffers.erase(smallest);
  }
};

/// A byte buffer from a buffer_cache (move-only). Destroying or reset()ing it returns the buffer
/// to its cache while the cache lives, else frees it.
class cached_buffer {
 public:
  cached_buffer() = default;
  cached_buffer(std::vector<std::byte> bytes, std::weak_ptr<buffer_pool> home)
      : bytes_(std::move(bytes)), home_(std::move(home)) {}
  cached_buffer(cached_buffer&& o) noexcept
      : bytes_(std::exchange(o.bytes_, {})), home_(std::exchange(o.home_, {})) {}
  cached_buffer& operator=(cached_buffer&& o) noexcept {
    if (this != &o) {
      reset();
      bytes_ = std::exchange(o.bytes_, {});
      home_ = std::exchange(o.home_, {});
    }
    return *this;
  }
  cached_buffer(const cached_buffer&) = delete;
  cached_buffer& operator=(const cached_buffer&) = delete;
  ~cached_buffer() { reset(); }

  /// Gives the buffer back to its cache (or frees it); the handle is empty after.
  void reset() noexcept {
    std::vector<std::byte> v = std::exchange(bytes_, {});
    const std::shared_ptr<buffer_pool> home = std::exchange(home_, {}).lock();
    if (v.empty() || !home) return;
    try {
      home->put(std::move(v));
    } catch (...) {  // no memory for the cache's list: the buffer is freed instead
    }
  }

  /// What the experts write into (the cached bytes may be more than were asked for).
  operator std::span<std::byte>() { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
  std::weak_ptr<buffer_pool> home_;
};

/// At most buffer_pool::max_buffers byte buffers, handed out smallest-that-fits first. Contents
/// are unspecified: the user writes before reading (the experts' forward writes all it reads).
/// take() is called by one layer call at a time, as the layer itself; handles may go back from
/// any thread.
class buffer_cache {
 public:
  /// A buffer of at least `bytes` (a cached one when one is large enough, else a new one).
  cached_buffer take(std::size_t bytes) {
    if (bytes == 0) return {};
    std::vector<std::byte> v;
    {
      std::lock_guard<std::mutex> lock(pool_->mutex);
      auto& b = pool_->buffers;
      auto best = b.end();
      for (auto it = b.begin(); it != b.end(); ++it)
        if (it->size() >= bytes && (best == b.end() || it->size() < best->size())) best = it;
      if (best != b.end()) {
        v = std::move(*best);
        b.erase(best);
      }
    }
    if (v.empty()) v = std::vector<std::byte>(bytes);
    return cached_buffer(std::move(v), pool_);
  }

  /// Frees every cached buffer (buffers still held by saved states come back later).
  void clear() {
    std::vector<std::vector<std::byte>> freed;
    std::lock_guard<std::mutex> lock(pool_->mutex);
    freed.swap(pool_->buffers);
  }

  /// Bytes held.
  std::size_t bytes() const {
    std::lock_guard<std::mutex> lock(pool_->mutex);
    std::size_t n = 0;
    for (const auto& v : pool_->buffers) n += v.size();
    return n;
  }

 private:
  std::shared_ptr<buffer_pool> pool_ = std::make_shared<buffer_pool>();
};

}  // namespace switchyard::detail
