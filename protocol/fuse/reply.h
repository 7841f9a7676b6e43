// Building FUSE replies into a list of buffers: one reply buffer for
// /dev/fuse, or the device-writable descriptors of a virtqueue chain, so that
// file data can be read straight into guest memory.
#pragma once

#include <linux/fuse.h>
#include <sys/uio.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

namespace fsd::fuse {

// Writes sequentially into `out`; never past its end.
class ScatterWriter {
 public:
  explicit ScatterWriter(std::span<const iovec> out) : out_(out) {
    for (const auto& v : out_) capacity_ += v.iov_len;
  }
  size_t written() const { return written_; }
  size_t room() const { return capacity_ - written_; }

  // Appends n bytes; false (and nothing written) if they do not fit.
  bool write(const void* p, size_t n) {
    if (n > room()) return false;
    copy_at(written_, p, n);
    written_ += n;
    return true;
  }
  template <class T>
  bool write(const T& v) { return write(&v, sizeof v); }
  // Overwrites already written bytes (the reply header, once the length is known).
  bool write_at(size_t offset, const void* p, size_t n) {
    if (offset + n > written_) return false;
    copy_at(offset, p, n);
    return true;
  }
  // Fills `scratch` with iovecs for the next n bytes (n <= room()) and
  // returns how many it used; the caller fills them (preadv) and then calls
  // skip(bytes actually filled).
  size_t next_iovecs(size_t n, std::span<iovec> scratch) const {
    size_t used = 0, pos = written_, base = 0;
    for (const auto& v : out_) {
      if (n == 0 || used == scratch.size()) break;
      if (pos < base + v.iov_len) {
        size_t skip = pos > base ? pos - base : 0;
        size_t len = v.iov_len - skip < n ? v.iov_len - skip : n;
        scratch[used++] = iovec{static_cast<char*>(v.iov_base) + skip, len};
        n -= len;
        pos += len;
      }
      base += v.iov_len;
    }
    return used;
  }
  void skip(size_t n) { written_ += n <= room() ? n : room(); }

 private:
  void copy_at(size_t offset, const void* p, size_t n) {
    const auto* src = static_cast<const char*>(p);
    size_t base = 0;
    for (const auto& v : out_) {
      if (n == 0) break;
      if (offset < base + v.iov_len) {
        size_t skip = offset - base;
        size_t len = v.iov_len - skip < n ? v.iov_len - skip : n;
        std::memcpy(static_cast<char*>(v.iov_base) + skip, src, len);
        src += len;
        offset += len;
        n -= len;
      }
      base += v.iov_len;
    }
  }

  std::span<const iovec> out_;
  size_t capacity_ = 0;
  size_t written_ = 0;
};

// Packs fuse_dirent / fuse_direntplus records into a contiguous area.
class DirentPacker {
 public:
  explicit DirentPacker(std::span<std::byte> out) : out_(out) {}
  size_t size() const { return pos_; }

  static size_t dirent_size(std::string_view name) { return FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + name.size()); }
  static size_t direntplus_size(std::string_view name) {
    return FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET_DIRENTPLUS + name.size());
  }

  bool add(uint64_t ino, uint64_t next_off, uint32_t type, std::string_view name) {
    size_t need = dirent_size(name);
    if (need > out_.size() - pos_) return false;
    fuse_dirent d;  // has a flexible array member: fill field by field
    d.ino = ino;
    d.off = next_off;
    d.namelen = static_cast<uint32_t>(name.size());
    d.type = type;
    put(&d, FUSE_NAME_OFFSET, name, need);
    return true;
  }
  bool fits_plus(std::string_view name) const { return direntplus_size(name) <= out_.size() - pos_; }
  bool add_plus(const fuse_entry_out& entry, uint64_t next_off, uint32_t type, std::string_view name) {
    size_t need = direntplus_size(name);
    if (need > out_.size() - pos_) return false;
    fuse_direntplus d;
    d.entry_out = entry;
    d.dirent.ino = entry.attr.ino;
    d.dirent.off = next_off;
    d.dirent.namelen = static_cast<uint32_t>(name.size());
    d.dirent.type = type;
    put(&d, FUSE_NAME_OFFSET_DIRENTPLUS, name, need);
    return true;
  }

 private:
  void put(const void* fixed, size_t fixed_len, std::string_view name, size_t total) {
    std::byte* p = out_.data() + pos_;
    std::memcpy(p, fixed, fixed_len);
    std::memcpy(p + fixed_len, name.data(), name.size());
    std::memset(p + fixed_len + name.size(), 0, total - fixed_len - name.size());
    pos_ += total;
  }

  std::span<std::byte> out_;
  size_t pos_ = 0;
};

}  // namespace fsd::fuse
