// vhost-user messages (QEMU docs/interop/vhost-user.rst): header
// request[4] flags[4] size[4], then a payload whose layout depends on the
// request. File descriptors travel beside the bytes (SCM_RIGHTS); decode()
// is told how many arrived and checks that the request expects them.
//
// Pure: no fds are touched here, only counted.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <variant>

#include "common/result.h"

namespace fsd::vhost_user {

using Bytes = std::span<const std::byte>;
using MutableBytes = std::span<std::byte>;

enum class Request : uint32_t {
  GetFeatures = 1, SetFeatures = 2, SetOwner = 3, ResetOwner = 4, SetMemTable = 5,
  SetLogBase = 6, SetLogFd = 7, SetVringNum = 8, SetVringAddr = 9, SetVringBase = 10,
  GetVringBase = 11, SetVringKick = 12, SetVringCall = 13, SetVringErr = 14,
  GetProtocolFeatures = 15, SetProtocolFeatures = 16, GetQueueNum = 17, SetVringEnable = 18,
  SendRarp = 19, NetSetMtu = 20, SetBackendReqFd = 21, IotlbMsg = 22, SetVringEndian = 23,
  GetConfig = 24, SetConfig = 25, CreateCryptoSession = 26, CloseCryptoSession = 27,
  PostcopyAdvise = 28, PostcopyListen = 29, PostcopyEnd = 30, GetInflightFd = 31,
  SetInflightFd = 32, GpuSetSocket = 33, ResetDevice = 34, VringKick = 35,
  GetMaxMemSlots = 36, AddMemReg = 37, RemMemReg = 38, SetStatus = 39, GetStatus = 40,
};

inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kFlagVersionMask = 0x3;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;
inline constexpr size_t kHeaderSize = 12;
inline constexpr size_t kMaxPayload = 4096;  // larger messages are refused
inline constexpr size_t kMaxFds = 8;
inline constexpr size_t kMemTableRegions = 8;
inline constexpr size_t kMaxConfigSize = 256;

// Feature bits.
inline constexpr uint64_t kFProtocolFeatures = 1ull << 30;
inline constexpr uint64_t kFVersion1 = 1ull << 32;
inline constexpr uint64_t kFRingIndirectDesc = 1ull << 28;
inline constexpr uint64_t kFRingEventIdx = 1ull << 29;
// Protocol feature bits.
inline constexpr uint64_t kPfMq = 1ull << 0;
inline constexpr uint64_t kPfReplyAck = 1ull << 3;
inline constexpr uint64_t kPfBackendReq = 1ull << 5;
inline constexpr uint64_t kPfConfig = 1ull << 9;
inline constexpr uint64_t kPfResetDevice = 1ull << 13;
inline constexpr uint64_t kPfConfigureMemSlots = 1ull << 15;
inline constexpr uint64_t kPfStatus = 1ull << 16;

// SET_VRING_KICK/CALL/ERR payload: the index in bits 0-7; bit 8 = no fd.
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFd = 1ull << 8;

struct Header {
  uint32_t request;
  uint32_t flags;
  uint32_t size;
};
static_assert(sizeof(Header) == kHeaderSize);

struct VringState {
  uint32_t index;
  uint32_t num;
};
static_assert(sizeof(VringState) == 8);

struct VringAddr {
  uint32_t index;
  uint32_t flags;
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40);

struct MemRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};
static_assert(sizeof(MemRegion) == 32);

struct MemTable {
  uint32_t nregions;
  std::array<MemRegion, kMemTableRegions> regions;
};

struct VringFile {
  uint32_t index;
  bool has_fd;
};

struct Config {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;
  std::array<std::byte, kMaxConfigSize> payload;
};

struct None {};
using Payload = std::variant<None, uint64_t, VringState, VringAddr, MemTable, MemRegion, VringFile, Config>;

struct Message {
  Request request;
  uint32_t flags;
  Payload payload;
  bool need_reply() const { return flags & kFlagNeedReply; }
};

// Checks a header (version, size bound). EBADMSG if malformed.
Result<Header> decode_header(Bytes in);
// Decodes header + payload (`in` holds exactly kHeaderSize + header.size
// bytes) that arrived with `nfds` file descriptors. EBADMSG for a malformed
// message or a wrong number of fds; an unknown request decodes with payload
// None (the caller refuses it).
Result<Message> decode(Bytes in, size_t nfds);
// How many fds a request must carry (for SET_MEM_TABLE: one per region).
size_t expected_fds(const Message& m);

// Encodes a reply with the given payload; returns its size.
Result<size_t> encode_reply(MutableBytes out, Request request, const Payload& payload);
// Encodes a request (for the project's test front-end).
Result<size_t> encode_request(MutableBytes out, Request request, const Payload& payload, bool need_reply);

const char* request_name(uint32_t request);

}  // namespace fsd::vhost_user
