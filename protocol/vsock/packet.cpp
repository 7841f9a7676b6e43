#include "protocol/vsock/packet.h"

#include <cstring>

namespace fsd::vsock {
namespace {

template <class T>
T load(const std::byte* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); i++) v |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
  return v;
}

template <class T>
void store(std::byte* p, T v) {
  for (size_t i = 0; i < sizeof(T); i++) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}

}  // namespace

Header decode(std::span<const std::byte, kHeaderSize> b) {
  const std::byte* p = b.data();
  Header h;
  h.src_cid = load<uint64_t>(p + 0);
  h.dst_cid = load<uint64_t>(p + 8);
  h.src_port = load<uint32_t>(p + 16);
  h.dst_port = load<uint32_t>(p + 20);
  h.len = load<uint32_t>(p + 24);
  h.type = load<uint16_t>(p + 28);
  h.op = load<uint16_t>(p + 30);
  h.flags = load<uint32_t>(p + 32);
  h.buf_alloc = load<uint32_t>(p + 36);
  h.fwd_cnt = load<uint32_t>(p + 40);
  return h;
}

void encode(const Header& h, std::span<std::byte, kHeaderSize> out) {
  std::byte* p = out.data();
  store(p + 0, h.src_cid);
  store(p + 8, h.dst_cid);
  store(p + 16, h.src_port);
  store(p + 20, h.dst_port);
  store(p + 24, h.len);
  store(p + 28, h.type);
  store(p + 30, h.op);
  store(p + 32, h.flags);
  store(p + 36, h.buf_alloc);
  store(p + 40, h.fwd_cnt);
}

const char* op_name(uint16_t op) {
  switch (static_cast<Op>(op)) {
    case Op::kRequest: return "REQUEST";
    case Op::kResponse: return "RESPONSE";
    case Op::kRst: return "RST";
    case Op::kShutdown: return "SHUTDOWN";
    case Op::kRw: return "RW";
    case Op::kCreditUpdate: return "CREDIT_UPDATE";
    case Op::kCreditRequest: return "CREDIT_REQUEST";
    case Op::kInvalid: break;
  }
  return "unknown";
}

}  // namespace fsd::vsock
