// A vhost-user front-end's guest memory, mapped into fsd: the memory table
// checked before anything is mapped, each region's mmap, and the map the
// virtqueues translate guest addresses through. Shared by every vhost-user
// device (virtio-fs, virtio-9p, virtio-vsock).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "protocol/vhost_user/message.h"
#include "protocol/virtio/virtqueue.h"

namespace fsd::vhost {

// One mmap of a region's fd; unmapped on destruction.
class Mapping {
 public:
  Mapping(void* base, size_t len) : base_(base), len_(len) {}
  Mapping(Mapping&& o) noexcept : base_(std::exchange(o.base_, nullptr)), len_(o.len_) {}
  Mapping(const Mapping&) = delete;
  ~Mapping();
  std::byte* base() const { return static_cast<std::byte*>(base_); }

 private:
  void* base_;
  size_t len_;
};

// Guest memory as mapped at one moment. Requests hold a shared_ptr to it,
// so a replaced table stays mapped until the last request using it is done.
struct MemoryMap {
  std::vector<Mapping> mappings;
  std::vector<vhost_user::MemRegion> regions;
  virtio::GuestMemory mem;
};

// Checks a memory table before anything is mapped: every region non-empty,
// inside its fd (a short fd would map pages that fault with SIGBUS when
// touched), and no two overlapping in guest-physical or front-end addresses.
// Returns why not, or "".
std::string check_regions(const std::vector<vhost_user::MemRegion>& regions, const std::vector<Fd>& fds);

// Maps every region (shared, read-write) of a table check_regions passed.
Result<std::shared_ptr<MemoryMap>> map_regions(const std::vector<vhost_user::MemRegion>& regions,
                                               std::vector<Fd>& fds);

// Whether `fd` is an eventfd. Kick, call and error fds must be: a kick fd
// that is always readable (a pipe with data, a regular file) would make a
// worker spin, and writes to anything else may block or land in a file.
bool is_eventfd(int fd);

}  // namespace fsd::vhost
