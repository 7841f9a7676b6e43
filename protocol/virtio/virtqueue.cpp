#include "protocol/virtio/virtqueue.h"

#include <algorithm>
#include <cstring>

namespace fsd::virtio {

namespace {
bool inside(uint64_t start, uint64_t size, uint64_t addr, uint64_t len) {
  // [addr, addr+len) within [start, start+size), without overflow.
  return addr >= start && addr - start <= size && len <= size - (addr - start);
}

// Reads a value of guest memory exactly once (the compiler may not read
// it again in place of a copy, as it could a plain load).
template <class T>
T load(const std::byte* p) {
  return __atomic_load_n(reinterpret_cast<const T*>(p), __ATOMIC_RELAXED);
}
// A descriptor, copied once: the guest may change it meanwhile, and every
// check is made on the copy.
Desc load_desc(const Desc* p) {
  uint64_t w[2] = {load<uint64_t>(reinterpret_cast<const std::byte*>(p)),
                   load<uint64_t>(reinterpret_cast<const std::byte*>(p) + 8)};
  Desc d;
  std::memcpy(&d, w, sizeof d);
  return d;
}
template <class T>
void store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}
}  // namespace

std::byte* GuestMemory::translate(uint64_t gpa, uint64_t len) const {
  for (const auto& r : regions_)
    if (inside(r.gpa, r.size, gpa, len)) return r.host + (gpa - r.gpa);
  return nullptr;
}

std::byte* GuestMemory::translate_uva(uint64_t uva, uint64_t len) const {
  for (const auto& r : regions_)
    if (inside(r.uva, r.size, uva, len)) return r.host + (uva - r.uva);
  return nullptr;
}

Result<void> walk_chain(const GuestMemory& mem, const Desc* table, uint16_t num, uint16_t head, Chain& out) {
  out.clear();
  out.head = head;
  if (head >= num) return Error{-EBADMSG};
  size_t used = 0;  // descriptors visited, indirect ones included
  size_t direct = 0;
  bool in_indirect = false;
  const Desc* tab = table;
  uint32_t tab_size = num;
  uint32_t i = head;
  for (;;) {
    if (in_indirect) {
      if (++used > kMaxChainDescriptors) return Error{-EBADMSG};
    } else if (++direct > num || ++used > kMaxChainDescriptors) {
      return Error{-EBADMSG};  // a loop, or a chain longer than the ring
    }
    Desc d = load_desc(&tab[i]);
    if (d.flags & kDescIndirect) {
      if (in_indirect || (d.flags & kDescNext)) return Error{-EBADMSG};  // no nesting, no mixing
      if (d.len == 0 || d.len % sizeof(Desc) != 0 || d.len / sizeof(Desc) > kMaxChainDescriptors)
        return Error{-EBADMSG};
      auto* t = reinterpret_cast<const Desc*>(mem.translate(d.addr, d.len));
      if (t == nullptr || reinterpret_cast<uintptr_t>(t) % alignof(Desc) != 0) return Error{-EBADMSG};
      tab = t;
      tab_size = d.len / sizeof(Desc);
      in_indirect = true;
      i = 0;
      continue;
    }
    if (d.len > 0) {
      std::byte* p = mem.translate(d.addr, d.len);
      if (p == nullptr) return Error{-EBADMSG};
      if (d.flags & kDescWrite) {
        out.writable.push_back(iovec{p, d.len});
        out.writable_bytes += d.len;
      } else {
        if (!out.writable.empty()) return Error{-EBADMSG};  // readable after writable
        out.readable.push_back(iovec{p, d.len});
        out.readable_bytes += d.len;
      }
    }
    if (!(d.flags & kDescNext)) return {};
    if (d.next >= tab_size) return Error{-EBADMSG};
    i = d.next;
  }
}

uint16_t SplitQueue::load_avail_idx() const {
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(l_.avail + 2), __ATOMIC_ACQUIRE);
}

uint16_t SplitQueue::load_used_idx() const {
  return l_.used ? __atomic_load_n(reinterpret_cast<const uint16_t*>(l_.used + 2), __ATOMIC_ACQUIRE) : 0;
}

Result<std::optional<uint16_t>> SplitQueue::pop() {
  uint16_t avail = load_avail_idx();
  uint16_t pending = static_cast<uint16_t>(avail - last_avail_);
  if (pending == 0) return std::optional<uint16_t>{};
  if (pending > num_) return Error{-EBADMSG};
  uint16_t head = load<uint16_t>(l_.avail + 4 + 2u * (last_avail_ % num_));
  if (head >= num_) return Error{-EBADMSG};
  last_avail_++;
  return std::optional<uint16_t>{head};
}

void SplitQueue::push(uint16_t head, uint32_t len) {
  std::byte* e = l_.used + 4 + 8u * (used_idx_ % num_);
  store<uint32_t>(e, head);
  store<uint32_t>(e + 4, len);
  used_idx_++;
  // The entry must be visible before the index that publishes it.
  __atomic_store_n(reinterpret_cast<uint16_t*>(l_.used + 2), used_idx_, __ATOMIC_RELEASE);
}

bool SplitQueue::should_notify() {
  // Order the used-index store before reading the driver's wishes.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (!event_idx_) {
    return !(load<uint16_t>(l_.avail) & kAvailNoInterrupt);
  }
  uint16_t event = load<uint16_t>(l_.avail + 4 + 2u * num_);
  uint16_t old = signalled_used_;
  bool valid = signalled_valid_;
  signalled_used_ = used_idx_;
  signalled_valid_ = true;
  if (!valid) return true;
  // vring_need_event: has used_idx passed `event` since the last signal?
  return static_cast<uint16_t>(used_idx_ - event - 1) < static_cast<uint16_t>(used_idx_ - old);
}

void SplitQueue::arm_kick() {
  if (event_idx_) {
    __atomic_store_n(reinterpret_cast<uint16_t*>(l_.used + 4 + 8u * num_), last_avail_, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
  }
}

}  // namespace fsd::virtio
