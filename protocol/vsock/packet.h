// virtio-vsock packets (virtio 1.2, 5.10; Linux's uapi/linux/virtio_vsock.h):
// the 44-byte little-endian header every packet starts with, and its
// constants. Decoded from a private copy of the guest's bytes (the caller
// copies the header out of guest memory once); encoded into fsd's own
// buffer before it is copied into the guest's.
// Pure: no syscalls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace fsd::vsock {

inline constexpr size_t kHeaderSize = 44;
inline constexpr uint64_t kHostCid = 2;
// The CIDs a guest may not have: 0 (hypervisor), 1 (local), 2 (host), and
// U32_MAX (VMADDR_CID_ANY, which the kernel also reserves).
inline bool valid_guest_cid(uint64_t cid) { return cid > kHostCid && cid < 0xffffffffull; }

enum class Type : uint16_t { kStream = 1, kSeqpacket = 2 };
enum class Op : uint16_t {
  kInvalid = 0,
  kRequest = 1,
  kResponse = 2,
  kRst = 3,
  kShutdown = 4,
  kRw = 5,
  kCreditUpdate = 6,
  kCreditRequest = 7,
};
// SHUTDOWN's flags: the sender will receive (RCV) or send (SEND) no more.
inline constexpr uint32_t kShutdownRcv = 1, kShutdownSend = 2;

// Queues of the device: the guest gives receive buffers on rx, sends on tx;
// QEMU keeps the event queue to itself.
inline constexpr unsigned kRxQueue = 0, kTxQueue = 1, kEventQueue = 2;

struct Header {
  uint64_t src_cid = 0, dst_cid = 0;
  uint32_t src_port = 0, dst_port = 0;
  uint32_t len = 0;  // payload bytes after the header
  uint16_t type = 0, op = 0;
  uint32_t flags = 0;
  uint32_t buf_alloc = 0, fwd_cnt = 0;  // the sender's receive buffer and what it has consumed of it
  bool operator==(const Header&) const = default;
};

// Every field as the bytes say; checking them is the caller's business.
Header decode(std::span<const std::byte, kHeaderSize> bytes);
void encode(const Header& h, std::span<std::byte, kHeaderSize> out);

const char* op_name(uint16_t op);

}  // namespace fsd::vsock
