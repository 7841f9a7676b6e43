#include "protocol/vhost_user/message.h"

#include <algorithm>
#include <cstring>

namespace fsd::vhost_user {
namespace {

template <class T>
bool read_exact(Bytes body, T& out) {
  if (body.size() != sizeof(T)) return false;
  std::memcpy(&out, body.data(), sizeof(T));
  return true;
}

// The payload layout of each request the back-end accepts.
enum class Shape { kNone, kU64, kState, kAddr, kMemTable, kSingleRegion, kVringFile, kConfig, kUnknown };

Shape shape_of(Request r) {
  switch (r) {
    case Request::GetFeatures: case Request::GetProtocolFeatures: case Request::GetQueueNum:
    case Request::SetOwner: case Request::ResetOwner: case Request::GetMaxMemSlots:
    case Request::GetStatus: case Request::ResetDevice: case Request::SetBackendReqFd:
      return Shape::kNone;
    case Request::SetFeatures: case Request::SetProtocolFeatures: case Request::SetStatus:
    case Request::SetLogFd:
      return Shape::kU64;
    case Request::SetVringNum: case Request::SetVringBase: case Request::GetVringBase:
    case Request::SetVringEnable:
      return Shape::kState;
    case Request::SetVringAddr: return Shape::kAddr;
    case Request::SetMemTable: return Shape::kMemTable;
    case Request::AddMemReg: case Request::RemMemReg: return Shape::kSingleRegion;
    case Request::SetVringKick: case Request::SetVringCall: case Request::SetVringErr:
      return Shape::kVringFile;
    case Request::GetConfig: case Request::SetConfig: return Shape::kConfig;
    default: return Shape::kUnknown;
  }
}

}  // namespace

Result<Header> decode_header(Bytes in) {
  if (in.size() < kHeaderSize) return Error{-EBADMSG};
  Header h;
  std::memcpy(&h, in.data(), sizeof h);
  if ((h.flags & kFlagVersionMask) != kVersion) return Error{-EBADMSG};
  if (h.size > kMaxPayload) return Error{-EBADMSG};
  return h;
}

size_t expected_fds(const Message& m) {
  switch (m.request) {
    case Request::SetMemTable: return std::get<MemTable>(m.payload).nregions;
    case Request::AddMemReg: case Request::SetBackendReqFd: case Request::SetLogFd: return 1;
    case Request::SetVringKick: case Request::SetVringCall: case Request::SetVringErr:
      return std::get<VringFile>(m.payload).has_fd ? 1 : 0;
    default: return 0;
  }
}

Result<Message> decode(Bytes in, size_t nfds) {
  auto h = decode_header(in);
  if (!h) return Error{h.error()};
  if (in.size() != kHeaderSize + h->size) return Error{-EBADMSG};
  Bytes body = in.subspan(kHeaderSize);
  Message m{static_cast<Request>(h->request), h->flags, None{}};
  switch (shape_of(m.request)) {
    case Shape::kNone:
      // Some front-ends send a u64 of padding with payload-less requests.
      if (!body.empty() && body.size() != 8) return Error{-EBADMSG};
      break;
    case Shape::kU64: {
      uint64_t v;
      if (!read_exact(body, v)) return Error{-EBADMSG};
      m.payload = v;
      break;
    }
    case Shape::kState: {
      VringState s;
      if (!read_exact(body, s)) return Error{-EBADMSG};
      m.payload = s;
      break;
    }
    case Shape::kAddr: {
      VringAddr a;
      if (!read_exact(body, a)) return Error{-EBADMSG};
      m.payload = a;
      break;
    }
    case Shape::kMemTable: {
      MemTable t{};
      if (body.size() < 8) return Error{-EBADMSG};
      std::memcpy(&t.nregions, body.data(), 4);
      if (t.nregions == 0 || t.nregions > kMemTableRegions) return Error{-EBADMSG};
      // QEMU sends the table with all 8 slots; others send only the used ones.
      size_t need = 8 + t.nregions * sizeof(MemRegion);
      if (body.size() < need || body.size() > 8 + kMemTableRegions * sizeof(MemRegion)) return Error{-EBADMSG};
      std::memcpy(t.regions.data(), body.data() + 8, t.nregions * sizeof(MemRegion));
      m.payload = t;
      break;
    }
    case Shape::kSingleRegion: {
      if (body.size() != 8 + sizeof(MemRegion)) return Error{-EBADMSG};
      MemRegion r;
      std::memcpy(&r, body.data() + 8, sizeof r);
      m.payload = r;
      break;
    }
    case Shape::kVringFile: {
      uint64_t v;
      if (!read_exact(body, v)) return Error{-EBADMSG};
      if (v & ~(kVringIndexMask | kVringNoFd)) return Error{-EBADMSG};
      m.payload = VringFile{static_cast<uint32_t>(v & kVringIndexMask), !(v & kVringNoFd)};
      break;
    }
    case Shape::kConfig: {
      Config c{};
      if (body.size() < 12) return Error{-EBADMSG};
      std::memcpy(&c.offset, body.data(), 4);
      std::memcpy(&c.size, body.data() + 4, 4);
      std::memcpy(&c.flags, body.data() + 8, 4);
      if (c.size > kMaxConfigSize || body.size() != 12 + c.size) return Error{-EBADMSG};
      std::memcpy(c.payload.data(), body.data() + 12, c.size);
      m.payload = c;
      break;
    }
    case Shape::kUnknown:
      break;
  }
  if (shape_of(m.request) != Shape::kUnknown && nfds != expected_fds(m)) return Error{-EBADMSG};
  return m;
}

namespace {
Result<size_t> encode(MutableBytes out, uint32_t request, uint32_t flags, const Payload& p) {
  std::byte body[kHeaderSize + 8 + sizeof(MemRegion) * kMemTableRegions + 12 + kMaxConfigSize];
  size_t n = 0;
  auto put = [&](const void* src, size_t len) {
    std::memcpy(body + kHeaderSize + n, src, len);
    n += len;
  };
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, None>) {
        } else if constexpr (std::is_same_v<T, MemTable>) {
          // The regions in use only, as QEMU sends them (8 + 32·n bytes):
          // the Rust virtiofsd refuses a table padded to 8 regions.
          uint32_t pad = 0, count = std::min<uint32_t>(v.nregions, kMemTableRegions);
          put(&v.nregions, 4);
          put(&pad, 4);
          put(v.regions.data(), sizeof(MemRegion) * count);
        } else if constexpr (std::is_same_v<T, MemRegion>) {
          uint64_t pad = 0;
          put(&pad, 8);
          put(&v, sizeof v);
        } else if constexpr (std::is_same_v<T, VringFile>) {
          uint64_t u = v.index | (v.has_fd ? 0 : kVringNoFd);
          put(&u, 8);
        } else if constexpr (std::is_same_v<T, Config>) {
          put(&v.offset, 4);
          put(&v.size, 4);
          put(&v.flags, 4);
          put(v.payload.data(), v.size <= kMaxConfigSize ? v.size : kMaxConfigSize);
        } else {
          put(&v, sizeof v);
        }
      },
      p);
  Header h{request, flags, static_cast<uint32_t>(n)};
  std::memcpy(body, &h, sizeof h);
  if (out.size() < kHeaderSize + n) return Error{-EMSGSIZE};
  std::memcpy(out.data(), body, kHeaderSize + n);
  return kHeaderSize + n;
}
}  // namespace

Result<size_t> encode_reply(MutableBytes out, Request request, const Payload& payload) {
  return encode(out, static_cast<uint32_t>(request), kVersion | kFlagReply, payload);
}

Result<size_t> encode_request(MutableBytes out, Request request, const Payload& payload, bool need_reply) {
  return encode(out, static_cast<uint32_t>(request), kVersion | (need_reply ? kFlagNeedReply : 0), payload);
}

const char* request_name(uint32_t r) {
  static constexpr const char* kNames[] = {
      nullptr, "GET_FEATURES", "SET_FEATURES", "SET_OWNER", "RESET_OWNER", "SET_MEM_TABLE",
      "SET_LOG_BASE", "SET_LOG_FD", "SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE",
      "GET_VRING_BASE", "SET_VRING_KICK", "SET_VRING_CALL", "SET_VRING_ERR",
      "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "SET_VRING_ENABLE",
      "SEND_RARP", "NET_SET_MTU", "SET_BACKEND_REQ_FD", "IOTLB_MSG", "SET_VRING_ENDIAN",
      "GET_CONFIG", "SET_CONFIG", "CREATE_CRYPTO_SESSION", "CLOSE_CRYPTO_SESSION",
      "POSTCOPY_ADVISE", "POSTCOPY_LISTEN", "POSTCOPY_END", "GET_INFLIGHT_FD",
      "SET_INFLIGHT_FD", "GPU_SET_SOCKET", "RESET_DEVICE", "VRING_KICK", "GET_MAX_MEM_SLOTS",
      "ADD_MEM_REG", "REM_MEM_REG", "SET_STATUS", "GET_STATUS"};
  return r < std::size(kNames) ? kNames[r] : nullptr;
}

}  // namespace fsd::vhost_user
