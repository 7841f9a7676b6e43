// The virtio-vsock device with 9P sessions on its connections, driven
// through the project's own front-end as a guest's vsock driver would
// (VsockGuest): the config space, 9P from a reserved port, refusals, a
// malformed frame that resets only its own connection, a connection whose
// guest never reads (credit starvation) next to one that works, a guest
// that stops taking receive buffers next to another guest on the same
// workers, hostile packets, and a front-end that goes away mid-transfer.
//
// In-process: the back-end and its exports live in the test.
#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>

#include "fsd/client/p9_client.h"
#include "fsd/client/vhost_frontend.h"
#include "fsd/client/vsock_guest.h"
#include "fsd/vfs/export_set.h"
#include "fsd/p9/session.h"
#include "fsd/vfs/vfs.h"
#include "fsd/vhost/backend.h"
#include "fsd/vhost/vsock_device.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using frontend::VhostFrontend;
using frontend::VsockBridge;
using frontend::VsockGuest;
namespace vu = vhost_user;

constexpr uint32_t k9pPort = 564;
constexpr uint32_t kRoot = 1000;

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

class VsockDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    ro_ = tmp_.path() / "ro";
    rw_ = tmp_.path() / "rw";
    big_ = random_bytes(3 * 1024 * 1024 + 123, 7);
    write_file(ro_ / "hello.txt", "hello, world\n");
    write_file(ro_ / "big.bin", big_);
    fs::create_directories(rw_);
    exports_.add(std::make_unique<Vfs>(ExportConfig{.tag = "ro", .path = ro_.string(), .read_only = true}, VfsOptions{}));
    exports_.add(std::make_unique<Vfs>(ExportConfig{.tag = "rw", .path = rw_.string()}, VfsOptions{}));
    pool_ = std::make_shared<VhostWorkerPool>(1, Ring::MetadataIo::kAdaptive);
    backend_ = start_backend("vsock.sock");
  }
  void TearDown() override {
    for (auto& b : backends_) b->stop();
  }

  VhostUserBackend* start_backend(const std::string& name, vhost::VsockOptions vo = {}) {
    VhostUserOptions o;
    o.device = {.name = "virtio-vsock", .queues = 2, .workers = 1, .config = vhost::VsockDevice::config(vo.guest_cid)};
    o.pool = pool_;
    auto sessions = p9::session_factory(exports_, p9::SessionConfig{.max_msize = 1 << 20});
    auto& b = backends_.emplace_back(std::make_unique<VhostUserBackend>(
        (tmp_.path() / name).string(), vhost::vsock_device_factory(sessions, vo), o));
    b->start();
    return b.get();
  }

  std::unique_ptr<VhostFrontend> frontend(const std::string& name = "vsock.sock") {
    VhostFrontend::Options o;
    o.queues = 2;
    auto fe = VhostFrontend::connect((tmp_.path() / name).string(), o);
    EXPECT_TRUE(fe.ok()) << fe.error();
    if (!fe) return nullptr;
    auto r = (*fe)->negotiate();
    EXPECT_TRUE(r.ok()) << r.error();
    return std::move(*fe);
  }

  // A 9P client on a bridged vsock connection from `port`.
  struct Mount {
    std::unique_ptr<VsockBridge> bridge;
    std::unique_ptr<p9::Client> client;
  };
  Mount mount(VsockGuest& g, uint32_t port, uint32_t msize = 1 << 20) {
    Mount m;
    auto b = VsockBridge::open(g, port, k9pPort);
    EXPECT_TRUE(b.ok()) << b.error();
    if (!b) return m;
    m.bridge = std::move(*b);
    m.client = std::make_unique<p9::Client>(m.bridge->take_fd());
    auto v = m.client->version(msize);
    EXPECT_TRUE(v.ok()) << v.error();
    return m;
  }

  TempDir tmp_;
  fs::path ro_, rw_;
  std::string big_;
  ExportSet exports_;
  std::shared_ptr<VhostWorkerPool> pool_;
  std::vector<std::unique_ptr<VhostUserBackend>> backends_;
  VhostUserBackend* backend_ = nullptr;
};

// Frames by hand, for tests that drive several connections on one thread.
template <class T>
std::vector<std::byte> frame(uint16_t tag, const T& t) {
  std::vector<std::byte> b(64 * 1024);
  auto n = p9::encode(b, tag, t);
  EXPECT_TRUE(n.ok());
  b.resize(n ? *n : 0);
  return b;
}
p9::Twalk walk_to(std::string_view name) {
  p9::Twalk t{.fid = kRoot, .newfid = 1, .wnames = {}};
  t.wnames.names[t.wnames.count++] = name;
  return t;
}
// Reads from a connection until `count` whole reply frames have come.
std::vector<std::vector<std::byte>> replies(VsockGuest& g, uint32_t port, size_t count) {
  std::vector<std::vector<std::byte>> out;
  std::vector<std::byte> have;
  while (out.size() < count) {
    auto got = g.read(port, k9pPort);
    EXPECT_TRUE(got.ok()) << got.error();
    if (!got) break;
    have.insert(have.end(), got->begin(), got->end());
    while (have.size() >= 4) {
      uint32_t size;
      std::memcpy(&size, have.data(), 4);
      if (have.size() < size) break;
      out.emplace_back(have.begin(), have.begin() + size);
      have.erase(have.begin(), have.begin() + size);
    }
  }
  return out;
}

TEST_F(VsockDevice, ConfigSpaceHoldsTheGuestCid) {
  auto fe = frontend();
  ASSERT_TRUE(fe);
  vu::Config c{.offset = 0, .size = 8, .flags = 0};
  auto m = fe->send(vu::Request::GetConfig, c, {}, false, true);
  ASSERT_TRUE(m.ok()) << m.error();
  auto got = std::get<vu::Config>(m->payload);
  uint64_t cid;
  std::memcpy(&cid, got.payload.data(), 8);
  EXPECT_EQ(cid, 3u);
}

TEST_F(VsockDevice, GuestRootReadsAndWritesOver9P) {
  auto fe = frontend();
  ASSERT_TRUE(fe);
  VsockGuest g(*fe);
  g.fill_rx();
  Mount m = mount(g, 700);
  ASSERT_TRUE(m.client);
  p9::Client& c = *m.client;
  EXPECT_EQ(c.msize(), 1u << 20);
  ASSERT_TRUE(c.attach(kRoot, "ro").ok());
  ASSERT_TRUE(c.walk(kRoot, 1, "hello.txt").ok());
  ASSERT_TRUE(c.lopen(1, O_RDONLY).ok());
  auto hello = c.read_all(1);
  ASSERT_TRUE(hello.ok()) << hello.error();
  EXPECT_EQ(*hello, "hello, world\n");
  ASSERT_TRUE(c.walk(kRoot, 3, "").ok());
  ASSERT_TRUE(c.lopen(3, O_RDONLY | O_DIRECTORY).ok());
  auto list = c.readdir_all(3);
  ASSERT_TRUE(list.ok()) << list.error();
  EXPECT_EQ(list->size(), 4u) << "., .., hello.txt, big.bin";
  ASSERT_TRUE(c.clunk(3).ok());
  // Megabytes through a 256 KiB guest window and 4 KiB receive buffers.
  ASSERT_TRUE(c.walk(kRoot, 2, "big.bin").ok());
  ASSERT_TRUE(c.lopen(2, O_RDONLY).ok());
  auto big = c.read_all(2);
  ASSERT_TRUE(big.ok()) << big.error();
  EXPECT_TRUE(*big == big_);

  // Writes of a whole msize, through fsd's 1 MiB window.
  ASSERT_TRUE(c.attach(kRoot + 1, "rw").ok());
  ASSERT_TRUE(c.lcreate(kRoot + 1, "out.bin", O_WRONLY, 0644).ok());
  std::string data = random_bytes(2 * 1024 * 1024 + 5, 9);
  size_t off = 0;
  while (off < data.size()) {
    size_t n = std::min<size_t>(c.msize() - 64, data.size() - off);
    auto w = c.write(kRoot + 1, off, std::string_view(data).substr(off, n));
    ASSERT_TRUE(w.ok()) << w.error();
    off += *w;
  }
  ASSERT_TRUE(c.clunk(kRoot + 1).ok());
  EXPECT_TRUE(read_file(rw_ / "out.bin") == data);
}

// Transmit completions only let the guest free its buffers: fsd tells it
// of them once half the ring waits, not after every packet, and still long
// before a full ring could stall it.
TEST_F(VsockDevice, TransmitCompletionsAreToldOncePerHalfRing) {
  auto fe = frontend();
  ASSERT_TRUE(fe);
  VsockGuest g(*fe);
  g.fill_rx();
  ASSERT_TRUE(g.connect(700, k9pPort).ok());
  auto told = [&] {
    uint64_t n = 0;
    return ::read(fe->call_fd(vsock::kTxQueue), &n, sizeof n) == sizeof n ? n : 0;
  };
  told();
  // 303 one-descriptor packets through a 256-entry ring, reclaimed by
  // polling; after each 101, the answer to the CREDIT_REQUEST among them
  // shows that fsd has taken them all.
  for (int batch = 0; batch < 3; batch++) {
    for (int i = 0; i < 100; i++) g.send(g.header(700, k9pPort, vsock::Op::kCreditUpdate));
    g.send(g.header(700, k9pPort, vsock::Op::kCreditRequest));
    for (;;) {
      auto p = g.receive();
      ASSERT_TRUE(p.ok()) << p.error();
      if (p->h.op == static_cast<uint16_t>(vsock::Op::kCreditUpdate)) break;
    }
  }
  uint64_t n = told();
  EXPECT_GE(n, 1u) << "a guest that waits for its buffers must hear of them";
  EXPECT_LE(n, 3u) << "once per 128 descriptors, not per packet";
}

// --vsock-socket: its options, and a clear error naming what is wrong.
TEST(VsockSocketOption, ParsesItsOptionsAndRefusesBadOnes) {
  auto s = vhost::parse_vsock_socket("/run/v.sock");
  EXPECT_EQ(s.path, "/run/v.sock");
  EXPECT_EQ(s.guest_cid, 3u);
  EXPECT_EQ(s.port, 564u);
  EXPECT_FALSE(s.untrusted_as);
  s = vhost::parse_vsock_socket("/run/v.sock,cid=7,port=5640,untrusted-as=2003:2004");
  EXPECT_EQ(s.guest_cid, 7u);
  EXPECT_EQ(s.port, 5640u);
  EXPECT_EQ(s.untrusted_as, (std::pair<uid_t, gid_t>{2003, 2004}));
  auto refused = [](std::string_view spec) {
    try {
      vhost::parse_vsock_socket(spec);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(refused(",cid=3").find("no socket path"), std::string::npos);
  EXPECT_NE(refused("/v.sock,cid=2").find("cid 2 is reserved"), std::string::npos);
  EXPECT_NE(refused("/v.sock,cid=x").find("cid=x is not a number"), std::string::npos);
  EXPECT_NE(refused("/v.sock,port=").find("port= is not a number"), std::string::npos);
  EXPECT_NE(refused("/v.sock,port=4294967295").find("is not a number up to"), std::string::npos);
  EXPECT_NE(refused("/v.sock,untrusted-as=2003").find("untrusted-as takes UID:GID"), std::string::npos);
  EXPECT_NE(refused("/v.sock,untrusted-as=a:1").find("untrusted-as uid=a"), std::string::npos);
  EXPECT_NE(refused("/v.sock,bogus=1").find("unknown option 'bogus=1'"), std::string::npos);
}

TEST_F(VsockDevice, RefusesUnreservedPortsAndPortsNothingListensOn) {
  auto fe = frontend();
  ASSERT_TRUE(fe);
  VsockGuest g(*fe);
  g.fill_rx();
  EXPECT_EQ(g.connect(40000, k9pPort).error(), -ECONNREFUSED);  // not guest root
  EXPECT_EQ(g.connect(1024, k9pPort).error(), -ECONNREFUSED);
  EXPECT_EQ(g.connect(700, 9999).error(), -ECONNREFUSED);  // nothing there
  EXPECT_TRUE(g.connect(1023, k9pPort).ok());
}

TEST_F(VsockDevice, AnUnreservedPortActsAsTheIdentityItIsGiven) {
  vhost::VsockOptions vo;
  vo.untrusted_as = Credentials::get(::getuid(), ::getgid());
  start_backend("open.sock", vo);
  auto fe = frontend("open.sock");
  ASSERT_TRUE(fe);
  VsockGuest g(*fe);
  g.fill_rx();
  Mount m = mount(g, 40000);
  ASSERT_TRUE(m.client);
  ASSERT_TRUE(m.client->attach(kRoot, "ro").ok());
  ASSERT_TRUE(m.client->walk(kRoot, 1, "hello.txt").ok());
  EXPECT_TRUE(m.client->lopen(1, O_RDONLY).ok());
}

TEST_F(VsockDevice, AMalformedFrameResetsOnlyItsConnection) {
  auto fe = frontend();
  ASSERT_TRUE(fe);
  VsockGuest g(*fe);
  g.fill_rx();
  ASSERT_TRUE(g.connect(700, k9pPort).ok());
  ASSERT_TRUE(g.connect(701, k9pPort).ok());
  // A length prefix of 3 (shorter than itself) on 700.
  std::vector<std::byte> bad = {std::byte{3}, std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0}};
  ASSERT_TRUE(g.write(700, k9pPort, bad).ok());
  auto r = g.read(700, k9pPort);
  EXPECT_EQ(r.error(), -ECONNRESET);
  EXPECT_TRUE(g.reset_by_host(700, k9pPort));
  // 701 still works.
  ASSERT_TRUE(g.write(701, k9pPort, frame(p9::kNoTag, p9::Tversion{.msize = 65536, .version = p9::kVersion9P2000L})).ok());
  auto rv = replies(g, 701, 1);
  ASSERT_EQ(rv.size(), 1u);
  auto f = p9::decode_r(rv[0]);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(std::holds_alternative<p9::Rversion>(f->msg));
}

TEST_F(VsockDevice, AConnectionWhoseGuestNeverReadsStallsOnlyItself) {
  auto fe = frontend();
  ASSERT_TRUE(fe);
  VsockGuest::Options go;
  go.buf_alloc = 64 * 1024;  // the guest's window per connection
  VsockGuest g(*fe, go);
  g.fill_rx();
  for (uint32_t port : {700u, 701u}) {
    ASSERT_TRUE(g.connect(port, k9pPort).ok());
    ASSERT_TRUE(g.write(port, k9pPort, frame(p9::kNoTag, p9::Tversion{.msize = 1 << 20, .version = p9::kVersion9P2000L})).ok());
    ASSERT_EQ(replies(g, port, 1).size(), 1u);
    ASSERT_TRUE(g.write(port, k9pPort, frame(1, p9::Tattach{.fid = kRoot, .afid = p9::kNoFid, .uname = "", .aname = "ro"})).ok());
    ASSERT_TRUE(g.write(port, k9pPort, frame(2, walk_to("big.bin"))).ok());
    ASSERT_TRUE(g.write(port, k9pPort, frame(3, p9::Tlopen{.fid = 1, .flags = O_RDONLY})).ok());
    ASSERT_EQ(replies(g, port, 3).size(), 3u);
  }
  // 700 asks for 3 MiB in six reads and reads none of it.
  for (uint16_t i = 0; i < 6; i++)
    ASSERT_TRUE(g.write(700, k9pPort, frame(10 + i, p9::Tread{.fid = 1, .offset = i * 524288ull, .count = 524288})).ok());
  // 701 reads hello.txt meanwhile, many times over.
  for (int round = 0; round < 20; round++) {
    ASSERT_TRUE(g.write(701, k9pPort, frame(20, p9::Tread{.fid = 1, .offset = 0, .count = 4096})).ok());
    auto r = replies(g, 701, 1);
    ASSERT_EQ(r.size(), 1u);
    auto f = p9::decode_r(r[0]);
    ASSERT_TRUE(f.ok());
    auto* rr = std::get_if<p9::Rread>(&f->msg);
    ASSERT_TRUE(rr);
    EXPECT_EQ(rr->data.bytes.size(), 4096u);
  }
  // fsd sent 700 no more than the window its guest gave.
  for (int i = 0; i < 50; i++) (void)g.poll_once(10);
  EXPECT_LE(g.buffered(700, k9pPort), go.buf_alloc);
  EXPECT_GT(g.buffered(700, k9pPort), 0u);
  // Once it reads, every reply arrives whole and in order of the file.
  auto all = replies(g, 700, 6);
  ASSERT_EQ(all.size(), 6u);
  std::string got;
  for (auto& r : all) {
    auto f = p9::decode_r(r);
    ASSERT_TRUE(f.ok());
    auto* rr = std::get_if<p9::Rread>(&f->msg);
    ASSERT_TRUE(rr);
    got.append(reinterpret_cast<const char*>(rr->data.bytes.data()), rr->data.bytes.size());
  }
  EXPECT_TRUE(got == big_.substr(0, 6 * 524288));
}

TEST_F(VsockDevice, AGuestThatTakesNoReceiveBuffersStallsOnlyItself) {
  start_backend("other.sock");
  auto fe1 = frontend();
  auto fe2 = frontend("other.sock");
  ASSERT_TRUE(fe1 && fe2);
  VsockGuest::Options stingy;
  stingy.rx_buffers = 4;
  stingy.refill = false;
  VsockGuest g1(*fe1, stingy), g2(*fe2);
  g1.fill_rx();
  g2.fill_rx();
  // g1: RESPONSE takes one buffer; a 3 MiB read cannot fit the other three.
  ASSERT_TRUE(g1.connect(700, k9pPort).ok());
  ASSERT_TRUE(g1.write(700, k9pPort, frame(p9::kNoTag, p9::Tversion{.msize = 1 << 20, .version = p9::kVersion9P2000L})).ok());
  ASSERT_TRUE(g1.write(700, k9pPort, frame(1, p9::Tattach{.fid = kRoot, .afid = p9::kNoFid, .uname = "", .aname = "ro"})).ok());
  ASSERT_TRUE(g1.write(700, k9pPort, frame(2, walk_to("big.bin"))).ok());
  ASSERT_TRUE(g1.write(700, k9pPort, frame(3, p9::Tlopen{.fid = 1, .flags = O_RDONLY})).ok());
  ASSERT_TRUE(g1.write(700, k9pPort, frame(4, p9::Tread{.fid = 1, .offset = 0, .count = 1 << 19})).ok());
  // The other guest, on the same worker, is served all along.
  Mount m = mount(g2, 700);
  ASSERT_TRUE(m.client);
  ASSERT_TRUE(m.client->attach(kRoot, "ro").ok());
  ASSERT_TRUE(m.client->walk(kRoot, 1, "big.bin").ok());
  ASSERT_TRUE(m.client->lopen(1, O_RDONLY).ok());
  auto big = m.client->read_all(1);
  ASSERT_TRUE(big.ok());
  EXPECT_TRUE(*big == big_);
  // g1 got what its three buffers hold; given buffers again, it gets the rest.
  for (int i = 0; i < 20; i++) (void)g1.poll_once(10);
  EXPECT_LE(g1.buffered(700, k9pPort), 3u * 4096);
  g1.set_refill(true);
  g1.fill_rx();
  auto all = replies(g1, 700, 5);
  ASSERT_EQ(all.size(), 5u);
  auto f = p9::decode_r(all[4]);
  ASSERT_TRUE(f.ok());
  auto* rr = std::get_if<p9::Rread>(&f->msg);
  ASSERT_TRUE(rr);
  EXPECT_EQ(rr->data.bytes.size(), 1u << 19);
}

TEST_F(VsockDevice, HostilePacketsGetResetsOrNothing) {
  auto fe = frontend();
  ASSERT_TRUE(fe);
  VsockGuest g(*fe);
  g.fill_rx();
  // Data for a connection that does not exist: RST.
  g.send(g.header(800, k9pPort, vsock::Op::kRw), as_bytes("junk"));
  auto p = g.receive();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->h.op, static_cast<uint16_t>(vsock::Op::kRst));
  EXPECT_EQ(p->h.dst_port, 800u);
  // From another CID: dropped without a word.
  auto h = g.header(801, k9pPort, vsock::Op::kRequest);
  h.src_cid = 99;
  g.send(h);
  EXPECT_EQ(g.receive(300).error(), -ETIMEDOUT);
  // A header whose len is not the payload's: RST, and the connection is gone.
  ASSERT_TRUE(g.connect(700, k9pPort).ok());
  auto lie = g.header(700, k9pPort, vsock::Op::kRw);
  lie.len = 100;
  std::array<std::byte, vsock::kHeaderSize> raw;
  vsock::encode(lie, raw);
  uint64_t gpa = fe->alloc(raw.size() + 10);
  std::memcpy(fe->host(gpa), raw.data(), raw.size());
  VhostFrontend::Buf bufs[] = {{gpa, static_cast<uint32_t>(raw.size() + 10), false}};
  fe->publish(vsock::kTxQueue, fe->add_chain(vsock::kTxQueue, bufs));
  fe->kick(vsock::kTxQueue);
  auto rst = g.read(700, k9pPort);
  EXPECT_EQ(rst.error(), -ECONNRESET);
  // A chain too short for a header: dropped; the device goes on.
  uint64_t tiny = fe->alloc(8);
  VhostFrontend::Buf one[] = {{tiny, 8, false}};
  fe->publish(vsock::kTxQueue, fe->add_chain(vsock::kTxQueue, one));
  fe->kick(vsock::kTxQueue);
  EXPECT_TRUE(g.connect(702, k9pPort).ok());
  // A REQUEST flood past the connection cap: RSTs for the rest.
  size_t refused = 0;
  for (uint32_t port = 100; port < 140; port++)
    if (!g.connect(port, k9pPort)) refused++;
  EXPECT_GE(refused, 40u - vhost::VsockOptions{}.max_connections);
}

TEST_F(VsockDevice, AFrontEndThatGoesMidTransferFreesItsConnections) {
  {
    auto fe = frontend();
    ASSERT_TRUE(fe);
    VsockGuest g(*fe);
    g.fill_rx();
    ASSERT_TRUE(g.connect(700, k9pPort).ok());
    ASSERT_TRUE(g.write(700, k9pPort, frame(p9::kNoTag, p9::Tversion{.msize = 1 << 20, .version = p9::kVersion9P2000L})).ok());
    ASSERT_TRUE(g.write(700, k9pPort, frame(1, p9::Tattach{.fid = kRoot, .afid = p9::kNoFid, .uname = "", .aname = "ro"})).ok());
    ASSERT_TRUE(g.write(700, k9pPort, frame(2, walk_to("big.bin"))).ok());
    ASSERT_TRUE(g.write(700, k9pPort, frame(3, p9::Tlopen{.fid = 1, .flags = O_RDONLY})).ok());
    ASSERT_TRUE(g.write(700, k9pPort, frame(4, p9::Tread{.fid = 1, .offset = 0, .count = 1 << 20})).ok());
    ASSERT_TRUE(g.read(700, k9pPort).ok());
  }  // gone, with a megabyte on its way
  auto fe = frontend();
  ASSERT_TRUE(fe);
  VsockGuest g(*fe);
  g.fill_rx();
  Mount m = mount(g, 700);
  ASSERT_TRUE(m.client);
  ASSERT_TRUE(m.client->attach(kRoot, "ro").ok());
  ASSERT_TRUE(m.client->walk(kRoot, 1, "hello.txt").ok());
  ASSERT_TRUE(m.client->lopen(1, O_RDONLY).ok());
  auto hello = m.client->read_all(1);
  ASSERT_TRUE(hello.ok());
  EXPECT_EQ(*hello, "hello, world\n");
}

}  // namespace
}  // namespace fsd::testing
