// The virtio-vsock header codec and the host's connection state machine
// (protocol/vsock), driven as a guest kernel would, and as a hostile one.
#include <gtest/gtest.h>

#include <array>
#include <vector>

#include "protocol/vsock/connections.h"
#include "protocol/vsock/packet.h"

namespace fsd::vsock {
namespace {

constexpr uint64_t kGuest = 3;
constexpr uint32_t k9p = 564;

Header from_guest(Op op, uint32_t guest_port, uint32_t host_port = k9p, uint32_t len = 0) {
  return {.src_cid = kGuest,
          .dst_cid = kHostCid,
          .src_port = guest_port,
          .dst_port = host_port,
          .len = len,
          .type = static_cast<uint16_t>(Type::kStream),
          .op = static_cast<uint16_t>(op),
          .buf_alloc = 256 * 1024,
          .fwd_cnt = 0};
}

std::vector<Header> drain(Host& h) {
  std::vector<Header> out;
  while (auto p = h.next_control()) out.push_back(*p);
  return out;
}

Host listening(HostOptions o = {}) {
  Host h(o);
  h.listen(k9p);
  return h;
}

TEST(VsockPacket, RoundTripsEveryFieldLittleEndian) {
  Header h{.src_cid = 0x0102030405060708,
           .dst_cid = 2,
           .src_port = 0x11223344,
           .dst_port = 564,
           .len = 4096,
           .type = 1,
           .op = 5,
           .flags = 3,
           .buf_alloc = 0x40000,
           .fwd_cnt = 0xdeadbeef};
  std::array<std::byte, kHeaderSize> b{};
  encode(h, b);
  EXPECT_EQ(b[0], std::byte{0x08});  // src_cid, low byte first
  EXPECT_EQ(b[16], std::byte{0x44});
  EXPECT_EQ(b[24], std::byte{0x00});
  EXPECT_EQ(b[25], std::byte{0x10});  // len 4096
  EXPECT_EQ(b[30], std::byte{5});
  EXPECT_EQ(decode(b), h);
  EXPECT_STREQ(op_name(5), "RW");
  EXPECT_STREQ(op_name(99), "unknown");
  EXPECT_FALSE(valid_guest_cid(2));
  EXPECT_TRUE(valid_guest_cid(3));
  EXPECT_FALSE(valid_guest_cid(0xffffffff));
}

TEST(VsockHost, AcceptsARequestWithAResponseCarryingItsCredit) {
  Host h = listening({.buf_alloc = 1 << 20});
  Event e = h.receive(from_guest(Op::kRequest, 700), {});
  EXPECT_EQ(e.kind, Event::Kind::kOpened);
  EXPECT_TRUE(e.trusted) << "port 700 needs root in the guest";
  EXPECT_FALSE(e.replaced);
  ConnId id = conn_id(700, k9p);
  EXPECT_EQ(e.id, id);
  EXPECT_EQ(h.send_window(id), 0u) << "data before the RESPONSE";
  auto out = drain(h);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].op, static_cast<uint16_t>(Op::kResponse));
  EXPECT_EQ(out[0].src_cid, kHostCid);
  EXPECT_EQ(out[0].dst_cid, kGuest);
  EXPECT_EQ(out[0].src_port, k9p);
  EXPECT_EQ(out[0].dst_port, 700u);
  EXPECT_EQ(out[0].buf_alloc, 1u << 20);
  EXPECT_EQ(h.send_window(id), 256u * 1024);
}

TEST(VsockHost, UnreservedPortsAreUntrusted) {
  Host h = listening();
  Event e = h.receive(from_guest(Op::kRequest, 1024), {});
  EXPECT_EQ(e.kind, Event::Kind::kOpened);
  EXPECT_FALSE(e.trusted);
  EXPECT_FALSE(h.trusted(e.id));
  EXPECT_TRUE(h.receive(from_guest(Op::kRequest, 1023), {}).trusted);
}

TEST(VsockHost, RefusesWhatItDoesNotServeWithAnRst) {
  Host h = listening();
  auto rst_for = [&](const Header& g) {
    Event e = h.receive(g, std::vector<std::byte>(g.len));
    EXPECT_EQ(e.kind, Event::Kind::kNone);
    auto out = drain(h);
    ASSERT_EQ(out.size(), 1u) << op_name(g.op);
    EXPECT_EQ(out[0].op, static_cast<uint16_t>(Op::kRst));
    EXPECT_EQ(out[0].dst_port, g.src_port);
    EXPECT_EQ(out[0].src_port, g.dst_port);
  };
  rst_for(from_guest(Op::kRequest, 700, 9999));  // nobody listens there
  rst_for(from_guest(Op::kRw, 700, k9p, 4));     // no such connection
  rst_for(from_guest(Op::kCreditUpdate, 700));
  rst_for(from_guest(Op::kShutdown, 700));
  Header seq = from_guest(Op::kRequest, 700);
  seq.type = static_cast<uint16_t>(Type::kSeqpacket);
  rst_for(seq);
  Header unknown = from_guest(Op::kRequest, 701);
  unknown.op = 42;
  rst_for(unknown);
  EXPECT_EQ(h.connections(), 0u);
  // Never an RST for an RST.
  EXPECT_EQ(h.receive(from_guest(Op::kRst, 700), {}).kind, Event::Kind::kNone);
  EXPECT_TRUE(drain(h).empty());
}

TEST(VsockHost, DropsPacketsOfOtherCidsWithoutAReply) {
  Host h = listening();
  Header spoofed = from_guest(Op::kRequest, 700);
  spoofed.src_cid = 4;
  EXPECT_EQ(h.receive(spoofed, {}).kind, Event::Kind::kNone);
  Header elsewhere = from_guest(Op::kRequest, 700);
  elsewhere.dst_cid = 5;
  EXPECT_EQ(h.receive(elsewhere, {}).kind, Event::Kind::kNone);
  EXPECT_TRUE(drain(h).empty());
  EXPECT_EQ(h.connections(), 0u);
}

TEST(VsockHost, DeliversDataAndReturnsCreditAsItIsConsumed) {
  Host h = listening({.buf_alloc = 64 * 1024});
  ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
  drain(h);
  std::vector<std::byte> chunk(16 * 1024, std::byte{7});
  Event e = h.receive(from_guest(Op::kRw, 700, k9p, 16 * 1024), chunk);
  ASSERT_EQ(e.kind, Event::Kind::kData);
  EXPECT_EQ(e.data.size(), chunk.size());
  EXPECT_EQ(e.data.data(), chunk.data()) << "the caller's bytes, not a copy";
  EXPECT_EQ(h.unconsumed(id), 16u * 1024);
  h.consumed(id, 8 * 1024);
  EXPECT_TRUE(drain(h).empty()) << "a credit update for an eighth of the window";
  h.consumed(id, 8 * 1024);
  auto out = drain(h);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].op, static_cast<uint16_t>(Op::kCreditUpdate));
  EXPECT_EQ(out[0].fwd_cnt, 16u * 1024);
  EXPECT_EQ(h.unconsumed(id), 0u);
  // CREDIT_REQUEST is always answered, once however often it is asked.
  h.receive(from_guest(Op::kCreditRequest, 700), {});
  h.receive(from_guest(Op::kCreditRequest, 700), {});
  out = drain(h);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].op, static_cast<uint16_t>(Op::kCreditUpdate));
}

// Linux guests keep no more in flight than their own buf_alloc, however
// large fsd's: credit is told in quarters of the smaller window.
TEST(VsockHost, CreditUpdatesFollowTheSmallerOfTheTwoWindows) {
  Host h = listening({.buf_alloc = 1 << 20});
  Header req = from_guest(Op::kRequest, 700);
  req.buf_alloc = 64 * 1024;
  ConnId id = h.receive(req, {}).id;
  drain(h);
  Header rw = from_guest(Op::kRw, 700, k9p, 16 * 1024);
  rw.buf_alloc = 64 * 1024;
  std::vector<std::byte> chunk(16 * 1024);
  ASSERT_EQ(h.receive(rw, chunk).kind, Event::Kind::kData);
  h.consumed(id, 16 * 1024);
  auto out = drain(h);
  ASSERT_EQ(out.size(), 1u) << "a quarter of the guest's 64 KiB, not of fsd's 1 MiB";
  EXPECT_EQ(out[0].op, static_cast<uint16_t>(Op::kCreditUpdate));
  EXPECT_EQ(out[0].fwd_cnt, 16u * 1024);
  EXPECT_EQ(out[0].buf_alloc, 1u << 20);
}

TEST(VsockHost, DataBeyondTheWindowResetsTheConnection) {
  Host h = listening({.buf_alloc = 16 * 1024});
  ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
  drain(h);
  std::vector<std::byte> chunk(12 * 1024);
  EXPECT_EQ(h.receive(from_guest(Op::kRw, 700, k9p, 12 * 1024), chunk).kind, Event::Kind::kData);
  // 12 KiB unconsumed: 8 more would pass the 16 KiB fsd offered.
  std::vector<std::byte> more(8 * 1024);
  Event e = h.receive(from_guest(Op::kRw, 700, k9p, 8 * 1024), more);
  EXPECT_EQ(e.kind, Event::Kind::kClosed);
  EXPECT_FALSE(h.known(id));
  auto out = drain(h);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].op, static_cast<uint16_t>(Op::kRst));
}

TEST(VsockHost, MalformedLengthsResetTheConnection) {
  Host h = listening();
  for (auto [len, given] : {std::pair<uint32_t, size_t>{100, 50}, {kMaxPayload + 1, kMaxPayload + 1}}) {
    ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
    drain(h);
    std::vector<std::byte> bytes(given);
    EXPECT_EQ(h.receive(from_guest(Op::kRw, 700, k9p, len), bytes).kind, Event::Kind::kClosed) << len;
    EXPECT_FALSE(h.known(id));
    drain(h);
  }
  // A control packet with a payload.
  h.receive(from_guest(Op::kRequest, 700), {});
  drain(h);
  std::vector<std::byte> four(4);
  EXPECT_EQ(h.receive(from_guest(Op::kCreditUpdate, 700, k9p, 4), four).kind, Event::Kind::kClosed);
}

TEST(VsockHost, SendsNoMoreThanTheGuestsCredit) {
  Host h = listening();
  ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
  drain(h);
  EXPECT_EQ(h.send_window(id), 256u * 1024);
  Header d = h.data_header(id, 200 * 1024);
  EXPECT_EQ(d.op, static_cast<uint16_t>(Op::kRw));
  EXPECT_EQ(d.len, 200u * 1024);
  EXPECT_EQ(h.send_window(id), 56u * 1024);
  h.data_header(id, 56 * 1024);
  EXPECT_EQ(h.send_window(id), 0u);
  // The guest consumed 100 KiB: a credit event, and that much window.
  Header update = from_guest(Op::kCreditUpdate, 700);
  update.fwd_cnt = 100 * 1024;
  Event e = h.receive(update, {});
  EXPECT_EQ(e.kind, Event::Kind::kCredit);
  EXPECT_EQ(h.send_window(id), 100u * 1024);
  // A guest claiming to have consumed more than was sent gains nothing
  // past its window.
  update.fwd_cnt = 10u << 20;
  h.receive(update, {});
  EXPECT_LE(h.send_window(id), 256u * 1024);
}

TEST(VsockHost, CreditReservedAheadIsSpentByItsPacketsOrGivenBack) {
  Host h = listening();
  ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
  drain(h);
  EXPECT_EQ(h.reserve(id, 300 * 1024), 256u * 1024) << "no more than the window";
  EXPECT_EQ(h.send_window(id), 0u) << "reserved credit is taken";
  Header a = h.reserved_header(id, 4096);
  EXPECT_EQ(a.op, static_cast<uint16_t>(Op::kRw));
  EXPECT_EQ(a.len, 4096u);
  EXPECT_EQ(h.reserved_header(id, 1000).len, 1000u);
  EXPECT_EQ(h.send_window(id), 0u);
  // The rest is given back: the window is what the two packets left.
  h.unreserve(id, 256 * 1024 - 5096);
  EXPECT_EQ(h.send_window(id), 256u * 1024 - 5096);
  // Nothing more is reserved: no packet of reserved bytes is longer than that.
  EXPECT_EQ(h.reserved_header(id, 100).len, 0u);
  h.unreserve(id, 100);
  EXPECT_EQ(h.send_window(id), 256u * 1024 - 5096);
  EXPECT_EQ(h.reserve(conn_id(701, k9p), 10), 0u) << "an unknown connection";
}

TEST(VsockHost, CountersWrapAround) {
  Host h = listening();
  ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
  drain(h);
  // Push tx_cnt near 2^32 in window-sized steps the guest acknowledges.
  uint32_t acked = 0;
  for (int i = 0; i < 16400; i++) {
    uint32_t n = h.send_window(id);
    ASSERT_GT(n, 0u) << "step " << i;
    h.data_header(id, n);
    acked += n;
    Header u = from_guest(Op::kCreditUpdate, 700);
    u.fwd_cnt = acked;
    h.receive(u, {});
  }
  EXPECT_EQ(h.send_window(id), 256u * 1024) << "after wrapping";
}

TEST(VsockHost, ShutdownOfBothDirectionsIsAnsweredWithAnRst) {
  Host h = listening();
  ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
  drain(h);
  Header half = from_guest(Op::kShutdown, 700);
  half.flags = kShutdownSend;
  EXPECT_EQ(h.receive(half, {}).kind, Event::Kind::kPeerShutdown);
  EXPECT_TRUE(h.known(id)) << "a half-close still receives";
  std::vector<std::byte> late(4);
  EXPECT_EQ(h.receive(from_guest(Op::kRw, 700, k9p, 4), late).kind, Event::Kind::kClosed)
      << "data after SHUTDOWN(SEND)";
  h.receive(from_guest(Op::kRequest, 700), {});
  drain(h);
  Header full = from_guest(Op::kShutdown, 700);
  full.flags = kShutdownRcv | kShutdownSend;
  EXPECT_EQ(h.receive(full, {}).kind, Event::Kind::kClosed);
  auto out = drain(h);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].op, static_cast<uint16_t>(Op::kRst));
  EXPECT_FALSE(h.known(id));
}

TEST(VsockHost, ARequestOnALivePairReplacesIt) {
  Host h = listening();
  ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
  drain(h);
  h.data_header(id, 1000);
  Event e = h.receive(from_guest(Op::kRequest, 700), {});
  EXPECT_EQ(e.kind, Event::Kind::kOpened);
  EXPECT_TRUE(e.replaced);
  EXPECT_EQ(h.connections(), 1u);
  EXPECT_EQ(drain(h).size(), 1u);
  EXPECT_EQ(h.send_window(id), 256u * 1024) << "the old connection's counters";
}

TEST(VsockHost, FsdClosesWithAnRstAndForgets) {
  Host h = listening();
  ConnId id = h.receive(from_guest(Op::kRequest, 700), {}).id;
  h.close(id);
  auto out = drain(h);
  ASSERT_EQ(out.size(), 1u) << "the RESPONSE is not sent for a connection closed before it went";
  EXPECT_EQ(out[0].op, static_cast<uint16_t>(Op::kRst));
  EXPECT_EQ(h.send_window(id), 0u);
  EXPECT_EQ(h.receive(from_guest(Op::kRst, 700), {}).kind, Event::Kind::kNone);
}

TEST(VsockHost, ConnectionsAndQueuedPacketsAreBounded) {
  Host h = listening({.max_connections = 8, .max_control = 32});
  for (uint32_t p = 2000; p < 2008; p++) EXPECT_EQ(h.receive(from_guest(Op::kRequest, p), {}).kind, Event::Kind::kOpened);
  EXPECT_EQ(h.receive(from_guest(Op::kRequest, 2008), {}).kind, Event::Kind::kNone) << "past the cap";
  EXPECT_EQ(h.connections(), 8u);
  // A guest that floods and never takes its rx buffers: what waits stays
  // bounded, whatever it repeats.
  for (int round = 0; round < 1000; round++)
    for (uint32_t p = 2000; p < 2016; p++) {
      h.receive(from_guest(Op::kRequest, p), {});
      h.receive(from_guest(Op::kCreditRequest, p), {});
      h.receive(from_guest(Op::kRst, p), {});
    }
  size_t queued = drain(h).size();
  EXPECT_LE(queued, 32u + 2 * 8u);
  h.reset();
  EXPECT_EQ(h.connections(), 0u);
  EXPECT_TRUE(drain(h).empty());
}

}  // namespace
}  // namespace fsd::vsock
