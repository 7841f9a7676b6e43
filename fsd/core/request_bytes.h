// RequestBytes: the readable part of one request, as a transport hands it
// to a protocol server (MessageServer::handle).
//
// Shared memory (a guest's, for virtqueues) stays writable by its owner
// while fsd works on a request: a byte checked there and read again may
// have changed in between (a double fetch). So a server cannot look at
// shared bytes at all. It can only
//  - copy them into its own memory (copy_to), once, and decode and check
//    that copy; or
//  - pass a range on as a data payload (payload()), which is written to a
//    file as it is and never decoded or checked.
// Only bytes in fsd's own memory (a /dev/fuse read buffer, a socket frame)
// can be viewed in place (private_view()): nobody else can change them.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <algorithm>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "fsd/core/iovec.h"

namespace fsd {

class RequestBytes {
 public:
  // Bytes in fsd's own memory.
  static RequestBytes in_private(std::span<const std::byte> bytes) {
    RequestBytes r;
    r.private_ = true;
    r.bytes_ = bytes;
    r.size_ = bytes.size();
    return r;
  }
  // Buffers in memory that another party may write at any time.
  static RequestBytes in_shared(std::span<const iovec> iov) {
    RequestBytes r;
    r.iov_ = iov;
    for (const auto& v : iov) r.size_ += v.iov_len;
    return r;
  }

  size_t size() const { return size_; }
  bool is_private() const { return private_; }

  // The whole request in place, when it is in fsd's own memory.
  std::optional<std::span<const std::byte>> private_view() const {
    if (!private_) return std::nullopt;
    return bytes_;
  }

  // Copies bytes [offset, offset + to.size()) into `to` (fsd's memory);
  // returns how many there were (fewer past the end).
  size_t copy_to(size_t offset, std::span<std::byte> to) const {
    if (private_) {
      if (offset >= bytes_.size()) return 0;
      size_t n = std::min(bytes_.size() - offset, to.size());
      std::memcpy(to.data(), bytes_.data() + offset, n);
      return n;
    }
    size_t done = 0;
    for (const auto& v : iov_) {
      if (done == to.size()) break;
      if (offset >= v.iov_len) {
        offset -= v.iov_len;
        continue;
      }
      size_t n = std::min(v.iov_len - offset, to.size() - done);
      std::memcpy(to.data() + done, static_cast<const std::byte*>(v.iov_base) + offset, n);
      done += n;
      offset = 0;
    }
    return done;
  }

  // The bytes from `offset` on, appended to `out` as buffers for a write
  // to a file. Never decode or check them: where they are shared, their
  // owner may change them while they are being written.
  void payload(size_t offset, std::vector<iovec>& out) const {
    if (!private_) return tail_of(iov_, offset, out);
    if (offset < bytes_.size())
      out.push_back(iovec{const_cast<std::byte*>(bytes_.data()) + offset, bytes_.size() - offset});
  }

 private:
  RequestBytes() = default;
  bool private_ = false;
  std::span<const std::byte> bytes_;  // private
  std::span<const iovec> iov_;        // shared
  size_t size_ = 0;
};

}  // namespace fsd
