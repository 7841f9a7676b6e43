// What a virtio-fs device is, beside the FUSE server it carries: its queues
// and its config space (the virtio spec's "File System Device").
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace fsd::fuse {

// Most request queues a virtio-fs device offers (vhost-user-fs-pci's
// num-request-queues); a guest driver maps CPUs onto them.
inline constexpr unsigned kRequestQueues = 16;

// virtio-fs's config space: the mount tag (36 bytes, NUL-padded) and the
// number of request queues (le32).
inline std::vector<std::byte> virtio_fs_config(const std::string& tag, uint32_t request_queues) {
  std::vector<std::byte> c(40);
  std::memcpy(c.data(), tag.data(), std::min<size_t>(tag.size(), 36));
  std::memcpy(c.data() + 36, &request_queues, 4);  // x86 and other little-endian hosts
  return c;
}

}  // namespace fsd::fuse
