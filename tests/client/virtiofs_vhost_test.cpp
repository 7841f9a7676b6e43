// fsd's virtio-fs device driven through vhost-user by the project's own
// front-end, as QEMU and a guest driver would: FUSE over virtqueues with
// data moving in guest memory, and the hostile cases a guest or a broken
// front-end can produce. fsd must stay alive and serving throughout.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/inotify.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <cstring>
#include <set>

#include "fsd/client/vhost_frontend.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using frontend::VhostFrontend;
namespace vu = vhost_user;

template <class T>
std::vector<std::byte> args(const T& v, std::string_view name = {}, std::string_view name2 = {}) {
  std::vector<std::byte> out(sizeof v);
  std::memcpy(out.data(), &v, sizeof v);
  for (auto n : {name, name2}) {
    if (n.data() == nullptr) continue;
    for (char c : n) out.push_back(static_cast<std::byte>(c));
    out.push_back(std::byte{0});
  }
  return out;
}
std::vector<std::byte> name_arg(std::string_view name) {
  std::vector<std::byte> out;
  for (char c : name) out.push_back(static_cast<std::byte>(c));
  out.push_back(std::byte{0});
  return out;
}
template <class T>
T as(const std::vector<std::byte>& body) {
  T v{};
  std::memcpy(&v, body.data(), std::min(sizeof v, body.size()));
  return v;
}

class Virtiofs : public ::testing::Test {
 protected:
  void SetUp() override {
    big_ = random_bytes(3 * 1024 * 1024 + 333, 5);
    write_file(tmp_.path() / "ro/big.bin", big_);
    write_file(tmp_.path() / "ro/small.txt", "small file\n");
    write_file(tmp_.path() / "ro/dir/inner.txt", "inner\n");
    std::filesystem::create_directories(tmp_.path() / "rw");
    ro_sock_ = (tmp_.path() / "ro.sock").string();
    rw_sock_ = (tmp_.path() / "rw.sock").string();
    fsd_ = std::make_unique<FsdProcess>(FsdProcess::Options{
        .args = {"--export", "ro=" + (tmp_.path() / "ro").string() + ",ro", "--export",
                 "rw=" + (tmp_.path() / "rw").string() + ",cache=never", "--virtiofs-socket", "ro=" + ro_sock_,
                 "--virtiofs-socket", "rw=" + rw_sock_}});
    fsd_->wait_for_log("listening on " + rw_sock_);
  }
  void TearDown() override {
    if (fsd_) {
      EXPECT_EQ(fsd_->stop(), 0) << fsd_->log();
    }
  }

  std::unique_ptr<VhostFrontend> start(const std::string& sock) {
    auto f = VhostFrontend::connect(sock);
    EXPECT_TRUE(f.ok()) << std::strerror(-f.error());
    if (!f) return nullptr;
    auto n = (*f)->negotiate();
    EXPECT_TRUE(n.ok()) << std::strerror(-n.error()) << fsd_->log();
    auto init = (*f)->fuse_init();
    EXPECT_TRUE(init.ok() && init->error == 0);
    return std::move(*f);
  }
  uint64_t lookup(VhostFrontend& f, uint64_t parent, std::string_view name, int* err = nullptr) {
    auto r = f.fuse_lookup(parent, name);
    EXPECT_TRUE(r.ok());
    if (err) *err = r->error;
    return r->error ? 0 : as<fuse_entry_out>(r->body).nodeid;
  }
  // FUSE_CREATE of `name` in the root, opened read-write: its entry and handle.
  std::pair<fuse_entry_out, fuse_open_out> create(VhostFrontend& f, std::string_view name) {
    fuse_create_in cr{};
    cr.flags = O_RDWR | O_CREAT;
    cr.mode = 0644;
    auto c = f.fuse(1, FUSE_CREATE, FUSE_ROOT_ID, args(cr, name), 4096);
    EXPECT_TRUE(c.ok() && c->error == 0);
    std::pair<fuse_entry_out, fuse_open_out> out{};
    if (c.ok() && c->error == 0) {
      std::memcpy(&out.first, c->body.data(), sizeof out.first);
      std::memcpy(&out.second, c->body.data() + sizeof out.first, sizeof out.second);
    }
    return out;
  }
  // A request that still gets an answer shows the device is alive.
  void ExpectStillServes(VhostFrontend& f) {
    int err = -1;
    EXPECT_NE(lookup(f, FUSE_ROOT_ID, "small.txt", &err), 0u);
    EXPECT_EQ(err, 0);
  }

  TempDir tmp_;
  std::string big_, ro_sock_, rw_sock_;
  std::unique_ptr<FsdProcess> fsd_;
};

TEST_F(Virtiofs, InitNegotiatesLargeRequests) {
  auto f = VhostFrontend::connect(ro_sock_);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->negotiate().ok());
  EXPECT_TRUE((*f)->acked_features() & vu::kFRingEventIdx);
  auto init = (*f)->fuse_init();
  ASSERT_TRUE(init.ok());
  ASSERT_EQ(init->error, 0);
  auto out = as<fuse_init_out>(init->body);
  EXPECT_EQ(out.major, 7u);
  EXPECT_GE(out.max_write, 1u << 20);
  EXPECT_EQ(out.max_pages, 256);
  EXPECT_TRUE(out.flags & FUSE_DO_READDIRPLUS);
  EXPECT_TRUE(out.flags & FUSE_CACHE_SYMLINKS);  // ro export: cache=always
}

TEST_F(Virtiofs, ReadsStraightIntoGuestBuffers) {
  auto f = start(ro_sock_);
  ASSERT_TRUE(f);
  uint64_t node = lookup(*f, FUSE_ROOT_ID, "big.bin");
  ASSERT_NE(node, 0u);
  auto attr = f->fuse(1, FUSE_GETATTR, node, args(fuse_getattr_in{}), 4096);
  ASSERT_TRUE(attr.ok());
  EXPECT_EQ(as<fuse_attr_out>(attr->body).attr.size, big_.size());
  fuse_open_in oi{};
  oi.flags = O_RDONLY;
  auto open = f->fuse(1, FUSE_OPEN, node, args(oi), 4096);
  ASSERT_TRUE(open.ok() && open->error == 0);
  auto oo = as<fuse_open_out>(open->body);
  EXPECT_TRUE(oo.open_flags & FOPEN_KEEP_CACHE);
  // 1 MiB reads into 4 KiB guest pages: 256 descriptors, in an indirect table.
  std::string got;
  for (uint64_t off = 0; off < big_.size(); off += 1 << 20) {
    fuse_read_in ri{};
    ri.fh = oo.fh;
    ri.offset = off;
    ri.size = 1 << 20;
    auto r = f->fuse(1, FUSE_READ, node, args(ri), sizeof(fuse_out_header) + (1 << 20), {}, 4096, true);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->error, 0);
    got.append(reinterpret_cast<const char*>(r->body.data()), r->body.size());
  }
  EXPECT_TRUE(got == big_);
  // A direct chain of 64 KiB in 16 pieces at an odd offset.
  fuse_read_in ri{};
  ri.fh = oo.fh;
  ri.offset = 12345;
  ri.size = 65536;
  auto r = f->fuse(1, FUSE_READ, node, args(ri), sizeof(fuse_out_header) + 65536, {}, 4096);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->body.size(), 65536u);
  EXPECT_EQ(std::memcmp(r->body.data(), big_.data() + 12345, 65536), 0);
  fuse_release_in rel{};
  rel.fh = oo.fh;
  EXPECT_EQ(f->fuse(1, FUSE_RELEASE, node, args(rel), 4096)->error, 0);
  // FORGET goes on the hiprio queue and gets no reply.
  fuse_forget_in fg{1};
  auto forget = f->fuse(0, FUSE_FORGET, node, args(fg), 4096);
  ASSERT_TRUE(forget.ok());
  EXPECT_EQ(forget->used_len, 0u);
}

TEST_F(Virtiofs, ReaddirplusAndReadOnlyRefusals) {
  auto f = start(ro_sock_);
  ASSERT_TRUE(f);
  fuse_open_in oi{};
  auto od = f->fuse(1, FUSE_OPENDIR, FUSE_ROOT_ID, args(oi), 4096);
  ASSERT_TRUE(od.ok() && od->error == 0);
  fuse_read_in ri{};
  ri.fh = as<fuse_open_out>(od->body).fh;
  ri.size = 8192;
  auto rd = f->fuse(1, FUSE_READDIRPLUS, FUSE_ROOT_ID, args(ri), 8192 + 16);
  ASSERT_TRUE(rd.ok() && rd->error == 0);
  std::set<std::string> names;
  for (size_t pos = 0; pos + FUSE_NAME_OFFSET_DIRENTPLUS <= rd->body.size();) {
    fuse_direntplus d;
    std::memcpy(&d, rd->body.data() + pos, sizeof d);
    names.emplace(reinterpret_cast<const char*>(rd->body.data() + pos + FUSE_NAME_OFFSET_DIRENTPLUS), d.dirent.namelen);
    pos += FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET_DIRENTPLUS + d.dirent.namelen);
  }
  EXPECT_EQ(names, (std::set<std::string>{".", "..", "big.bin", "small.txt", "dir"}));
  fuse_mkdir_in mk{0755, 0};
  EXPECT_EQ(f->fuse(1, FUSE_MKDIR, FUSE_ROOT_ID, args(mk, "new"), 4096)->error, -EROFS);
  fuse_create_in cr{};
  cr.flags = O_WRONLY | O_CREAT;
  cr.mode = 0644;
  EXPECT_EQ(f->fuse(1, FUSE_CREATE, FUSE_ROOT_ID, args(cr, "new"), 4096)->error, -EROFS);
  uint64_t small = lookup(*f, FUSE_ROOT_ID, "small.txt");
  fuse_open_in ow{};
  ow.flags = O_WRONLY;
  EXPECT_EQ(f->fuse(1, FUSE_OPEN, small, args(ow), 4096)->error, -EROFS);
  EXPECT_EQ(f->fuse(1, FUSE_UNLINK, FUSE_ROOT_ID, name_arg("small.txt"), 4096)->error, -EROFS);
  EXPECT_TRUE(std::filesystem::exists(tmp_.path() / "ro/small.txt"));
}

TEST_F(Virtiofs, WritesComeStraightFromGuestBuffers) {
  auto f = start(rw_sock_);
  ASSERT_TRUE(f);
  auto [e, o] = create(*f, "written.bin");
  ASSERT_NE(e.nodeid, 0u);
  EXPECT_TRUE(o.open_flags & FOPEN_DIRECT_IO);  // cache=never
  std::string data = random_bytes(300 * 1024, 8);
  fuse_write_in wi{};
  wi.fh = o.fh;
  wi.size = static_cast<uint32_t>(data.size());
  auto w = f->fuse(1, FUSE_WRITE, e.nodeid, args(wi), 4096, std::as_bytes(std::span(data)));
  ASSERT_TRUE(w.ok());
  ASSERT_EQ(w->error, 0);
  EXPECT_EQ(as<fuse_write_out>(w->body).size, data.size());
  EXPECT_TRUE(read_file(tmp_.path() / "rw/written.bin") == data);
  EXPECT_EQ(f->fuse(1, FUSE_UNLINK, FUSE_ROOT_ID, name_arg("written.bin"), 4096)->error, 0);
  EXPECT_FALSE(std::filesystem::exists(tmp_.path() / "rw/written.bin"));
}

// A guest's `sync -f` (FUSE_SYNCFS) reaches the host's file system; fsync
// of an open file likewise.
TEST_F(Virtiofs, SyncfsAndFsyncReachTheHost) {
  auto f = start(rw_sock_);
  ASSERT_TRUE(f);
  auto s = f->fuse(1, FUSE_SYNCFS, FUSE_ROOT_ID, args(fuse_syncfs_in{}), 4096);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->error, 0);
  auto [e, o] = create(*f, "synced.bin");
  ASSERT_NE(e.nodeid, 0u);
  fuse_fsync_in fi{};
  fi.fh = o.fh;
  auto y = f->fuse(1, FUSE_FSYNC, e.nodeid, args(fi), 4096);
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(y->error, 0);
}

// ---- hostile guests and front-ends

TEST_F(Virtiofs, RefusesChainsOutsideGuestMemoryOrLooping) {
  auto f = start(ro_sock_);
  ASSERT_TRUE(f);
  using B = VhostFrontend::Buf;
  // a buffer far outside guest memory
  B outside[] = {{0x10, 64, false}, {0x4000'0000'0000, 4096, true}};
  uint16_t h = f->add_chain(1, outside);
  f->publish(1, h);
  f->kick(1);
  auto u = f->wait_used(1);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->len, 0u);
  ExpectStillServes(*f);
  // a chain that loops
  uint64_t buf = f->alloc(64);
  B two[] = {{buf, 64, false}, {buf, 64, false}};
  h = f->add_chain(1, two);
  f->desc(1)[(h + 1) % f->queue_size()].flags = virtio::kDescNext;
  f->desc(1)[(h + 1) % f->queue_size()].next = h;
  f->publish(1, h);
  f->kick(1);
  u = f->wait_used(1);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->len, 0u);
  ExpectStillServes(*f);
  // a next index beyond the queue
  h = f->add_chain(1, two);
  f->desc(1)[h].next = 60000;
  f->publish(1, h);
  f->kick(1);
  ASSERT_TRUE(f->wait_used(1).ok());
  ExpectStillServes(*f);
}

TEST_F(Virtiofs, TruncatedFuseRequestsGetNoReply) {
  auto f = start(ro_sock_);
  ASSERT_TRUE(f);
  using B = VhostFrontend::Buf;
  uint64_t in = f->alloc(64), out = f->alloc(4096);
  fuse_in_header h{};
  h.len = 200;  // claims more than the buffer holds
  h.opcode = FUSE_LOOKUP;
  std::memcpy(f->host(in), &h, sizeof h);
  for (uint32_t len : {10u, 40u}) {
    B chain[] = {{in, len, false}, {out, 4096, true}};
    uint16_t head = f->add_chain(1, chain);
    f->publish(1, head);
    f->kick(1);
    auto u = f->wait_used(1);
    ASSERT_TRUE(u.ok());
    EXPECT_EQ(u->len, 0u) << "readable length " << len;
  }
  // a reply buffer too small for even the reply header
  auto args_ = name_arg("small.txt");
  fuse_in_header ok{};
  ok.len = static_cast<uint32_t>(sizeof ok + args_.size());
  ok.opcode = FUSE_LOOKUP;
  ok.nodeid = FUSE_ROOT_ID;
  std::memcpy(f->host(in), &ok, sizeof ok);
  std::memcpy(f->host(in) + sizeof ok, args_.data(), args_.size());
  B tiny[] = {{in, ok.len, false}, {out, 8, true}};
  uint16_t head = f->add_chain(1, tiny);
  f->publish(1, head);
  f->kick(1);
  auto u = f->wait_used(1);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->len, 0u);
  ExpectStillServes(*f);
}

TEST_F(Virtiofs, CorruptAvailRingStopsOnlyThatQueue) {
  {
    auto f = start(ro_sock_);
    ASSERT_TRUE(f);
    f->set_avail_idx(1, 1000);  // more entries than the ring holds
    f->kick(1);
    EXPECT_EQ(f->wait_used(1, 500).error(), -ETIMEDOUT);
  }
  // The other device is unaffected, and a new front-end gets a fresh device.
  auto rw = start(rw_sock_);
  ASSERT_TRUE(rw);
  int err = -1;
  lookup(*rw, FUSE_ROOT_ID, "nothing-here", &err);
  EXPECT_EQ(err, -ENOENT);
  auto again = start(ro_sock_);
  ASSERT_TRUE(again);
  ExpectStillServes(*again);
}

TEST_F(Virtiofs, MalformedFrontEndMessagesDisconnect) {
  auto f = VhostFrontend::connect(ro_sock_);
  ASSERT_TRUE(f.ok());
  // SET_MEM_TABLE with one region but no fd.
  vu::MemTable t{};
  t.nregions = 1;
  t.regions[0] = vu::MemRegion{0, 4096, 0x1000, 0};
  (void)(*f)->send(vu::Request::SetMemTable, t);
  auto r = (*f)->send(vu::Request::GetFeatures, vu::None{}, {}, false, true);
  EXPECT_FALSE(r.ok());  // fsd hung up
  // A queue index out of range is refused through REPLY_ACK, not fatal.
  auto g = start(ro_sock_);
  ASSERT_TRUE(g);
  auto bad = g->send(vu::Request::SetVringNum, vu::VringState{1000, 256}, {}, true);
  ASSERT_TRUE(bad.ok());
  EXPECT_NE(std::get<uint64_t>(bad->payload), 0u);
  ExpectStillServes(*g);
}

// A memfd shorter than the region it is announced as would map pages that
// fault (SIGBUS) when fsd touches them: the table is refused, the front-end
// dropped, and fsd serves the next one.
TEST_F(Virtiofs, ShortMemfdIsRefusedAndFsdLives) {
  {
    auto f = VhostFrontend::connect(ro_sock_, {.memory = 16 << 20, .memfd_size = 64 << 10});
    ASSERT_TRUE(f.ok());
    EXPECT_FALSE((*f)->negotiate().ok()) << "a 64 KiB memfd announced as 16 MiB was accepted";
  }
  auto f = start(ro_sock_);
  ASSERT_TRUE(f);
  ExpectStillServes(*f);
  EXPECT_NE(fsd_->log().find("needs 16777216 bytes of its fd, which has 65536"), std::string::npos) << fsd_->log();
}

// QEMU sends the memory table again when guest memory changes (hotplug):
// the running queues move to the new mapping, and requests keep working.
TEST_F(Virtiofs, MemoryTableUpdatesWhileQueuesRun) {
  auto f = start(ro_sock_);
  ASSERT_TRUE(f);
  ExpectStillServes(*f);
  for (int i = 0; i < 3; i++) {
    ASSERT_TRUE(f->set_mem_table().ok()) << fsd_->log();
    ExpectStillServes(*f);
  }
  EXPECT_EQ(::kill(fsd_->pid(), 0), 0) << "fsd died:\n" << fsd_->log();
}

TEST_F(Virtiofs, FrontEndVanishingMidRequest) {
  for (int round = 0; round < 3; round++) {
    auto f = start(ro_sock_);
    ASSERT_TRUE(f);
    uint64_t node = lookup(*f, FUSE_ROOT_ID, "big.bin");
    fuse_open_in oi{};
    auto open = f->fuse(1, FUSE_OPEN, node, args(oi), 4096);
    ASSERT_TRUE(open.ok());
    // Queue a 1 MiB read and hang up without waiting for it.
    fuse_read_in ri{};
    ri.fh = as<fuse_open_out>(open->body).fh;
    ri.size = 1 << 20;
    fuse_in_header h{};
    h.len = sizeof h + sizeof ri;
    h.opcode = FUSE_READ;
    h.nodeid = node;
    uint64_t in = f->alloc(sizeof h + sizeof ri), out = f->alloc((1 << 20) + 16);
    std::memcpy(f->host(in), &h, sizeof h);
    std::memcpy(f->host(in) + sizeof h, &ri, sizeof ri);
    VhostFrontend::Buf chain[] = {{in, static_cast<uint32_t>(sizeof h + sizeof ri), false}, {out, (1 << 20) + 16, true}};
    uint16_t head = f->add_chain(1, chain);
    f->publish(1, head);
    f->kick(1);
    f->disconnect();
  }
  auto f = start(ro_sock_);
  ASSERT_TRUE(f);
  ExpectStillServes(*f);
}

// A device node inside an export does not open (FUSE_OPEN, or FUSE_CREATE
// of its name without O_EXCL) unless the export says ",devices": before,
// fsd opened the host's device, as root, for any guest (CVE-2020-35517's
// class), on read-only exports too.
TEST_F(Virtiofs, DeviceNodesInAnExportDoNotOpen) {
  for (const char* d : {"ro", "rw"}) ASSERT_EQ(::mknod((tmp_.path() / d / "zero").c_str(), S_IFCHR | 0666, makedev(1, 5)), 0);
  for (auto* sock : {&ro_sock_, &rw_sock_}) {
    auto f = start(*sock);
    ASSERT_TRUE(f);
    uint64_t node = lookup(*f, FUSE_ROOT_ID, "zero");
    ASSERT_NE(node, 0u);
    fuse_open_in oi{};
    oi.flags = O_RDONLY;
    auto open = f->fuse(1, FUSE_OPEN, node, args(oi), 4096);
    ASSERT_TRUE(open.ok());
    EXPECT_EQ(open->error, -EACCES) << *sock;
  }
  auto f = start(rw_sock_);
  fuse_create_in cr{};
  cr.flags = O_RDWR | O_CREAT;
  cr.mode = 0644;
  auto c = f->fuse(1, FUSE_CREATE, FUSE_ROOT_ID, args(cr, "zero"), 4096);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->error, -EACCES);
  EXPECT_NE(lookup(*f, FUSE_ROOT_ID, "zero"), 0u);
}

// Kick, call and error fds must be eventfds: a kick fd that is always
// readable (a pipe with data in it) made a worker spin a core. Such a
// front-end is told why in the log and dropped; the next one is served.
TEST_F(Virtiofs, KickCallAndErrorFdsMustBeEventfds) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  Fd rd(p[0]), wr(p[1]);
  ASSERT_EQ(::write(wr.get(), "x", 1), 1);  // readable for good
  Fd file(::memfd_create("not-an-eventfd", MFD_CLOEXEC));
  ASSERT_TRUE(file);
  struct Case {
    vu::Request request;
    int fd;
    const char* what;
  };
  for (auto c : {Case{vu::Request::SetVringKick, rd.get(), "kick"}, Case{vu::Request::SetVringCall, file.get(), "call"},
                 Case{vu::Request::SetVringErr, file.get(), "error"}}) {
    SCOPED_TRACE(c.what);
    auto f = start(ro_sock_);
    ASSERT_TRUE(f);
    (void)f->send(c.request, vu::VringFile{1, true}, {c.fd});
    auto r = f->send(vu::Request::GetFeatures, vu::None{}, {}, false, true);
    EXPECT_FALSE(r.ok()) << "fsd kept a front-end whose " << c.what << " fd is not an eventfd";
    fsd_->wait_for_log(std::string("front-end's ") + c.what + " fd for queue 1 is not an eventfd");
  }
  auto f = start(ro_sock_);
  ASSERT_TRUE(f);
  ExpectStillServes(*f);
}

// A front-end shares its call eventfd with fsd: it can fill the counter and
// make the fd blocking again, so that fsd's write to it would wait for ever
// (before: holding the queue's lock, on a worker that other devices share,
// and SIGTERM no longer ended fsd). With one worker for two devices, the
// other device is still served, the hostile one's replies still reach its
// used ring, and SIGTERM still ends fsd.
TEST_F(Virtiofs, AFullBlockingCallEventfdHoldsNoWorker) {
  fsd_.reset();
  std::string a_sock = (tmp_.path() / "a.sock").string(), b_sock = (tmp_.path() / "b.sock").string();
  fsd_ = std::make_unique<FsdProcess>(FsdProcess::Options{
      .args = {"--export", "ro=" + (tmp_.path() / "ro").string() + ",ro", "--threads", "1", "--poll-us", "0",
               "--virtiofs-socket", "ro=" + a_sock, "--virtiofs-socket", "ro=" + b_sock}});
  fsd_->wait_for_log("listening on " + b_sock);
  // Without EVENT_IDX a driver wants an interrupt for every reply, so fsd
  // writes to the call eventfd each time.
  auto fa = VhostFrontend::connect(a_sock, {.features = vu::kFVersion1 | vu::kFProtocolFeatures});
  ASSERT_TRUE(fa.ok());
  auto a = std::move(*fa);
  ASSERT_TRUE(a->negotiate().ok()) << fsd_->log();
  ASSERT_TRUE(a->fuse_init().ok());
  auto b = start(b_sock);
  ASSERT_TRUE(b);
  // Fill the counter (while the fd is still non-blocking: fsd may signal
  // meanwhile), then make the fd blocking again.
  int call = a->call_fd(1);
  uint64_t full = 0xfffffffffffffffe, drained;
  for (;;) {
    (void)!::read(call, &drained, sizeof drained);
    if (::write(call, &full, sizeof full) == 8) break;
    ASSERT_EQ(errno, EAGAIN);
  }
  ASSERT_EQ(::fcntl(call, F_SETFL, 0), 0);
  for (int i = 0; i < 3; i++) {
    std::string arg = std::string("small.txt") + '\0';
    auto p = a->submit_fuse(1, FUSE_LOOKUP, FUSE_ROOT_ID, std::as_bytes(std::span(arg)), 4096);
    auto u = a->poll_used(1, 5000);
    ASSERT_TRUE(u.ok()) << "the hostile front-end's request was never returned\n" << fsd_->log();
    auto r = a->reply_of(p, *u);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->error, 0);
    // The other device, on the same worker, is served meanwhile.
    auto other = b->fuse_lookup(FUSE_ROOT_ID, "small.txt");
    ASSERT_TRUE(other.ok()) << "the other device stalled: " << std::strerror(-other.error()) << "\n" << fsd_->log();
    EXPECT_EQ(other->error, 0);
  }
  fsd_->wait_for_log("a write to the front-end's call eventfd blocked");
  auto t0 = std::chrono::steady_clock::now();
  ::kill(fsd_->pid(), SIGTERM);
  auto status = fsd_->wait_exit(std::chrono::seconds(5));
  ASSERT_TRUE(status.has_value()) << "SIGTERM did not end fsd\n" << fsd_->log();
  EXPECT_EQ(*status, 0) << fsd_->log();
  std::printf("  fsd ended %lld ms after SIGTERM\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - t0)
                                         .count()));
}

namespace fs = std::filesystem;

// A fuse_secctx_header record with one context, as Linux writes it.
std::vector<std::byte> security_context_record(std::string_view name, std::string_view value) {
  std::vector<std::byte> out(sizeof(fuse_secctx_header) + sizeof(fuse_secctx));
  fuse_secctx c{.size = static_cast<uint32_t>(value.size()), .padding = 0};
  std::memcpy(out.data() + sizeof(fuse_secctx_header), &c, sizeof c);
  for (char ch : name) out.push_back(static_cast<std::byte>(ch));
  out.push_back(std::byte{0});
  for (char ch : value) out.push_back(static_cast<std::byte>(ch));
  out.resize((out.size() + 7) / 8 * 8);
  fuse_secctx_header h{.size = static_cast<uint32_t>(out.size()), .nr_secctx = 1};
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}
std::vector<std::byte> joined(std::vector<std::byte> a, const std::vector<std::byte>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
std::string xattr_of(const fs::path& p, const char* name) {
  char v[256];
  ssize_t n = ::lgetxattr(p.c_str(), name, v, sizeof v);
  return n < 0 ? std::string("(") + std::strerror(errno) + ")" : std::string(v, static_cast<size_t>(n));
}
// The directory events inotify saw, as "EVENT name" lines.
std::vector<std::string> events_of(int inotify) {
  std::vector<std::string> out;
  alignas(inotify_event) char buf[8192];
  for (;;) {
    ssize_t n = ::read(inotify, buf, sizeof buf);
    if (n <= 0) break;
    for (char* p = buf; p < buf + n;) {
      auto* e = reinterpret_cast<inotify_event*>(p);
      std::string name = e->len ? e->name : "";
      if (name.starts_with(".fsd-label.")) name = "TEMP";
      const char* what = e->mask & IN_CREATE ? "create" : e->mask & IN_ATTRIB ? "attrib" : e->mask & IN_MOVED_FROM ? "from"
                       : e->mask & IN_MOVED_TO ? "to" : nullptr;
      if (what) out.push_back(std::string(what) + " " + name);
      p += sizeof(inotify_event) + e->len;
    }
  }
  return out;
}
bool has_temporaries(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with(".fsd-label.")) return true;
  return false;
}

// --security-label (the export option security-label): FUSE_SECURITY_CTX
// is agreed, and each creation's label is on the host file (here the real
// security.selinux, on a host without SELinux; root may set it), from a
// 7.38 extension or an older client's trailing record. Labels other than
// the LSMs' are refused and nothing is made; an existing name is opened
// as it is; no temporary name is left.
TEST(VirtiofsLabels, EachNewFileCarriesItsLabelFromTheStart) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: the host's security.* xattrs need CAP_SYS_ADMIN";
  TempDir tmp;
  fs::path dir = tmp.path() / "rw";
  fs::create_directories(dir);
  std::string sock = (tmp.path() / "vfs.sock").string();
  FsdProcess fsd({.args = {"--export", "rw=" + dir.string() + ",security-label", "--virtiofs-socket", "rw=" + sock}});
  fsd.wait_for_log("listening on " + sock);
  auto f = VhostFrontend::connect(sock);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->negotiate().ok());
  auto init = (*f)->fuse_init();
  ASSERT_TRUE(init.ok() && init->error == 0);
  EXPECT_TRUE(as<fuse_init_out>(init->body).flags2 & (FUSE_SECURITY_CTX >> 32));

  const std::string label = "system_u:object_r:container_file_t:s0:c1,c2";
  auto ctx = security_context_record("security.selinux", label);
  uint16_t units = static_cast<uint16_t>(ctx.size() / 8);
  fuse_create_in cr{.flags = O_RDWR | O_CREAT | O_EXCL, .mode = 0100644, .umask = 022, .open_flags = 0};
  Fd watch(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  ASSERT_TRUE(watch);
  ASSERT_GE(::inotify_add_watch(watch.get(), dir.c_str(), IN_CREATE | IN_ATTRIB | IN_MOVE), 0);
  (*f)->extensions_in_next(units);
  auto c = (*f)->fuse(1, FUSE_CREATE, FUSE_ROOT_ID, joined(args(cr, "file"), ctx), 4096);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->error, 0);
  EXPECT_EQ(xattr_of(dir / "file", "security.selinux"), label);
  // The name "file" appears only once the label is on: never created bare.
  EXPECT_EQ(events_of(watch.get()), (std::vector<std::string>{"create TEMP", "attrib TEMP", "from TEMP", "to file"}));

  fuse_mkdir_in mk{.mode = 0755, .umask = 022};
  auto m = (*f)->fuse(1, FUSE_MKDIR, FUSE_ROOT_ID, joined(args(mk, "dir"), ctx), 4096);  // an older client's form
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->error, 0);
  EXPECT_EQ(xattr_of(dir / "dir", "security.selinux"), label);
  EXPECT_TRUE(fs::is_directory(dir / "dir"));

  (*f)->extensions_in_next(units);
  auto sl = (*f)->fuse(1, FUSE_SYMLINK, FUSE_ROOT_ID, joined(joined(name_arg("link"), name_arg("file")), ctx), 4096);
  ASSERT_TRUE(sl.ok());
  EXPECT_EQ(sl->error, 0);
  EXPECT_EQ(xattr_of(dir / "link", "security.selinux"), label);
  EXPECT_EQ(fs::read_symlink(dir / "link"), "file");

  fuse_mknod_in mn{.mode = S_IFIFO | 0644, .rdev = 0, .umask = 022, .padding = 0};
  (*f)->extensions_in_next(units);
  auto n = (*f)->fuse(1, FUSE_MKNOD, FUSE_ROOT_ID, joined(args(mn, "fifo"), ctx), 4096);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->error, 0);
  EXPECT_EQ(xattr_of(dir / "fifo", "security.selinux"), label);

  // Another name than an LSM's: refused, nothing made.
  auto trusted = security_context_record("trusted.overlay.opaque", "y");
  (*f)->extensions_in_next(static_cast<uint16_t>(trusted.size() / 8));
  auto t = (*f)->fuse(1, FUSE_MKDIR, FUSE_ROOT_ID, joined(args(mk, "bad"), trusted), 4096);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->error, -EOPNOTSUPP);
  EXPECT_FALSE(fs::exists(dir / "bad"));

  // A name that exists: O_EXCL refuses it, else it is opened unchanged.
  write_file(dir / "host-made", "x");
  (*f)->extensions_in_next(units);
  auto excl = (*f)->fuse(1, FUSE_CREATE, FUSE_ROOT_ID, joined(args(cr, "host-made"), ctx), 4096);
  ASSERT_TRUE(excl.ok());
  EXPECT_EQ(excl->error, -EEXIST);
  cr.flags = O_RDWR | O_CREAT;
  (*f)->extensions_in_next(units);
  auto open = (*f)->fuse(1, FUSE_CREATE, FUSE_ROOT_ID, joined(args(cr, "host-made"), ctx), 4096);
  ASSERT_TRUE(open.ok());
  EXPECT_EQ(open->error, 0);
  EXPECT_EQ(xattr_of(dir / "host-made", "security.selinux"), "(" + std::string(std::strerror(ENODATA)) + ")");
  EXPECT_FALSE(has_temporaries(dir));
  EXPECT_EQ(fsd.stop(), 0) << fsd.log();
}

// Labels through the xattr map land under the host's name; an export whose
// map refuses them, or whose host cannot hold them, does not start.
TEST(VirtiofsLabels, MappedLabelsAndExportsThatCannotHoldThem) {
  TempDir tmp;
  fs::path dir = tmp.path() / "rw";
  fs::create_directories(dir);
  std::string sock = (tmp.path() / "vfs.sock").string();
  {
    FsdProcess fsd({.args = {"--export", "rw=" + dir.string() + ",security-label", "--xattrmap",
                             ":map:security.:user.virtiofs.:", "--virtiofs-socket", "rw=" + sock}});
    fsd.wait_for_log("listening on " + sock);
    auto f = VhostFrontend::connect(sock);
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->negotiate().ok());
    ASSERT_TRUE((*f)->fuse_init().ok());
    auto ctx = security_context_record("security.SMACK64", "_");
    fuse_mkdir_in mk{.mode = 0755, .umask = 022};
    (*f)->extensions_in_next(static_cast<uint16_t>(ctx.size() / 8));
    auto m = (*f)->fuse(1, FUSE_MKDIR, FUSE_ROOT_ID, joined(args(mk, "dir"), ctx), 4096);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->error, 0);
    EXPECT_EQ(xattr_of(dir / "dir", "user.virtiofs.security.SMACK64"), "_");
    EXPECT_EQ(fsd.stop(), 0) << fsd.log();
  }
  FsdProcess refused({.args = {"--export", "rw=" + dir.string() + ",security-label", "--xattrmap",
                               ":bad:all:security.:: :ok:all:::", "--virtiofs-socket", "rw=" + sock}});
  auto status = refused.wait_exit();
  ASSERT_TRUE(status.has_value()) << refused.log();
  EXPECT_NE(*status, 0);
  EXPECT_NE(refused.log().find("export 'rw': security-label: the export's xattrmap refuses security.selinux"),
            std::string::npos) << refused.log();
  EXPECT_FALSE(has_temporaries(dir));
}

}  // namespace
}  // namespace fsd::testing
