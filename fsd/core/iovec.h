// Helpers for scatter-gather lists: the shape every transport hands a
// server its request and reply buffers in.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

namespace fsd {

inline size_t total_len(std::span<const iovec> v) {
  size_t n = 0;
  for (const auto& e : v) n += e.iov_len;
  return n;
}

// Copies the first to.size() bytes of `from` (or all it has) into `to`;
// returns the bytes copied.
inline size_t gather(std::span<const iovec> from, std::span<std::byte> to) {
  size_t off = 0;
  for (const auto& v : from) {
    if (off == to.size()) break;
    size_t n = v.iov_len < to.size() - off ? v.iov_len : to.size() - off;
    std::memcpy(to.data() + off, v.iov_base, n);
    off += n;
  }
  return off;
}

// Copies `from` into `to`; false, copying nothing, if it does not fit.
inline bool scatter(std::span<const std::byte> from, std::span<const iovec> to) {
  if (from.size() > total_len(to)) return false;
  size_t off = 0;
  for (const auto& v : to) {
    if (off == from.size()) break;
    size_t n = v.iov_len < from.size() - off ? v.iov_len : from.size() - off;
    std::memcpy(v.iov_base, from.data() + off, n);
    off += n;
  }
  return true;
}

// The part of `from` after its first `skip` bytes, appended to `out`.
inline void tail_of(std::span<const iovec> from, size_t skip, std::vector<iovec>& out) {
  for (const auto& v : from) {
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    out.push_back(iovec{static_cast<std::byte*>(v.iov_base) + skip, v.iov_len - skip});
    skip = 0;
  }
}

// The first `len` bytes of `from` after its first `skip` (or as many as
// it has), appended to `out`.
inline void slice_of(std::span<const iovec> from, size_t skip, size_t len, std::vector<iovec>& out) {
  for (const auto& v : from) {
    if (len == 0) return;
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    size_t n = v.iov_len - skip < len ? v.iov_len - skip : len;
    out.push_back(iovec{static_cast<std::byte*>(v.iov_base) + skip, n});
    len -= n;
    skip = 0;
  }
}

}  // namespace fsd
