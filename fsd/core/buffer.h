// Buffer: an uninitialised byte buffer (no zero-fill on reuse); BufferPool
// recycles them so the steady state does not allocate per request.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

namespace fsd {

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t capacity)
      : data_(std::make_unique_for_overwrite<std::byte[]>(capacity)), capacity_(capacity) {}
  Buffer(Buffer&&) noexcept = default;
  Buffer& operator=(Buffer&&) noexcept = default;

  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  size_t capacity() const { return capacity_; }
  size_t size() const { return size_; }
  void set_size(size_t n) { size_ = n <= capacity_ ? n : capacity_; }
  // The whole capacity, for encoding into.
  std::span<std::byte> room() { return {data_.get(), capacity_}; }
  // The filled part.
  std::span<const std::byte> bytes() const { return {data_.get(), size_}; }

 private:
  std::unique_ptr<std::byte[]> data_;
  size_t capacity_ = 0;
  size_t size_ = 0;
};

// Keeps a few buffers of each of two sizes: small (requests and replies
// without data) and large (a whole msize): at most 32 small and 4 large.
// Single-threaded.
class BufferPool {
 public:
  static constexpr size_t kSmall = 8192;

  explicit BufferPool(size_t large = kSmall) : large_(large) {}
  void set_large(size_t large) {
    if (large != large_) big_.clear();
    large_ = large;
  }
  size_t large() const { return large_; }

  Buffer get(size_t min_capacity) {
    auto& list = min_capacity <= kSmall ? small_ : big_;
    size_t cap = min_capacity <= kSmall ? kSmall : std::max(min_capacity, large_);
    while (!list.empty()) {
      Buffer b = std::move(list.back());
      list.pop_back();
      if (b.capacity() >= min_capacity) {
        b.set_size(0);
        return b;
      }
    }
    return Buffer(cap);
  }
  void put(Buffer b) {
    if (b.capacity() == 0) return;
    bool small = b.capacity() <= kSmall;
    auto& list = small ? small_ : big_;
    if (list.size() < (small ? kKeepSmall : kKeepLarge) && (b.capacity() == kSmall || b.capacity() == large_))
      list.push_back(std::move(b));
  }

 private:
  // Kept for reuse: enough for a busy connection's steady state, few enough
  // that an idle one holds little (a large buffer is a whole msize).
  static constexpr size_t kKeepSmall = 32;
  static constexpr size_t kKeepLarge = 4;
  size_t large_;
  std::vector<Buffer> small_, big_;
};

}  // namespace fsd
