// libFuzzer target: the host's vsock connection state machine
// (protocol/vsock/connections.h) under a stream of guest packets and
// device actions, as a hostile guest would drive it. Each step takes a
// selector byte: a guest packet (header bytes decoded as the device
// decodes them, with the guest's CID and the host's forced most of the
// time so that connections form, and a payload), fsd consuming received
// bytes, fsd sending within the window, fsd closing, or a drain of the
// control queue. After every step the invariants hold: bounded
// connections, unconsumed bytes within the window, bounded control
// queue, every control packet addressed from the host to this guest, and
// data never past the guest's credit.
#include <array>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "protocol/vsock/connections.h"
#include "tests/fuzz/fuzz_input.h"

using namespace fsd::vsock;

namespace {

using fsd::fuzz::Input;

constexpr HostOptions kOptions{.guest_cid = 3, .buf_alloc = 64 * 1024, .max_connections = 4, .max_control = 8};

void check_control(Host& h, size_t& drained) {
  while (auto c = h.next_control()) {
    if (c->src_cid != kHostCid || c->dst_cid != kOptions.guest_cid || c->len != 0) std::abort();
    auto op = static_cast<Op>(c->op);
    if (op != Op::kResponse && op != Op::kRst && op != Op::kCreditUpdate) std::abort();
    if (++drained > 1'000'000) break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  Host h(kOptions);
  h.listen(564);
  h.listen(700);
  std::vector<std::byte> payload(kMaxPayload + 8);
  std::array<ConnId, 8> seen{};
  size_t nseen = 0, drained = 0;
  while (!in.empty()) {
    uint8_t sel = in.byte();
    switch (sel % 6) {
      case 0:
      case 1: {  // a guest packet
        std::array<std::byte, kHeaderSize> raw{};
        for (auto& b : raw) b = std::byte{in.byte()};
        Header g = decode(raw);
        if (sel & 0x10) g.src_cid = kOptions.guest_cid, g.dst_cid = kHostCid;
        if (sel & 0x20) g.type = static_cast<uint16_t>(Type::kStream);
        if (sel & 0x40) g.op = static_cast<uint16_t>(1 + in.byte() % 7);
        if (sel & 0x80) g.dst_port = (in.byte() & 1) ? 564 : 700, g.src_port %= 2048;
        size_t given = g.len <= kMaxPayload ? g.len : 16;
        if (in.byte() & 1) given = in.byte();  // sometimes shorter or longer than the header says
        Event e = h.receive(g, std::span<const std::byte>(payload.data(), given));
        if (e.kind == Event::Kind::kData && (e.data.size() != g.len || !h.known(e.id))) std::abort();
        if (e.kind == Event::Kind::kOpened) seen[nseen++ % seen.size()] = e.id;
        if (e.kind == Event::Kind::kClosed && h.known(e.id)) std::abort();
        break;
      }
      case 2: {  // fsd consumes
        ConnId id = seen[in.byte() % seen.size()];
        uint32_t before = h.unconsumed(id);
        uint32_t n = in.u32() % (2 * kOptions.buf_alloc);
        h.consumed(id, n);
        if (h.unconsumed(id) != before - std::min(n, before)) std::abort();
        break;
      }
      case 3: {  // fsd sends within the window
        ConnId id = seen[in.byte() % seen.size()];
        uint32_t w = h.send_window(id);
        if (w == 0) break;
        uint32_t n = 1 + in.u32() % w;
        Header d = h.data_header(id, n);
        if (d.len != n || d.op != static_cast<uint16_t>(Op::kRw) || d.src_cid != kHostCid) std::abort();
        if (h.send_window(id) != w - n) std::abort();
        break;
      }
      case 4:
        h.close(seen[in.byte() % seen.size()]);
        break;
      case 5:
        check_control(h, drained);
        break;
    }
    if (h.connections() > kOptions.max_connections) std::abort();
    for (ConnId id : seen)
      if (h.unconsumed(id) > kOptions.buf_alloc) std::abort();
  }
  // What waits is bounded whatever came before.
  size_t before = drained;
  check_control(h, drained);
  if (drained - before > kOptions.max_control + 2 * kOptions.max_connections) std::abort();
  return 0;
}
