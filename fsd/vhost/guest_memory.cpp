#include "fsd/vhost/guest_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace fsd::vhost {

Mapping::~Mapping() {
  if (base_) ::munmap(base_, len_);
}

std::string check_regions(const std::vector<vhost_user::MemRegion>& regions, const std::vector<Fd>& fds) {
  if (fds.size() != regions.size()) return "the regions and their fds do not match";
  auto overlap = [](uint64_t a, uint64_t b, uint64_t len_a, uint64_t len_b) { return a < b + len_b && b < a + len_a; };
  for (size_t i = 0; i < regions.size(); i++) {
    const auto& r = regions[i];
    std::string at = "region " + std::to_string(i);
    if (r.memory_size == 0) return at + " is empty";
    if (r.mmap_offset > UINT64_MAX - r.memory_size || r.guest_phys_addr > UINT64_MAX - r.memory_size ||
        r.userspace_addr > UINT64_MAX - r.memory_size)
      return at + " wraps around the address space";
    struct stat st{};
    if (::fstat(fds[i].get(), &st) < 0) return at + ": cannot stat its fd: " + std::strerror(errno);
    if (static_cast<uint64_t>(st.st_size) < r.mmap_offset + r.memory_size)
      return at + " needs " + std::to_string(r.mmap_offset + r.memory_size) + " bytes of its fd, which has " +
             std::to_string(st.st_size);
    for (size_t j = 0; j < i; j++) {
      const auto& o = regions[j];
      if (overlap(r.guest_phys_addr, o.guest_phys_addr, r.memory_size, o.memory_size) ||
          overlap(r.userspace_addr, o.userspace_addr, r.memory_size, o.memory_size))
        return at + " overlaps region " + std::to_string(j);
    }
  }
  return "";
}

Result<std::shared_ptr<MemoryMap>> map_regions(const std::vector<vhost_user::MemRegion>& regions, std::vector<Fd>& fds) {
  auto m = std::make_shared<MemoryMap>();
  std::vector<virtio::Region> vr;
  for (size_t i = 0; i < regions.size(); i++) {
    const auto& r = regions[i];
    size_t len = r.memory_size + r.mmap_offset;
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fds[i].get(), 0);
    if (p == MAP_FAILED) return errno_error();
    m->mappings.emplace_back(p, len);
    vr.push_back(virtio::Region{r.guest_phys_addr, r.memory_size, r.userspace_addr,
                                static_cast<std::byte*>(p) + r.mmap_offset});
  }
  m->regions = regions;
  m->mem = virtio::GuestMemory(std::move(vr));
  return m;
}

bool is_eventfd(int fd) {
  char link[64];
  std::string path = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = ::readlink(path.c_str(), link, sizeof link);
  return n > 0 && std::string_view(link, static_cast<size_t>(n)) == "anon_inode:[eventfd]";
}

}  // namespace fsd::vhost
