// Split virtqueues (virtio 1.2, 2.7) over guest memory that is already
// mapped: address translation, descriptor-chain walking, and the avail/used
// ring protocol with VIRTIO_RING_F_EVENT_IDX.
//
// Everything the guest wrote is untrusted: each descriptor is copied once
// before it is checked; a chain that loops, is longer than allowed, nests
// indirect tables, puts readable after writable buffers, or points outside
// (or across) guest memory regions is an error (EBADMSG), never a crash.
// Pure: no syscalls; the transport maps memory and signals eventfds.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/result.h"

namespace fsd::virtio {

// One mapped guest memory region: guest-physical [gpa, gpa+size) is at
// host [host, host+size); the front-end knows it at user address `uva`.
struct Region {
  uint64_t gpa = 0;
  uint64_t size = 0;
  uint64_t uva = 0;
  std::byte* host = nullptr;
};

class GuestMemory {
 public:
  GuestMemory() = default;
  explicit GuestMemory(std::vector<Region> regions) : regions_(std::move(regions)) {}
  const std::vector<Region>& regions() const { return regions_; }

  // Host address of guest-physical [gpa, gpa+len), if one region holds all of it.
  std::byte* translate(uint64_t gpa, uint64_t len) const;
  // Host address of front-end user address [uva, uva+len), likewise.
  std::byte* translate_uva(uint64_t uva, uint64_t len) const;

 private:
  std::vector<Region> regions_;
};

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);
inline constexpr uint16_t kDescNext = 1, kDescWrite = 2, kDescIndirect = 4;
inline constexpr uint16_t kAvailNoInterrupt = 1;
inline constexpr uint16_t kUsedNoNotify = 1;
inline constexpr uint16_t kMaxQueueSize = 32768;
// Most descriptors one chain may use, indirect ones included.
inline constexpr size_t kMaxChainDescriptors = 1024;

// A walked chain: the device-readable buffers, then the device-writable ones.
struct Chain {
  uint16_t head = 0;
  std::vector<iovec> readable, writable;
  size_t readable_bytes = 0, writable_bytes = 0;
  void clear() {
    readable.clear();
    writable.clear();
    readable_bytes = writable_bytes = 0;
  }
};

// Walks the chain at `head` of a descriptor table with `num` entries.
Result<void> walk_chain(const GuestMemory& mem, const Desc* table, uint16_t num, uint16_t head, Chain& out);

// The rings of one split virtqueue, mapped.
class SplitQueue {
 public:
  struct Layout {
    Desc* desc = nullptr;
    std::byte* avail = nullptr;  // flags[2] idx[2] ring[num][2] used_event[2]
    std::byte* used = nullptr;   // flags[2] idx[2] ring[num]{id[4] len[4]} avail_event[2]
  };
  static size_t avail_size(uint16_t num) { return 6 + 2u * num; }
  static size_t used_size(uint16_t num) { return 6 + 8u * num; }

  SplitQueue() = default;
  // num must be a power of two <= kMaxQueueSize (checked by the caller's
  // EINVAL path), and the rings aligned as the spec requires (aligned()).
  SplitQueue(Layout l, uint16_t num, bool event_idx, uint16_t last_avail)
      : l_(l), num_(num), event_idx_(event_idx), last_avail_(last_avail), used_idx_(load_used_idx()) {}
  static bool aligned(const Layout& l) {
    auto at = [](const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
    return at(l.desc, 16) && at(l.avail, 2) && at(l.used, 4);
  }
  static bool valid_size(uint32_t num) { return num > 0 && num <= kMaxQueueSize && (num & (num - 1)) == 0; }

  const Desc* desc() const { return l_.desc; }
  uint16_t size() const { return num_; }
  uint16_t last_avail() const { return last_avail_; }

  // The next available chain head; nullopt if none; EBADMSG if the driver
  // published more than `num` new entries or a head out of range.
  Result<std::optional<uint16_t>> pop();
  // Whether the driver has published entries not popped yet (a cheap peek for polling).
  bool has_avail() const { return load_avail_idx() != last_avail_; }
  // Returns a chain to the driver with `len` bytes written.
  void push(uint16_t head, uint32_t len);
  // Whether the driver wants an interrupt for what was pushed since the last call.
  bool should_notify();
  // With EVENT_IDX: asks to be kicked for entries after those seen so far.
  void arm_kick();

 private:
  uint16_t load_avail_idx() const;
  uint16_t load_used_idx() const;

  Layout l_;
  uint16_t num_ = 0;
  bool event_idx_ = false;
  uint16_t last_avail_ = 0;
  uint16_t used_idx_ = 0;
  uint16_t signalled_used_ = 0;
  bool signalled_valid_ = false;
};

}  // namespace fsd::virtio
