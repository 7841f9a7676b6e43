// The 9P2000.L server over a real unix socket, in process, on a temp tree:
// results are compared with what the host says about the same files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <atomic>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include "fsd/client/p9_client.h"
#include "fsd/p9/session.h"
#include "fsd/transport/socket_server.h"
#include "tests/support/test_support.h"

namespace fsd::p9 {
namespace {

using fsd::testing::random_bytes;
using fsd::testing::read_file;
using fsd::testing::TempDir;
using fsd::testing::write_file;
namespace fs = std::filesystem;

class P9Server : public ::testing::Test {
 protected:
  void SetUp() override {
    ro_ = tmp_.path() / "ro";
    rw_ = tmp_.path() / "rw";
    big_ = random_bytes(3 * 1024 * 1024 + 123, 1);
    write_file(ro_ / "hello.txt", "hello, world\n");
    write_file(ro_ / "big.bin", big_);
    write_file(ro_ / "empty", "");
    write_file(ro_ / "dir/nested.txt", "nested\n");
    fs::create_symlink("/etc", ro_ / "to-etc");
    fs::create_symlink("/etc/passwd", ro_ / "to-passwd");
    fs::create_symlink("hello.txt", ro_ / "rel-link");
    fs::create_directories(rw_);
    write_file(rw_ / "existing.txt", "old\n");

    ExportConfig ro{.tag = "ro", .path = ro_.string(), .read_only = true, .cache = CachePolicy::kAlways};
    ExportConfig rw{.tag = "rw", .path = rw_.string(), .read_only = false, .cache = CachePolicy::kNever};
    exports_.add(std::make_unique<Vfs>(ro, VfsOptions{}));
    exports_.add(std::make_unique<Vfs>(rw, VfsOptions{}));
    server_ = std::make_unique<SocketServer>(session_factory(exports_, SessionConfig{.max_msize = 1 << 20}), 2);
    sock_ = (tmp_.path() / "9p.sock").string();
    server_->listen(ListenAddress{.kind = ListenAddress::Kind::kUnix, .path = sock_});
    server_->start();
  }
  void TearDown() override { server_->stop(); }

  Client connect(uint32_t msize = 1 << 20) {
    auto c = Client::connect_unix(sock_);
    EXPECT_TRUE(c.ok()) << c.error();
    auto m = c->version(msize);
    EXPECT_TRUE(m.ok());
    return std::move(*c);
  }
  // A connected client with fid 1 attached to `aname`.
  Client attached(std::string_view aname) {
    Client c = connect();
    auto q = c.attach(kRoot, aname);
    EXPECT_TRUE(q.ok()) << q.error();
    return c;
  }
  static constexpr uint32_t kRoot = 1000;

  // A server of its own for one export, with options the fixture's lack.
  struct OwnServer {
    ExportSet exports;  // before server: it goes first
    std::unique_ptr<SocketServer> server;
    std::string sock;
    // A client with fid 1 attached to the export, as root.
    Client attached() const {
      auto c = Client::connect_unix(sock);
      EXPECT_TRUE(c.ok());
      EXPECT_TRUE(c->version(65536).ok());
      EXPECT_TRUE(c->attach(1, exports.all().front()->config().tag, 0).ok());
      return std::move(*c);
    }
  };
  std::unique_ptr<OwnServer> serve(ExportConfig config, VfsOptions options = {}) {
    auto s = std::make_unique<OwnServer>();
    s->sock = (tmp_.path() / (config.tag + ".sock")).string();
    s->exports.add(std::make_unique<Vfs>(std::move(config), options));
    s->server = std::make_unique<SocketServer>(session_factory(s->exports, SessionConfig{}), 1);
    s->server->listen(ListenAddress{.kind = ListenAddress::Kind::kUnix, .path = s->sock});
    s->server->start();
    return s;
  }

  TempDir tmp_;
  fs::path ro_, rw_;
  std::string big_;
  ExportSet exports_;
  std::unique_ptr<SocketServer> server_;
  std::string sock_;
};

TEST_F(P9Server, NegotiatesVersionAndMsize) {
  auto c = Client::connect_unix(sock_);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c->version(16u << 20), 1u << 20);  // capped at the server's max
  EXPECT_EQ(*c->version(65536), 65536u);        // smaller requests are honoured
  EXPECT_EQ(c->version(8192, "9P2000.u").error(), -EPROTONOSUPPORT);  // answered "unknown"
  EXPECT_EQ(c->version(100).error(), -EINVAL);
}

TEST_F(P9Server, AttachSelectsExportByTagOrPath) {
  Client c = connect();
  EXPECT_TRUE(c.attach(1, "ro").ok());
  EXPECT_TRUE(c.attach(2, rw_.string()).ok());
  EXPECT_TRUE(c.attach(3, rw_.string() + "/").ok());
  EXPECT_EQ(c.attach(4, "nope").error(), -ENOENT);
  EXPECT_EQ(c.attach(1, "ro").error(), -EBADF);  // fid in use
  auto auth = c.call<Rauth>(Tauth{.afid = 9, .uname = "", .aname = "ro", .n_uname = 0});
  EXPECT_EQ(auth.error(), -ENOENT);  // "no authentication required"
}

TEST_F(P9Server, GetattrMatchesHostStat) {
  Client c = attached("ro");
  for (const char* name : {"hello.txt", "big.bin", "empty", "dir", "rel-link"}) {
    SCOPED_TRACE(name);
    uint32_t fid = c.new_fid();
    ASSERT_TRUE(c.walk(kRoot, fid, name).ok());
    auto a = c.getattr(fid);
    ASSERT_TRUE(a.ok());
    struct stat st{};
    ASSERT_EQ(::lstat((ro_ / name).c_str(), &st), 0);
    EXPECT_EQ(a->mode, st.st_mode);
    EXPECT_EQ(a->size, static_cast<uint64_t>(st.st_size));
    EXPECT_EQ(a->nlink, st.st_nlink);
    EXPECT_EQ(a->uid, st.st_uid);
    EXPECT_EQ(a->mtime_sec, static_cast<uint64_t>(st.st_mtim.tv_sec));
    EXPECT_EQ(a->mtime_nsec, static_cast<uint64_t>(st.st_mtim.tv_nsec));
    EXPECT_EQ(a->qid.path, st.st_ino);  // same device: qid.path is the inode
    EXPECT_EQ(a->qid.type, S_ISDIR(st.st_mode) ? kQtDir : S_ISLNK(st.st_mode) ? kQtSymlink : kQtFile);
    EXPECT_TRUE(c.clunk(fid).ok());
  }
}

TEST_F(P9Server, ReadsMatchHostBytes) {
  for (uint32_t msize : {8192u, 65536u, 1u << 20}) {
    SCOPED_TRACE(msize);
    Client c = connect(msize);
    ASSERT_TRUE(c.attach(kRoot, "ro").ok());
    for (const char* name : {"hello.txt", "big.bin", "empty", "dir/nested.txt"}) {
      uint32_t fid = c.new_fid();
      ASSERT_TRUE(c.walk(kRoot, fid, name).ok());
      ASSERT_TRUE(c.lopen(fid, O_RDONLY).ok());
      auto data = c.read_all(fid);
      ASSERT_TRUE(data.ok());
      EXPECT_TRUE(*data == read_file(ro_ / name)) << name;
      EXPECT_TRUE(c.clunk(fid).ok());
    }
  }
}

TEST_F(P9Server, ReadCountIsClampedToMsize) {
  Client c = connect(8192);
  ASSERT_TRUE(c.attach(kRoot, "ro").ok());
  ASSERT_TRUE(c.walk(kRoot, 2, "big.bin").ok());
  ASSERT_TRUE(c.lopen(2, O_RDONLY).ok());
  auto r = c.call<Rread>(Tread{.fid = 2, .offset = 0, .count = 1u << 30});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->data.bytes.size(), 8192u - kIoHeaderSize);
}

TEST_F(P9Server, ReaddirListsWhatTheHostHas) {
  Client c = connect(8192);  // small msize: several Treaddir rounds
  ASSERT_TRUE(c.attach(kRoot, "ro").ok());
  for (int i = 0; i < 300; i++) write_file(ro_ / "many" / ("file-with-a-longish-name-" + std::to_string(i)), "x");
  ASSERT_TRUE(c.walk(kRoot, 2, "many").ok());
  ASSERT_TRUE(c.lopen(2, O_RDONLY | O_DIRECTORY).ok());
  auto entries = c.readdir_all(2);
  ASSERT_TRUE(entries.ok());
  std::set<std::string> got, want{".", ".."};
  for (auto& e : *entries) got.insert(e.name);
  for (auto& e : fs::directory_iterator(ro_ / "many")) want.insert(e.path().filename().string());
  EXPECT_EQ(got, want);
  EXPECT_EQ(entries->size(), want.size());  // no duplicates across rounds
}

// A closure view over 9P: the root lists the closure's entries only (across
// many reads, most of its names hidden), and no walk reaches another one,
// through ".." or in one Twalk of many names.
TEST_F(P9Server, AClosureShowsOnlyItsStorePaths) {
  fs::path store = tmp_.path() / "store";
  for (int i = 0; i < 300; i++) write_file(store / ("hidden-" + std::to_string(i)) / "f", "x");
  write_file(store / "shown-a/f", "a");
  write_file(store / "shown-b", "b");
  write_file(tmp_.path() / "closure", "/nix/store/shown-a\n/nix/store/shown-b\n");
  auto s = serve({.tag = "store", .path = store.string(), .read_only = true, .closure = (tmp_.path() / "closure").string()});
  Client c = s->attached();
  ASSERT_TRUE(c.walk(1, 2, "").ok());
  ASSERT_TRUE(c.lopen(2, O_RDONLY | O_DIRECTORY).ok());
  auto entries = c.readdir_all(2);
  ASSERT_TRUE(entries.ok());
  std::multiset<std::string> got;
  for (auto& e : *entries) got.insert(e.name);
  EXPECT_EQ(got, (std::multiset<std::string>{".", "..", "shown-a", "shown-b"}));
  EXPECT_TRUE(c.walk(1, 3, "shown-a/f").ok());
  EXPECT_EQ(c.walk(1, 4, "hidden-7").error(), -ENOENT);
  EXPECT_EQ(c.walk(1, 4, "hidden-7/f").error(), -ENOENT);
  EXPECT_EQ(c.walk(1, 4, "shown-a/../hidden-7/f").error(), -ENOENT);
  EXPECT_EQ(c.walk(1, 4, "../../hidden-7").error(), -ENOENT);
  auto root = c.getattr(1);
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->nlink, 1u);  // 302 directories on the host
}

TEST_F(P9Server, QidsAreStableAndVersionTracksContent) {
  Client c = attached("rw");
  ASSERT_TRUE(c.walk(kRoot, 2, "existing.txt").ok());
  auto q1 = c.getattr(2);
  ASSERT_TRUE(c.walk(kRoot, 3, "existing.txt").ok());
  auto q2 = c.getattr(3);
  ASSERT_TRUE(q1.ok() && q2.ok());
  EXPECT_EQ(q1->qid.path, q2->qid.path);
  EXPECT_EQ(q1->qid.version, q2->qid.version);
  write_file(rw_ / "existing.txt", "new content, longer\n");
  auto q3 = c.getattr(2);
  ASSERT_TRUE(q3.ok());
  EXPECT_EQ(q3->qid.path, q1->qid.path);
  EXPECT_NE(q3->qid.version, q1->qid.version);
}

TEST_F(P9Server, CreateWriteReadRenameUnlinkOnReadWriteExport) {
  Client c = attached("rw");
  // create + write
  ASSERT_TRUE(c.walk(kRoot, 2, "").ok());
  ASSERT_TRUE(c.lcreate(2, "new.txt", O_RDWR | O_CREAT, 0640).ok());
  std::string payload = random_bytes(200000, 7);
  uint64_t off = 0;
  while (off < payload.size()) {
    auto n = c.write(2, off, std::string_view(payload).substr(off, 60000));
    ASSERT_TRUE(n.ok());
    off += *n;
  }
  ASSERT_TRUE(c.call<Rfsync>(Tfsync{.fid = 2, .datasync = 0}).ok());
  EXPECT_TRUE(read_file(rw_ / "new.txt") == payload);
  EXPECT_EQ(fs::status(rw_ / "new.txt").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  ASSERT_TRUE(c.clunk(2).ok());
  // read back through a new fid
  ASSERT_TRUE(c.walk(kRoot, 3, "new.txt").ok());
  ASSERT_TRUE(c.lopen(3, O_RDONLY).ok());
  auto back = c.read_all(3);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(*back == payload);
  // rename (renameat), then Trename of the open fid's node
  ASSERT_TRUE(c.call<Rrenameat>(Trenameat{.olddirfid = kRoot, .oldname = "new.txt", .newdirfid = kRoot, .newname = "renamed.txt"}).ok());
  EXPECT_FALSE(fs::exists(rw_ / "new.txt"));
  EXPECT_TRUE(read_file(rw_ / "renamed.txt") == payload);
  ASSERT_TRUE(c.call<Rmkdir>(Tmkdir{.dfid = kRoot, .name = "sub", .mode = 0755, .gid = 0}).ok());
  ASSERT_TRUE(c.walk(kRoot, 4, "sub").ok());
  ASSERT_TRUE(c.call<Rrename>(Trename{.fid = 3, .dfid = 4, .name = "moved.txt"}).ok());
  EXPECT_TRUE(fs::exists(rw_ / "sub/moved.txt"));
  // the fid still reads after its file moved
  auto again = c.call<Rread>(Tread{.fid = 3, .offset = 0, .count = 5});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->data.bytes.size(), 5u);
  // link, symlink, readlink
  ASSERT_TRUE(c.call<Rlink>(Tlink{.dfid = kRoot, .fid = 3, .name = "hard"}).ok());
  EXPECT_EQ(fs::hard_link_count(rw_ / "hard"), 2u);
  ASSERT_TRUE(c.call<Rsymlink>(Tsymlink{.dfid = kRoot, .name = "sym", .symtgt = "sub/moved.txt", .gid = 0}).ok());
  EXPECT_EQ(fs::read_symlink(rw_ / "sym"), "sub/moved.txt");
  ASSERT_TRUE(c.walk(kRoot, 5, "sym").ok());
  auto target = c.call<Rreadlink>(Treadlink{.fid = 5});
  ASSERT_TRUE(target.ok());
  EXPECT_EQ(target->target, "sub/moved.txt");
  // setattr: chmod and truncate
  ASSERT_TRUE(c.call<Rsetattr>(Tsetattr{.fid = 3, .valid = kSetattrMode | kSetattrSize, .mode = 0600, .uid = 0,
                                        .gid = 0, .size = 10, .atime_sec = 0, .atime_nsec = 0,
                                        .mtime_sec = 0, .mtime_nsec = 0}).ok());
  EXPECT_EQ(fs::file_size(rw_ / "sub/moved.txt"), 10u);
  EXPECT_EQ(fs::status(rw_ / "sub/moved.txt").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  // unlink file, then directory
  ASSERT_TRUE(c.clunk(3).ok());
  ASSERT_TRUE(c.call<Runlinkat>(Tunlinkat{.dirfid = 4, .name = "moved.txt", .flags = 0}).ok());
  EXPECT_FALSE(fs::exists(rw_ / "sub/moved.txt"));
  EXPECT_EQ(c.call<Runlinkat>(Tunlinkat{.dirfid = kRoot, .name = "sub", .flags = 0}).error(), -EISDIR);
  ASSERT_TRUE(c.call<Runlinkat>(Tunlinkat{.dirfid = kRoot, .name = "sub", .flags = kAtRemoveDir}).ok());
  EXPECT_FALSE(fs::exists(rw_ / "sub"));
  // Tremove
  ASSERT_TRUE(c.walk(kRoot, 6, "hard").ok());
  ASSERT_TRUE(c.call<Rremove>(Tremove{.fid = 6}).ok());
  EXPECT_FALSE(fs::exists(rw_ / "hard"));
  EXPECT_EQ(c.clunk(6).error(), -EBADF);  // remove clunked it
}

TEST_F(P9Server, ReadOnlyExportRefusesEveryMutation) {
  Client c = attached("ro");
  auto before = read_file(ro_ / "hello.txt");
  ASSERT_TRUE(c.walk(kRoot, 2, "hello.txt").ok());
  ASSERT_TRUE(c.walk(kRoot, 3, "").ok());
  ASSERT_TRUE(c.walk(kRoot, 4, "dir").ok());
  EXPECT_EQ(c.lcreate(3, "x", O_RDWR | O_CREAT, 0644).error(), -EROFS);
  EXPECT_EQ(c.lopen(2, O_WRONLY).error(), -EROFS);
  EXPECT_EQ(c.lopen(2, O_RDWR).error(), -EROFS);
  EXPECT_EQ(c.lopen(2, O_RDONLY | O_TRUNC).error(), -EROFS);
  EXPECT_EQ(c.call<Rmkdir>(Tmkdir{.dfid = kRoot, .name = "d", .mode = 0755, .gid = 0}).error(), -EROFS);
  EXPECT_EQ(c.call<Rsymlink>(Tsymlink{.dfid = kRoot, .name = "s", .symtgt = "x", .gid = 0}).error(), -EROFS);
  EXPECT_EQ(c.call<Rmknod>(Tmknod{.dfid = kRoot, .name = "f", .mode = S_IFIFO | 0644, .major = 0, .minor = 0, .gid = 0}).error(), -EROFS);
  EXPECT_EQ(c.call<Rrename>(Trename{.fid = 2, .dfid = 4, .name = "moved"}).error(), -EROFS);
  EXPECT_EQ(c.call<Rrenameat>(Trenameat{.olddirfid = kRoot, .oldname = "hello.txt", .newdirfid = kRoot, .newname = "x"}).error(), -EROFS);
  EXPECT_EQ(c.call<Runlinkat>(Tunlinkat{.dirfid = kRoot, .name = "hello.txt", .flags = 0}).error(), -EROFS);
  EXPECT_EQ(c.call<Runlinkat>(Tunlinkat{.dirfid = kRoot, .name = "dir", .flags = kAtRemoveDir}).error(), -EROFS);
  EXPECT_EQ(c.call<Rlink>(Tlink{.dfid = kRoot, .fid = 2, .name = "hard"}).error(), -EROFS);
  EXPECT_EQ(c.call<Rsetattr>(Tsetattr{.fid = 2, .valid = kSetattrMode, .mode = 0777, .uid = 0, .gid = 0, .size = 0,
                                      .atime_sec = 0, .atime_nsec = 0, .mtime_sec = 0, .mtime_nsec = 0}).error(), -EROFS);
  EXPECT_EQ(c.call<Rsetattr>(Tsetattr{.fid = 2, .valid = kSetattrSize, .mode = 0, .uid = 0, .gid = 0, .size = 0,
                                      .atime_sec = 0, .atime_nsec = 0, .mtime_sec = 0, .mtime_nsec = 0}).error(), -EROFS);
  EXPECT_EQ(c.call<Rxattrcreate>(Txattrcreate{.fid = 2, .name = "user.x", .attr_size = 1, .flags = 0}).error(), -EROFS);
  ASSERT_TRUE(c.walk(kRoot, 5, "empty").ok());
  EXPECT_EQ(c.call<Rremove>(Tremove{.fid = 5}).error(), -EROFS);
  // and nothing changed on the host
  EXPECT_EQ(read_file(ro_ / "hello.txt"), before);
  EXPECT_TRUE(fs::exists(ro_ / "empty"));
  EXPECT_FALSE(fs::exists(ro_ / "x"));
  EXPECT_FALSE(fs::exists(ro_ / "d"));
  // reading still works
  ASSERT_TRUE(c.lopen(2, O_RDONLY).ok());
  EXPECT_EQ(*c.read_all(2), before);
}

// Device nodes only on an export with ",devices"; FIFOs anywhere.
TEST_F(P9Server, DeviceNodesNeedAnExportThatAllowsThem) {
  Client c = attached("rw");
  auto mknod = [&](const char* name, uint32_t mode) {
    return c.call<Rmknod>(Tmknod{.dfid = kRoot, .name = name, .mode = mode, .major = 1, .minor = 3, .gid = 0});
  };
  EXPECT_EQ(mknod("null", S_IFCHR | 0644).error(), -EPERM);
  EXPECT_EQ(mknod("loop", S_IFBLK | 0644).error(), -EPERM);
  EXPECT_TRUE(mknod("fifo", S_IFIFO | 0644).ok());
  EXPECT_FALSE(fs::exists(rw_ / "null"));

  auto dev = serve({.tag = "dev", .path = rw_.string(), .read_only = false, .cache = CachePolicy::kNever, .devices = true});
  Client d = dev->attached();  // as root, who may
  ASSERT_TRUE(d.call<Rmknod>(Tmknod{.dfid = 1, .name = "null", .mode = S_IFCHR | 0644, .major = 1, .minor = 3, .gid = 0}).ok());
  struct stat st{};
  ASSERT_EQ(::lstat((rw_ / "null").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
}

// A device node that a host party put inside an export (an unpacked
// image, a container root, another guest's share) is no door to the host's
// device: opening it, or creating its name without O_EXCL, is EACCES
// unless the export says ",devices", on read-only exports too (before: fsd
// opened it, as root, for any client). An existing FIFO's name created
// without O_EXCL opens without waiting for a writer (before: the worker
// waited).
TEST_F(P9Server, DeviceNodesInAnExportOpenOnlyWhereItAllowsDevices) {
  for (const fs::path& dir : {rw_, ro_}) ASSERT_EQ(::mknod((dir / "zero").c_str(), S_IFCHR | 0666, makedev(1, 5)), 0);
  ASSERT_EQ(::mknod((rw_ / "loop").c_str(), S_IFBLK | 0666, makedev(7, 0)), 0);
  Client c = attached("rw");
  uint32_t fid = 10;
  auto open_fails = [&](Client& cl, const char* name, uint32_t flags) {
    EXPECT_TRUE(cl.walk(kRoot, fid, name).ok()) << name;
    auto r = cl.lopen(fid, flags);
    EXPECT_FALSE(r.ok()) << name << " opened";
    if (!r.ok()) {
      EXPECT_EQ(r.error(), -EACCES) << name;
    }
    fid++;
  };
  open_fails(c, "zero", O_RDONLY);
  open_fails(c, "zero", O_RDWR);
  open_fails(c, "loop", O_RDONLY);
  for (uint32_t flags : {uint32_t{O_RDONLY}, uint32_t{O_RDWR}, uint32_t{O_WRONLY | O_TRUNC}}) {
    ASSERT_TRUE(c.walk(kRoot, fid, "").ok());
    auto r = c.lcreate(fid, "zero", flags, 0644);
    EXPECT_EQ(r.error(), -EACCES) << "Tlcreate over a device node, flags " << flags;
    fid++;
  }
  Client ro = attached("ro");
  open_fails(ro, "zero", O_RDONLY);

  ASSERT_EQ(::mkfifo((rw_ / "fifo").c_str(), 0644), 0);
  ASSERT_TRUE(c.walk(kRoot, fid, "").ok());
  auto created = std::async(std::launch::async, [&] { return c.lcreate(fid, "fifo", O_RDONLY, 0644).ok(); });
  bool answered = created.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  EXPECT_TRUE(answered) << "Tlcreate over a FIFO waited for a writer";
  int unpark = answered ? -1 : ::open((rw_ / "fifo").c_str(), O_WRONLY);
  EXPECT_TRUE(created.get());
  if (unpark >= 0) ::close(unpark);

  // Where the export allows devices, they open (as the caller).
  auto dev = serve({.tag = "dev", .path = rw_.string(), .read_only = false, .cache = CachePolicy::kNever, .devices = true});
  Client d = dev->attached();
  ASSERT_TRUE(d.walk(1, 2, "zero").ok());
  ASSERT_TRUE(d.lopen(2, O_RDONLY).ok());
  auto r = d.call<Rread>(Tread{.fid = 2, .offset = 0, .count = 16});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->data.bytes.size(), 16u);
}

TEST_F(P9Server, XattrsReadListAndWrite) {
  if (::setxattr((rw_ / "existing.txt").c_str(), "user.fsd", "v1", 2, 0) != 0)
    GTEST_SKIP() << "user xattrs unsupported on the test filesystem";
  Client c = attached("rw");
  ASSERT_TRUE(c.walk(kRoot, 2, "existing.txt").ok());
  auto size = c.call<Rxattrwalk>(Txattrwalk{.fid = 2, .newfid = 3, .name = "user.fsd"});
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(size->size, 2u);
  auto value = c.read_all(3);
  EXPECT_EQ(*value, "v1");
  auto list = c.call<Rxattrwalk>(Txattrwalk{.fid = 2, .newfid = 4, .name = ""});
  ASSERT_TRUE(list.ok());
  EXPECT_NE(c.read_all(4)->find("user.fsd"), std::string::npos);
  EXPECT_EQ(c.call<Rxattrwalk>(Txattrwalk{.fid = 2, .newfid = 5, .name = "user.none"}).error(), -ENODATA);
  // write one through xattrcreate + write + clunk
  ASSERT_TRUE(c.walk(kRoot, 6, "existing.txt").ok());
  ASSERT_TRUE(c.call<Rxattrcreate>(Txattrcreate{.fid = 6, .name = "user.new", .attr_size = 5, .flags = 0}).ok());
  ASSERT_TRUE(c.write(6, 0, "hello").ok());
  ASSERT_TRUE(c.clunk(6).ok());
  char buf[16];
  EXPECT_EQ(::getxattr((rw_ / "existing.txt").c_str(), "user.new", buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
}

TEST_F(P9Server, LocksConflictBetweenFids) {
  Client c = attached("rw");
  ASSERT_TRUE(c.walk(kRoot, 2, "existing.txt").ok());
  ASSERT_TRUE(c.walk(kRoot, 3, "existing.txt").ok());
  ASSERT_TRUE(c.lopen(2, O_RDWR).ok());
  ASSERT_TRUE(c.lopen(3, O_RDWR).ok());
  auto lock = [&](uint32_t fid, uint8_t type) {
    return c.call<Rlock>(Tlock{.fid = fid, .type = type, .flags = 0, .start = 0, .length = 0, .proc_id = fid, .client_id = "t"})->status;
  };
  EXPECT_EQ(lock(2, kLockTypeWrlck), kLockSuccess);
  EXPECT_EQ(lock(3, kLockTypeWrlck), kLockBlocked);
  auto gl = c.call<Rgetlock>(Tgetlock{.fid = 3, .type = kLockTypeWrlck, .start = 0, .length = 0, .proc_id = 3, .client_id = "t"});
  ASSERT_TRUE(gl.ok());
  EXPECT_EQ(gl->type, kLockTypeWrlck);
  EXPECT_EQ(lock(2, kLockTypeUnlck), kLockSuccess);
  EXPECT_EQ(lock(3, kLockTypeWrlck), kLockSuccess);
}

// ---- hostile input: each case gets a clear result, and the server keeps
// serving other connections.

// A file's fd stays out of the budget's reclaiming only while it holds a
// lock, and a failed lock keeps nothing (before: any Tlock, even a refused
// one, kept the fd for good, so a client that locked and unlocked many
// files pinned the budget until others got EMFILE). One connection keeps
// at most an eighth of the budget for its locks; past it, its own next
// lock is refused, and other connections lock as before.
TEST_F(P9Server, LockedFilesAreBoundedAndReleased) {
  for (int i = 0; i < 40; i++) write_file(rw_ / ("l" + std::to_string(i)), "x");
  auto small = serve({.tag = "small", .path = rw_.string(), .read_only = false, .cache = CachePolicy::kNever},
                     {.open_files = 16});  // a lock share of 8
  auto client = [&] { return small->attached(); };
  auto lock = [](Client& c, uint32_t fid, uint8_t type) {
    auto r = c.call<Rlock>(Tlock{.fid = fid, .type = type, .flags = 0, .start = 0, .length = 0, .proc_id = fid, .client_id = "t"});
    return r.ok() ? r->status : uint8_t{0xff};
  };
  Client a = client(), b = client();
  // a locks and unlocks 40 files, keeping them all open: twice the budget.
  for (uint32_t i = 0; i < 40; i++) {
    ASSERT_TRUE(a.walk(1, 100 + i, "l" + std::to_string(i)).ok());
    auto o = a.lopen(100 + i, O_RDWR);
    ASSERT_TRUE(o.ok()) << "open " << i << ": " << std::strerror(-o.error());
    ASSERT_EQ(lock(a, 100 + i, kLockTypeWrlck), kLockSuccess) << i;
    ASSERT_EQ(lock(a, 100 + i, kLockTypeUnlck), kLockSuccess) << i;
  }
  // b's locks on a file a holds fail, on 40 fids of it: nothing kept.
  ASSERT_EQ(lock(a, 100, kLockTypeWrlck), kLockSuccess);
  for (uint32_t i = 0; i < 40; i++) {
    ASSERT_TRUE(b.walk(1, 200 + i, "l0").ok());
    auto o = b.lopen(200 + i, O_RDWR);
    ASSERT_TRUE(o.ok()) << "open " << i << ": " << std::strerror(-o.error());
    EXPECT_EQ(lock(b, 200 + i, kLockTypeWrlck), kLockBlocked);
  }
  // a holds locks on 8 files (l0 and 7 more); the 9th is refused, and
  // unlocking one makes room again. b locks as it likes meanwhile.
  for (uint32_t i = 1; i < 8; i++) ASSERT_EQ(lock(a, 100 + i, kLockTypeWrlck), kLockSuccess) << i;
  EXPECT_EQ(lock(a, 108, kLockTypeWrlck), kLockError);
  ASSERT_TRUE(b.walk(1, 300, "l30").ok());
  ASSERT_TRUE(b.lopen(300, O_RDWR).ok());
  EXPECT_EQ(lock(b, 300, kLockTypeWrlck), kLockSuccess);
  // Unlocking part of a range keeps the rest (and the fd); all of it frees it.
  auto r = a.call<Rlock>(Tlock{.fid = 107, .type = kLockTypeUnlck, .flags = 0, .start = 10, .length = 5, .proc_id = 107, .client_id = "t"});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, kLockSuccess);
  EXPECT_EQ(lock(a, 108, kLockTypeWrlck), kLockError);
  EXPECT_EQ(lock(a, 107, kLockTypeUnlck), kLockSuccess);
  EXPECT_EQ(lock(a, 108, kLockTypeWrlck), kLockSuccess);
}

// With two hard links a/x and b/y, Tremove and Trename act on the name the
// fid was walked by, not on the inode's other name (before: on the name it
// was last looked up by, so removing a/x removed b/y).
TEST_F(P9Server, RemoveAndRenameActOnTheNameTheFidWasWalkedBy) {
  write_file(rw_ / "a/x", "linked\n");
  fs::create_directories(rw_ / "b");
  fs::create_hard_link(rw_ / "a/x", rw_ / "b/y");
  Client c = attached("rw");
  ASSERT_TRUE(c.walk(kRoot, 2, "a/x").ok());
  ASSERT_TRUE(c.walk(kRoot, 3, "b/y").ok());  // the inode is last seen as b/y
  ASSERT_TRUE(c.call<Rremove>(Tremove{.fid = 2}).ok());
  EXPECT_FALSE(fs::exists(rw_ / "a/x"));
  EXPECT_TRUE(fs::exists(rw_ / "b/y"));

  fs::create_hard_link(rw_ / "b/y", rw_ / "a/x2");
  ASSERT_TRUE(c.walk(kRoot, 4, "a/x2").ok());
  ASSERT_TRUE(c.walk(kRoot, 5, "b/y").ok());
  ASSERT_TRUE(c.walk(kRoot, 6, "a").ok());
  ASSERT_TRUE(c.call<Rrename>(Trename{.fid = 4, .dfid = 6, .name = "moved"}).ok());
  EXPECT_TRUE(fs::exists(rw_ / "a/moved"));
  EXPECT_FALSE(fs::exists(rw_ / "a/x2"));
  EXPECT_TRUE(fs::exists(rw_ / "b/y"));
  // The renamed fid goes by its new name; a name that is no longer its
  // inode is not removed in its place.
  ASSERT_TRUE(c.call<Rremove>(Tremove{.fid = 4}).ok());
  EXPECT_FALSE(fs::exists(rw_ / "a/moved"));
  EXPECT_TRUE(fs::exists(rw_ / "b/y"));
  ASSERT_TRUE(c.walk(kRoot, 7, "b/y").ok());
  fs::remove(rw_ / "b/y");
  write_file(rw_ / "b/y", "another file\n");
  EXPECT_EQ(c.call<Rremove>(Tremove{.fid = 7}).error(), -ESTALE);
  EXPECT_TRUE(fs::exists(rw_ / "b/y"));
}

class P9Hostile : public P9Server {
 protected:
  void ExpectServerStillServes() {
    Client c = attached("ro");
    ASSERT_TRUE(c.walk(kRoot, 2, "hello.txt").ok());
    ASSERT_TRUE(c.lopen(2, O_RDONLY).ok());
    EXPECT_EQ(*c.read_all(2), "hello, world\n");
  }
  static std::vector<std::byte> frame(std::initializer_list<int> bytes) {
    std::vector<std::byte> v;
    for (int b : bytes) v.push_back(static_cast<std::byte>(b));
    return v;
  }
};

TEST_F(P9Hostile, FrameLargerThanMsizeDropsOnlyThatConnection) {
  Client bystander = attached("ro");
  Client c = connect(8192);
  // A header announcing 1 MiB on a connection that negotiated 8 KiB.
  auto f = frame({0x00, 0x00, 0x10, 0x00, 118, 1, 0});
  ASSERT_TRUE(c.send_raw(f).ok());
  EXPECT_EQ(c.receive_raw().error(), -ECONNRESET);  // the server hung up
  ASSERT_TRUE(bystander.walk(kRoot, 2, "hello.txt").ok());
  ExpectServerStillServes();
}

TEST_F(P9Hostile, TruncatedFramesAreRejected) {
  {
    // Tclunk whose size covers only half the fid: malformed, connection dropped.
    Client c = connect();
    ASSERT_TRUE(c.send_raw(frame({9, 0, 0, 0, 120, 1, 0, 1, 0})).ok());
    EXPECT_EQ(c.receive_raw().error(), -ECONNRESET);
  }
  {
    // Size shorter than a header.
    Client c = connect();
    ASSERT_TRUE(c.send_raw(frame({3, 0, 0, 0, 120, 1, 0})).ok());
    EXPECT_EQ(c.receive_raw().error(), -ECONNRESET);
  }
  {
    // A frame cut off by the client closing mid-way: nothing to answer.
    Client c = connect();
    ASSERT_TRUE(c.send_raw(frame({64, 0, 0, 0, 110, 1, 0, 1, 0})).ok());
  }
  {
    // A string whose length runs past the frame.
    Client c = connect();
    ASSERT_TRUE(c.send_raw(frame({15, 0, 0, 0, 110, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0})).ok());
    EXPECT_EQ(c.receive_raw().error(), -ECONNRESET);
  }
  ExpectServerStillServes();
}

TEST_F(P9Hostile, UnknownTypeGetsAnErrorAndTheConnectionLives) {
  Client c = attached("ro");
  // 9P2000.u Tstat (124) is not part of 9P2000.L.
  ASSERT_TRUE(c.send_raw(frame({11, 0, 0, 0, 124, 0x34, 0x12, 1, 0, 0, 0})).ok());
  auto r = c.receive();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tag, 0x1234);
  ASSERT_TRUE(std::holds_alternative<Rlerror>(r->msg));
  EXPECT_EQ(std::get<Rlerror>(r->msg).ecode, static_cast<uint32_t>(EOPNOTSUPP));
  EXPECT_TRUE(c.walk(kRoot, 2, "hello.txt").ok());
}

TEST_F(P9Hostile, BadFidsAreEbadf) {
  Client c = attached("ro");
  EXPECT_EQ(c.getattr(4242).error(), -EBADF);
  EXPECT_EQ(c.walk(4242, 5, "hello.txt").error(), -EBADF);
  EXPECT_EQ(c.clunk(4242).error(), -EBADF);
  EXPECT_EQ(c.call<Rread>(Tread{.fid = 4242, .offset = 0, .count = 10}).error(), -EBADF);
  EXPECT_EQ(c.walk(kRoot, kNoFid, "hello.txt").error(), -EBADF);
  ASSERT_TRUE(c.walk(kRoot, 2, "hello.txt").ok());
  EXPECT_EQ(c.walk(kRoot, 2, "dir").error(), -EBADF);  // newfid in use
  EXPECT_EQ(c.call<Rread>(Tread{.fid = 2, .offset = 0, .count = 10}).error(), -EBADF);  // not opened
  ExpectServerStillServes();
}

TEST_F(P9Hostile, DotDotPastTheRootStaysAtTheRoot) {
  Client c = attached("ro");
  auto root = c.getattr(kRoot);
  ASSERT_TRUE(root.ok());
  auto up = c.walk(kRoot, 2, "../../..");
  ASSERT_TRUE(up.ok());
  EXPECT_EQ(up->path, root->qid.path);
  auto via_dir = c.walk(kRoot, 3, "dir/../../dir/../..");
  ASSERT_TRUE(via_dir.ok());
  EXPECT_EQ(via_dir->path, root->qid.path);
  // and the files seen from there are the export's
  ASSERT_TRUE(c.walk(2, 4, "hello.txt").ok());
  // names that are not one component are refused
  EXPECT_EQ(c.call<Rwalk>(Twalk{.fid = kRoot, .newfid = 5, .wnames = {1, {"dir/nested.txt"}}}).error(), -EINVAL);
  EXPECT_EQ(c.call<Rwalk>(Twalk{.fid = kRoot, .newfid = 5, .wnames = {1, {""}}}).error(), -EINVAL);
}

TEST_F(P9Hostile, SymlinksOutOfTheExportAreNeverFollowed) {
  Client c = attached("ro");
  // Walking through a symlink to a directory outside does not enter it.
  // A partial walk: only the link's qid comes back, and newfid is not made.
  auto through = c.call<Rwalk>(Twalk{.fid = kRoot, .newfid = 2, .wnames = {2, {"to-etc", "passwd"}}});
  ASSERT_TRUE(through.ok());
  EXPECT_EQ(through->wqids.count, 1);
  EXPECT_EQ(through->wqids.qids[0].type, kQtSymlink);
  EXPECT_EQ(c.getattr(2).error(), -EBADF);
  ASSERT_TRUE(c.walk(kRoot, 2, "to-etc").ok());
  EXPECT_EQ(c.walk(2, 7, "passwd").error(), -ENOTDIR);
  // The symlink itself can be walked to and read as a link, not opened.
  ASSERT_TRUE(c.walk(kRoot, 3, "to-passwd").ok());
  auto a = c.getattr(3);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(S_ISLNK(a->mode));
  EXPECT_EQ(c.lopen(3, O_RDONLY).error(), -ELOOP);
  EXPECT_EQ(c.call<Rreadlink>(Treadlink{.fid = 3})->target, "/etc/passwd");
  // Even a link inside the export is not followed by the server.
  ASSERT_TRUE(c.walk(kRoot, 4, "rel-link").ok());
  EXPECT_EQ(c.lopen(4, O_RDONLY).error(), -ELOOP);
}

// Opening a FIFO with no writer must not park a worker thread (the open
// would wait for a partner): the open answers at once, and other clients
// are served meanwhile.
TEST_F(P9Server, OpeningAFifoNeverWaitsForAPartner) {
  ASSERT_EQ(::mkfifo((rw_ / "fifo").c_str(), 0644), 0);
  Client c = attached("rw");
  ASSERT_TRUE(c.walk(kRoot, 2, "fifo").ok());
  ASSERT_TRUE(c.walk(kRoot, 3, "fifo").ok());
  auto opens = std::async(std::launch::async, [&] { return c.lopen(2, O_RDONLY).ok() && c.lopen(3, O_RDONLY).ok(); });
  bool answered = opens.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  EXPECT_TRUE(answered) << "Tlopen of a FIFO without a writer waited";
  int unpark = -1;
  if (!answered) unpark = ::open((rw_ / "fifo").c_str(), O_WRONLY);  // a writer lets the parked opens finish
  EXPECT_TRUE(opens.get());
  if (unpark >= 0) ::close(unpark);
  // Both workers are free: a second client is answered.
  Client other = attached("ro");
  EXPECT_TRUE(other.getattr(kRoot).ok());
  // The FIFO works: what a writer on the host puts in, the client reads.
  int w = ::open((rw_ / "fifo").c_str(), O_WRONLY | O_NONBLOCK);  // fsd holds it open for reading
  ASSERT_GE(w, 0) << std::strerror(errno);
  ASSERT_EQ(::write(w, "hi", 2), 2);
  auto r = c.call<Rread>(Tread{.fid = 2, .offset = 0, .count = 16});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(r->data.bytes.data()), r->data.bytes.size()), "hi");
  // Now empty, with a writer: a read answers at once instead of waiting for
  // data that may never come (which would hold the request for good).
  auto empty = std::async(std::launch::async, [&] { return c.call<Rread>(Tread{.fid = 2, .offset = 0, .count = 16}); });
  bool prompt = empty.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  EXPECT_TRUE(prompt) << "Tread of an empty FIFO waited for data";
  if (!prompt) {
    EXPECT_EQ(::write(w, "x", 1), 1);  // lets the parked read finish
  }
  auto e = empty.get();
  if (prompt) {
    EXPECT_EQ(e.error(), -EAGAIN);
  }
  ::close(w);
}

// Resident memory of this process (client and in-process server), in bytes.
size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

// A client that pipelines reads and never reads the replies cannot make the
// server buffer them without limit: past a bound it stops taking requests
// from that connection (back-pressure). Every reply still arrives, whole,
// once the client reads.
TEST_F(P9Server, UnreadRepliesAreBoundedByBackPressure) {
  Client c = attached("ro");  // msize 1 MiB
  ASSERT_TRUE(c.walk(kRoot, 2, "big.bin").ok());
  ASSERT_TRUE(c.lopen(2, O_RDONLY).ok());
  size_t before = resident_bytes();
  constexpr int kReads = 400;
  constexpr uint32_t kCount = 1000 * 1000;
  // All in one write (9 KB), as a pipelining client sends them: one send per
  // frame would block once fsd stops reading, which is the point.
  std::vector<std::byte> batch;
  for (int i = 0; i < kReads; i++) {
    std::byte frame[64];
    auto n = encode(frame, static_cast<uint16_t>(i + 1), Tread{.fid = 2, .offset = 0, .count = kCount});
    ASSERT_TRUE(n.ok());
    batch.insert(batch.end(), frame, frame + *n);
  }
  ASSERT_TRUE(c.send_raw(batch).ok());
  size_t peak = 0;
  for (int i = 0; i < 10; i++) {  // a second for the server to do what it will
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    peak = std::max(peak, resident_bytes());
  }
  size_t grown = peak > before ? peak - before : 0;
  std::printf("resident memory grew by %zu KiB under %d unread reads of 1 MB\n", grown >> 10, kReads);
  EXPECT_LT(grown, size_t{100} << 20) << "the server buffered unread replies";
  for (int i = 0; i < kReads; i++) {
    auto f = c.receive();
    ASSERT_TRUE(f.ok()) << "reply " << i;
    auto* r = std::get_if<Rread>(&f->msg);
    ASSERT_NE(r, nullptr) << "reply " << i;
    EXPECT_EQ(r->data.bytes.size(), kCount);
  }
  EXPECT_TRUE(c.getattr(kRoot).ok());
}

TEST_F(P9Server, FlushAnswersAfterTheFlushedRequest) {
  Client c = attached("ro");
  ASSERT_TRUE(c.walk(kRoot, 2, "big.bin").ok());
  ASSERT_TRUE(c.lopen(2, O_RDONLY).ok());
  // Pipeline a large read and a flush of it, then a flush of a tag not in flight.
  ASSERT_TRUE(c.send(10, Tread{.fid = 2, .offset = 0, .count = 1 << 19}).ok());
  ASSERT_TRUE(c.send(11, Tflush{.oldtag = 10}).ok());
  ASSERT_TRUE(c.send(12, Tflush{.oldtag = 999}).ok());
  std::vector<uint16_t> order;
  bool read_seen = false;
  for (int i = 0; i < 3; i++) {
    auto r = c.receive();
    ASSERT_TRUE(r.ok());
    order.push_back(r->tag);
    if (r->tag == 10) {
      read_seen = true;
      EXPECT_TRUE(std::holds_alternative<Rread>(r->msg));
    }
    if (r->tag == 11) {
      EXPECT_TRUE(std::holds_alternative<Rflush>(r->msg));
      EXPECT_TRUE(read_seen) << "Rflush arrived before the flushed request's reply";
    }
  }
  EXPECT_EQ(std::set<uint16_t>(order.begin(), order.end()), (std::set<uint16_t>{10, 11, 12}));
}

TEST_F(P9Server, ManyConcurrentConnections) {
  constexpr int kClients = 8;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; t++) {
    threads.emplace_back([&, t] {
      auto c = Client::connect_unix(sock_);
      if (!c || !c->version(1 << 20) || !c->attach(1, "ro")) {
        failures++;
        return;
      }
      for (int i = 0; i < 50; i++) {
        uint32_t fid = 10 + static_cast<uint32_t>(i);
        if (!c->walk(1, fid, i % 2 ? "big.bin" : "dir/nested.txt") || !c->lopen(fid, O_RDONLY)) {
          failures++;
          return;
        }
        auto d = c->read_all(fid);
        if (!d || *d != read_file(ro_ / (i % 2 ? "big.bin" : "dir/nested.txt"))) failures++;
        if (!c->clunk(fid)) failures++;
      }
      (void)t;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace fsd::p9

namespace fsd::p9 {
namespace {

// One export, tag "t", served on a unix socket in `dir`, stopped when dropped.
struct OneExport {
  OneExport(std::unique_ptr<Vfs> vfs, const std::filesystem::path& dir) : sock((dir / "9p.sock").string()) {
    exports.add(std::move(vfs));
    server = std::make_unique<SocketServer>(session_factory(exports, SessionConfig{.max_msize = 1 << 16}), 1);
    std::filesystem::remove(sock);
    server->listen(ListenAddress{.kind = ListenAddress::Kind::kUnix, .path = sock});
    server->start();
  }
  ~OneExport() { server->stop(); }
  // A client with fid 1000 attached to the export.
  Result<Client> attach() {
    auto c = Client::connect_unix(sock);
    if (!c.ok() || !c->version(1 << 16).ok() || !c->attach(1000, "t").ok()) return Error{-EPROTO};
    return c;
  }
  ExportSet exports;
  std::unique_ptr<SocketServer> server;
  std::string sock;
};

// --inode-file-handles: nodes whose cached O_PATH fd was closed (the cache
// holds 8 here) are reopened by file handle or by name, as asked, and
// either way reach the same files. Handles need CAP_DAC_READ_SEARCH.
TEST(NodeReopen, ByHandleOrByNameAsAsked) {
  TempDir tmp;
  for (int i = 0; i < 40; i++) write_file(tmp.path() / "tree" / ("f" + std::to_string(i)), "file " + std::to_string(i) + "\n");
  bool root = ::geteuid() == 0;
  using H = VfsOptions::Handles;
  for (H mode : {H::kNever, H::kPrefer, H::kMandatory}) {
    SCOPED_TRACE(static_cast<int>(mode));
    ExportConfig cfg{.tag = "t", .path = (tmp.path() / "tree").string(), .read_only = true};
    VfsOptions opts{.path_fd_cache = 8, .open_files = 16, .handles = mode};
    if (mode == H::kMandatory && !root) {
      EXPECT_THROW(Vfs(cfg, opts), std::runtime_error);  // no CAP_DAC_READ_SEARCH: refused at start
      continue;
    }
    auto vfs = std::make_unique<Vfs>(cfg, opts);
    Vfs* v = vfs.get();
    EXPECT_EQ(v->uses_handles(), mode != H::kNever && root);
    OneExport served(std::move(vfs), tmp.path());
    auto c = served.attach();
    ASSERT_TRUE(c.ok());
    std::vector<uint32_t> fids;
    for (int i = 0; i < 40; i++) {
      fids.push_back(c->new_fid());
      auto q = c->walk(1000, fids.back(), "f" + std::to_string(i));
      ASSERT_TRUE(q.ok()) << i << ": " << q.error();
    }
    // The first ones' fds were evicted long ago: each read reopens.
    for (int i = 0; i < 40; i++) {
      ASSERT_TRUE(c->lopen(fids[i], O_RDONLY).ok()) << i;
      auto text = c->read_all(fids[i]);
      ASSERT_TRUE(text.ok());
      EXPECT_EQ(*text, "file " + std::to_string(i) + "\n");
    }
    VfsStats st = v->stats();
    if (mode == H::kNever || !root) {
      EXPECT_EQ(st.reopen_by_handle, 0u);
      EXPECT_GT(st.reopen_by_name, 0u);
    } else {
      EXPECT_GT(st.reopen_by_handle, 0u);
      if (mode == H::kMandatory) {
        EXPECT_EQ(st.reopen_by_name, 0u);
      }
    }
  }
}

// Mandatory: an export on a file system without handles fails to start; a
// mount inside the export that has none cannot be looked up.
TEST(NodeReopen, MandatoryHandlesRefuseWhatHasNone) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: CAP_DAC_READ_SEARCH, and to mount";
  using H = VfsOptions::Handles;
  try {
    Vfs proc(ExportConfig{.tag = "p", .path = "/proc", .read_only = true}, VfsOptions{.handles = H::kMandatory});
    ADD_FAILURE() << "an export of /proc started with mandatory handles";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--inode-file-handles=mandatory, but '/proc' cannot be served by file handles"),
              std::string::npos)
        << e.what();
  }
  TempDir tmp;
  write_file(tmp.path() / "tree/hello.txt", "hello\n");
  std::filesystem::create_directories(tmp.path() / "tree/proc");
  ASSERT_EQ(::mount("proc", (tmp.path() / "tree/proc").c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr), 0)
      << std::strerror(errno);
  struct Unmount {
    std::filesystem::path at;
    ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
  } unmount{tmp.path() / "tree/proc"};
  for (H mode : {H::kPrefer, H::kMandatory}) {
    OneExport served(std::make_unique<Vfs>(ExportConfig{.tag = "t", .path = (tmp.path() / "tree").string(), .read_only = true},
                                           VfsOptions{.handles = mode}),
                     tmp.path());
    auto c = served.attach();
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE(c->walk(1000, 2000, "hello.txt").ok());
    auto proc = c->walk(1000, 2001, "proc");
    if (mode == H::kPrefer) {
      EXPECT_TRUE(proc.ok()) << proc.error();  // by name
    } else {
      ASSERT_FALSE(proc.ok());
      EXPECT_EQ(proc.error(), -EOPNOTSUPP);
    }
  }
}

// ---- directory cursors (Vfs::read_dir)

// Reads a listing a few entries per call from `offset`, as a client with a
// small buffer does; returns the names and the offset after the last one.
std::pair<std::vector<std::string>, uint64_t> read_some(Ring& ring, Vfs& vfs, const OpenFile& dir, uint64_t offset,
                                                       size_t most) {
  std::vector<std::string> names;
  uint64_t next = offset;
  auto r = ring.run(vfs.read_dir(ring, dir, offset, 512, [&](const DirEntry& e) {
    if (names.size() == most) return false;
    names.emplace_back(e.name);
    next = e.next;
    return true;
  }));
  EXPECT_TRUE(r.ok());
  return {names, next};
}

// A listing read on from where the last read stopped continues from the
// entries its getdents left over (no seek); one that goes back, or starts
// again, or whose fd was closed for another file and reopened, still gets
// exactly the entries from its offset on.
TEST(DirCursor, ResumesSeeksBackAndSurvivesReopens) {
  TempDir tmp;
  for (int i = 0; i < 500; i++) write_file(tmp.path() / "tree" / "d" / ("entry-" + std::to_string(i)), "");
  for (int i = 0; i < 40; i++) write_file(tmp.path() / "tree" / ("f" + std::to_string(i)), "x");
  Vfs vfs(ExportConfig{.tag = "t", .path = (tmp.path() / "tree").string(), .read_only = true},
          VfsOptions{.open_files = 16});
  Ring ring;
  auto d = ring.run(vfs.lookup(ring, vfs.root(), "d"));
  ASSERT_TRUE(d.ok());
  auto dir = ring.run(vfs.open(ring, *d->node, O_RDONLY | O_DIRECTORY));
  ASSERT_TRUE(dir.ok());
  std::set<std::string> want{".", ".."};
  for (int i = 0; i < 500; i++) want.insert("entry-" + std::to_string(i));

  // Whole, 7 entries per call, remembering where each call began.
  std::vector<std::string> all;
  std::vector<std::pair<uint64_t, size_t>> starts;  // (offset, index in `all`)
  uint64_t off = 0;
  for (;;) {
    starts.emplace_back(off, all.size());
    auto [names, next] = read_some(ring, vfs, *dir, off, 7);
    if (names.empty()) break;
    all.insert(all.end(), names.begin(), names.end());
    off = next;
  }
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()), want);
  EXPECT_EQ(all.size(), want.size());

  // Back to an earlier offset, then on from there: the same entries.
  auto [mid_off, mid_at] = starts[starts.size() / 3];
  auto [again, next] = read_some(ring, vfs, *dir, mid_off, 7);
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(again, std::vector<std::string>(all.begin() + static_cast<ptrdiff_t>(mid_at),
                                            all.begin() + static_cast<ptrdiff_t>(mid_at + again.size())));
  auto [on, next2] = read_some(ring, vfs, *dir, next, 7);
  EXPECT_EQ(on, std::vector<std::string>(all.begin() + static_cast<ptrdiff_t>(mid_at + again.size()),
                                         all.begin() + static_cast<ptrdiff_t>(mid_at + again.size() + on.size())));

  // Opening 40 files through a budget of 16 closes the directory's fd; the
  // next read reopens it (position 0) and must seek to its offset.
  uint64_t reclaimed = vfs.stats().files_reclaimed;
  std::vector<OpenFile> files;
  for (int i = 0; i < 40; i++) {
    auto f = ring.run(vfs.lookup(ring, vfs.root(), "f" + std::to_string(i)));
    ASSERT_TRUE(f.ok());
    auto o = ring.run(vfs.open(ring, *f->node, O_RDONLY));
    ASSERT_TRUE(o.ok());
    std::byte b;
    iovec v{&b, 1};
    ASSERT_TRUE(ring.run(vfs.read(ring, *o, {&v, 1}, 0)).ok());
    files.push_back(std::move(*o));
  }
  ASSERT_GT(vfs.stats().files_reclaimed, reclaimed);
  size_t at = mid_at + again.size() + on.size();
  auto [after, next3] = read_some(ring, vfs, *dir, next2, 200);  // past what the cursor holds
  EXPECT_EQ(after, std::vector<std::string>(all.begin() + static_cast<ptrdiff_t>(at),
                                            all.begin() + static_cast<ptrdiff_t>(at + after.size())));
  EXPECT_GT(vfs.stats().files_reopened, 0u);
}

}  // namespace
}  // namespace fsd::p9
