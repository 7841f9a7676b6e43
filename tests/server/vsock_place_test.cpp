// Reads placed straight into receive chains (VsockDevice's Room): the
// device driven in this process, chains handed over by hand as the
// back-end hands them, so that a test can act while a read is in flight.
// Checked: the file's bytes arrive in the chains with their packet
// headers; a read past the guest's credit is placed up to it and the rest
// sent as credit comes; a short read at the end of the file gives unused
// chains back; replies finished during a placed read follow it on the
// stream; a connection reset mid-read sends nothing more and leaves no
// chain behind; the read is counted as I/O into the queue until it ends.
#include <fcntl.h>
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "fsd/p9/session.h"
#include "fsd/uring/ring.h"
#include "fsd/vfs/export_set.h"
#include "fsd/vfs/vfs.h"
#include "fsd/vhost/vsock_device.h"
#include "protocol/p9/codec.h"
#include "protocol/vsock/packet.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using vsock::Header;
using vsock::kHeaderSize;
using vsock::kRxQueue;
using vsock::kTxQueue;
using VOp = vsock::Op;

constexpr uint64_t kCid = 3;
constexpr uint32_t kPort = 564, kGuestPort = 700;
constexpr uint32_t kRoot = 1, kFile = 2;
constexpr uint32_t kPayload = 4096;  // each receive chain's, as Linux gives them

// The back-end's side: records what comes back, counts I/O in flight.
class Used : public vhost::UsedRings {
 public:
  struct Given {
    uint16_t head;
    uint32_t len;
  };
  std::vector<Given> rx;
  unsigned io = 0, most_io = 0;
  void give(unsigned queue, uint16_t head, uint32_t len) override {
    if (queue == kRxQueue) rx.push_back({head, len});
  }
  void notify(unsigned) override {}
  void io_started(unsigned queue) override {
    EXPECT_EQ(queue, kRxQueue);
    most_io = std::max(most_io, ++io);
  }
  void io_done(unsigned) override {
    ASSERT_GT(io, 0u);
    io--;
  }
};

class VsockPlace : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = random_bytes(300 * 1024 + 17, 3);
    write_file(tmp_.path() / "ro/big.bin", data_);
    exports_.add(std::make_unique<Vfs>(
        ExportConfig{.tag = "ro", .path = (tmp_.path() / "ro").string(), .read_only = true}, VfsOptions{}));
    ring_.set_metadata_io(Ring::MetadataIo::kInline);
    dev_ = std::make_unique<vhost::VsockDevice>(ring_, used_, p9::session_factory(exports_, {.max_msize = 512 * 1024}),
                                                vhost::VsockOptions{.guest_cid = kCid, .port = kPort});
  }
  void TearDown() override {
    settle();
    dev_->release(kRxQueue);
    dev_->stopped();
    settle();
    dev_.reset();
  }

  // Every request in flight finishes.
  void settle() {
    while (ring_.active() > 0) ring_.run_once(true);
  }
  Header header(VOp op) {
    return Header{.src_cid = kCid, .dst_cid = vsock::kHostCid, .src_port = kGuestPort, .dst_port = kPort,
                  .type = 1, .op = static_cast<uint16_t>(op), .buf_alloc = buf_alloc_, .fwd_cnt = fwd_cnt_};
  }
  void transmit(Header h, std::span<const std::byte> payload = {}) {
    h.len = static_cast<uint32_t>(payload.size());
    std::vector<std::byte> mem(kHeaderSize + payload.size());
    std::array<std::byte, kHeaderSize> raw;
    vsock::encode(h, raw);
    std::memcpy(mem.data(), raw.data(), kHeaderSize);
    if (!payload.empty()) std::memcpy(mem.data() + kHeaderSize, payload.data(), payload.size());
    virtio::Chain c;
    c.head = 60000;
    c.readable = {iovec{mem.data(), mem.size()}};
    c.readable_bytes = mem.size();
    dev_->take(kTxQueue, std::span(&c, 1));
  }
  template <class T>
  void send(uint16_t tag, const T& m) {
    std::vector<std::byte> b(64 * 1024);
    auto n = p9::encode(b, tag, m);
    ASSERT_TRUE(n.ok());
    transmit(header(VOp::kRw), std::span(b).first(*n));
  }
  // `n` receive chains of a header and kPayload bytes each.
  void give_rx(unsigned n) {
    std::vector<virtio::Chain> chains;
    for (unsigned k = 0; k < n; k++) {
      uint16_t head = next_head_++;
      auto& mem = rx_mem_[head];
      mem.assign(kHeaderSize + kPayload, std::byte{0xee});
      virtio::Chain c;
      c.head = head;
      c.writable = {iovec{mem.data(), kHeaderSize}, iovec{mem.data() + kHeaderSize, kPayload}};
      c.writable_bytes = mem.size();
      chains.push_back(std::move(c));
    }
    dev_->take(kRxQueue, chains);
  }
  // The packets given back since the last call, in order; RW payloads are
  // appended to stream_ and counted in fwd_cnt_.
  std::vector<Header> collect() {
    std::vector<Header> out;
    for (; seen_ < used_.rx.size(); seen_++) {
      auto [head, len] = used_.rx[seen_];
      if (len == 0) continue;
      EXPECT_GE(len, kHeaderSize);
      const auto& mem = rx_mem_.at(head);
      std::array<std::byte, kHeaderSize> raw;
      std::memcpy(raw.data(), mem.data(), kHeaderSize);
      Header h = vsock::decode(raw);
      EXPECT_EQ(h.len, len - kHeaderSize);
      if (h.op == static_cast<uint16_t>(VOp::kRw)) {
        stream_.insert(stream_.end(), mem.begin() + kHeaderSize, mem.begin() + len);
        fwd_cnt_ += h.len;
      }
      out.push_back(h);
    }
    return out;
  }
  // The next whole reply on the stream, if there is one.
  std::optional<p9::RFrame> next_reply() {
    if (stream_.size() - taken_ < 4) return std::nullopt;
    uint32_t size;
    std::memcpy(&size, stream_.data() + taken_, 4);
    if (stream_.size() - taken_ < size) return std::nullopt;
    auto f = p9::decode_r(p9::Bytes(stream_.data() + taken_, size));
    EXPECT_TRUE(f.ok());
    taken_ += size;
    if (!f) return std::nullopt;
    return *f;
  }
  // Connects, attaches and opens big.bin; every reply taken.
  void open_file() {
    give_rx(40);
    transmit(header(VOp::kRequest));
    send(p9::kNoTag, p9::Tversion{.msize = 512 * 1024, .version = p9::kVersion9P2000L});
    settle();
    send(1, p9::Tattach{.fid = kRoot, .afid = p9::kNoFid, .uname = "", .aname = "ro", .n_uname = 0});
    p9::Twalk w{.fid = kRoot, .newfid = kFile, .wnames = {}};
    w.wnames.names[w.wnames.count++] = "big.bin";
    send(2, w);
    send(3, p9::Tlopen{.fid = kFile, .flags = O_RDONLY});
    settle();
    collect();
    for (int k = 0; k < 4; k++) ASSERT_TRUE(next_reply()) << "reply " << k;
    ASSERT_FALSE(next_reply());
  }
  std::string_view read_data(const p9::RFrame& f) {
    auto* r = std::get_if<p9::Rread>(&f.msg);
    EXPECT_TRUE(r) << "not an Rread";
    if (!r) return {};
    return {reinterpret_cast<const char*>(r->data.bytes.data()), r->data.bytes.size()};
  }

  TempDir tmp_;
  std::string data_;
  ExportSet exports_;
  Ring ring_{64};
  Used used_;
  std::unique_ptr<vhost::VsockDevice> dev_;
  std::map<uint16_t, std::vector<std::byte>> rx_mem_;
  uint16_t next_head_ = 0;
  size_t seen_ = 0, taken_ = 0;
  std::vector<std::byte> stream_;
  uint32_t buf_alloc_ = 1 << 20, fwd_cnt_ = 0;
};

TEST_F(VsockPlace, AReadGoesStraightIntoReceiveChains) {
  open_file();
  size_t given = used_.rx.size();
  send(7, p9::Tread{.fid = kFile, .offset = 1000, .count = 64 * 1024});
  EXPECT_EQ(used_.io, 1u) << "the read into the chains is in flight";
  settle();
  EXPECT_EQ(used_.io, 0u);
  auto packets = collect();
  auto r = next_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->tag, 7);
  EXPECT_TRUE(read_data(*r) == std::string_view(data_).substr(1000, 64 * 1024));
  // 64 KiB and the 11-byte header in 4 KiB chains: 17 packets, all placed.
  EXPECT_EQ(used_.rx.size() - given, 17u);
  EXPECT_EQ(dev_->stats().placed, 64u * 1024 + 11);
  for (const auto& h : packets) EXPECT_EQ(h.op, static_cast<uint16_t>(VOp::kRw));
}

TEST_F(VsockPlace, AReadPastTheCreditIsPlacedUpToItAndTheRestFollowsWithCredit) {
  buf_alloc_ = 16 * 1024;
  open_file();
  transmit(header(VOp::kCreditUpdate));  // the guest's smaller window
  uint64_t before = dev_->stats().placed;
  send(8, p9::Tread{.fid = kFile, .offset = 0, .count = 100 * 1024});
  settle();
  collect();
  EXPECT_EQ(dev_->stats().placed - before, 16u * 1024 - 0) << "placed up to the credit";
  std::optional<p9::RFrame> r;
  for (int turns = 0; turns < 20 && !(r = next_reply()); turns++) {
    transmit(header(VOp::kCreditUpdate));  // consumed what came: more credit
    collect();
  }
  ASSERT_TRUE(r) << "the rest never came";
  EXPECT_TRUE(read_data(*r) == std::string_view(data_).substr(0, 100 * 1024));
}

TEST_F(VsockPlace, AShortReadAtTheEndGivesUnusedChainsBack) {
  open_file();
  size_t given = used_.rx.size();
  send(9, p9::Tread{.fid = kFile, .offset = data_.size() - 5000, .count = 100 * 1024});
  settle();
  collect();
  auto r = next_reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(read_data(*r), std::string_view(data_).substr(data_.size() - 5000));
  EXPECT_EQ(used_.rx.size() - given, 2u) << "5011 bytes: two packets";
  // The chains the read did not reach are held again, and used next.
  send(10, p9::Tread{.fid = kFile, .offset = 0, .count = 20 * 1024});
  settle();
  collect();
  r = next_reply();
  ASSERT_TRUE(r);
  EXPECT_TRUE(read_data(*r) == std::string_view(data_).substr(0, 20 * 1024));
}

TEST_F(VsockPlace, RepliesFinishedDuringAPlacedReadFollowIt) {
  open_file();
  // One packet: a read (placed, in flight) and a clunk of an unknown fid,
  // answered at once while the read is still in flight.
  std::vector<std::byte> b(64 * 1024);
  size_t n = *p9::encode(b, 11, p9::Tread{.fid = kFile, .offset = 0, .count = 64 * 1024});
  n += *p9::encode(std::span(b).subspan(n), 12, p9::Tclunk{.fid = 99});
  transmit(header(VOp::kRw), std::span(b).first(n));
  EXPECT_EQ(used_.io, 1u);
  settle();
  collect();
  auto first = next_reply(), second = next_reply();
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->tag, 11);
  EXPECT_TRUE(read_data(*first) == std::string_view(data_).substr(0, 64 * 1024));
  EXPECT_EQ(second->tag, 12);
  EXPECT_TRUE(std::holds_alternative<p9::Rlerror>(second->msg));
}

TEST_F(VsockPlace, AConnectionResetMidReadSendsNothingMoreAndKeepsNoChain) {
  open_file();
  size_t given = used_.rx.size();
  send(13, p9::Tread{.fid = kFile, .offset = 0, .count = 128 * 1024});
  EXPECT_EQ(used_.io, 1u);
  transmit(header(VOp::kRst));
  settle();
  EXPECT_EQ(used_.io, 0u);
  auto after = collect();
  EXPECT_EQ(used_.rx.size(), given) << "no packet for a connection that is gone";
  EXPECT_TRUE(after.empty());
  // Every chain not used comes back at the stop, empty.
  dev_->release(kRxQueue);
  EXPECT_EQ(used_.rx.size(), 40u);
  for (size_t k = given; k < used_.rx.size(); k++) EXPECT_EQ(used_.rx[k].len, 0u);
}

}  // namespace
}  // namespace fsd::testing
