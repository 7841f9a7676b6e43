// fsd in virtiofsd's command-line form: what it honours, what it accepts
// because it changes nothing for fsd, and the security flags it refuses
// (rather than running without the protection they ask for).
#include <gtest/gtest.h>

#include <algorithm>

#include <fcntl.h>
#include <linux/fuse.h>

#include <grp.h>
#include <sys/mount.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "fsd/client/vhost_frontend.h"
#include "fsd/core/unix_socket.h"
#include "tests/support/test_support.h"

namespace fsd {
namespace {

using frontend::VhostFrontend;
using testing::FsdProcess;
using testing::TempDir;
namespace fs = std::filesystem;

class VirtiofsdCli : public ::testing::Test {
 protected:
  void SetUp() override {
    share_ = (tmp_.path() / "share").string();
    sock_ = (tmp_.path() / "vfs.sock").string();
    testing::write_file(tmp_.path() / "share/hello.txt", "hello\n");
  }
  // Runs fsd with `args` and expects it to refuse them: status 2, and a
  // message that names `flag`.
  void ExpectRefused(std::vector<std::string> args, const std::string& flag) {
    args.insert(args.begin(), {"--socket-path", sock_});
    FsdProcess fsd({.args = args});
    auto status = fsd.wait_exit();
    ASSERT_TRUE(status.has_value()) << "fsd kept running with " << flag;
    EXPECT_EQ(*status, 2) << fsd.log();
    EXPECT_NE(fsd.log().find(flag), std::string::npos) << fsd.log();
    EXPECT_NE(fsd.log().find("not supported by fsd"), std::string::npos) << fsd.log();
  }

  TempDir tmp_;
  std::string share_, sock_;
};

TEST_F(VirtiofsdCli, SecurityFlagsItCannotHonourAreRefused) {
  ExpectRefused({"--shared-dir", share_, "--posix-acl", "--translate-uid", "map:0:1000:1"}, "--posix-acl");
  ExpectRefused({"-o", "source=" + share_, "-o", "no_such_option"}, "-o no_such_option");
  ExpectRefused({"--shared-dir", share_, "--migration-mode", "find-paths"}, "--migration-mode");
  ExpectRefused({"--shared-dir", share_, "--migration-confirm-paths"}, "--migration-confirm-paths");
}

// The flags virtiofsd users pass that change how fsd runs: each is honoured
// (checked here on the running server), or warned about where taking it
// without effect changes nothing fsd promises.
TEST_F(VirtiofsdCli, OperationalFlagsAreHonouredOrWarnedAbout) {
  // -o security_label needs a host that holds security.selinux: root here.
  bool root = ::geteuid() == 0;
  std::vector<std::string> args{"--socket", sock_, "--shared-dir", share_, "--cache", "auto", "-d", "-f",
                                "--rlimit-nofile", "4096", "--allow-direct-io", "--no-readdirplus", "--preserve-noatime",
                                "--writeback", "-o", "posix_lock", "--sandbox", "none"};
  if (root) args.insert(args.end(), {"-o", "security_label"});
  FsdProcess fsd({.args = args});
  fsd.wait_for_log("listening on " + sock_);
  std::string log = fsd.log();
  EXPECT_NE(log.find("fsd debug:"), std::string::npos) << "-d: " << log;
  EXPECT_EQ(log.find("--writeback"), std::string::npos) << "honoured, not warned about: " << log;
  EXPECT_NE(log.find("ignored: -o posix_lock: "), std::string::npos) << log;
  std::ifstream limits("/proc/" + std::to_string(fsd.server_pid()) + "/limits");
  std::string line;
  while (std::getline(limits, line) && !line.starts_with("Max open files")) {
  }
  EXPECT_NE(line.find("4096                 4096"), std::string::npos) << line;
  {
    auto f = VhostFrontend::connect(sock_);
    ASSERT_TRUE(f.ok()) << std::strerror(-f.error()) << fsd.log();
    ASSERT_TRUE((*f)->negotiate().ok()) << fsd.log();
    auto init = (*f)->fuse_init();
    ASSERT_TRUE(init.ok());
    ASSERT_EQ(init->error, 0);
    fuse_init_out out{};
    std::memcpy(&out, init->body.data(), std::min(sizeof out, init->body.size()));
    EXPECT_EQ(out.flags & FUSE_DO_READDIRPLUS, 0u) << "--no-readdirplus";
    EXPECT_NE(out.flags & FUSE_WRITEBACK_CACHE, 0u) << "--writeback";
    if (root) {
      EXPECT_NE(out.flags2 & (FUSE_SECURITY_CTX >> 32), 0u) << "-o security_label";
    }
    auto look = (*f)->fuse_lookup(FUSE_ROOT_ID, "hello.txt");
    ASSERT_TRUE(look.ok());
    ASSERT_EQ(look->error, 0);
    fuse_entry_out entry{};
    std::memcpy(&entry, look->body.data(), sizeof entry);
    // --allow-direct-io: the client's O_DIRECT reaches the host's open,
    // which either keeps it or refuses it (a file system without O_DIRECT).
    fuse_open_in in{};
    in.flags = O_RDONLY | O_DIRECT;
    auto opened = (*f)->fuse(1, FUSE_OPEN, entry.nodeid, std::as_bytes(std::span(&in, 1)), 4096);
    ASSERT_TRUE(opened.ok());
    // The open flags of fsd's fds of hello.txt, as /proc shows them.
    auto host_flags = [&] {
      std::vector<unsigned long> all;
      for (auto& fd : fs::directory_iterator("/proc/" + std::to_string(fsd.server_pid()) + "/fd")) {
        std::error_code ec;
        if (fs::read_symlink(fd.path(), ec) != fs::path(share_) / "hello.txt") continue;
        std::ifstream info("/proc/" + std::to_string(fsd.server_pid()) + "/fdinfo/" + fd.path().filename().string());
        std::string key;
        unsigned long flags = 0;
        while (info >> key)
          if (key == "flags:" && info >> std::oct >> flags) all.push_back(flags);
      }
      return all;
    };
    if (opened->error == 0) {
      auto all = host_flags();
      EXPECT_TRUE(std::any_of(all.begin(), all.end(), [](unsigned long f) { return (f & O_DIRECT) != 0; }))
          << "no fd of hello.txt open with O_DIRECT";
    } else {
      EXPECT_EQ(opened->error, -EINVAL);
    }
    // --writeback: a write-only O_APPEND open is read-write without
    // O_APPEND on the host (the client reads partial pages, and places
    // appends itself).
    in.flags = O_WRONLY | O_APPEND;
    opened = (*f)->fuse(1, FUSE_OPEN, entry.nodeid, std::as_bytes(std::span(&in, 1)), 4096);
    ASSERT_TRUE(opened.ok());
    ASSERT_EQ(opened->error, 0);
    unsigned long seen = ~0ul;
    for (unsigned long f : host_flags())
      if (!(f & (O_DIRECT | O_PATH))) seen = f;
    ASSERT_NE(seen, ~0ul) << "no other fd of hello.txt";
    EXPECT_EQ(seen & O_ACCMODE, static_cast<unsigned long>(O_RDWR));
    EXPECT_EQ(seen & O_APPEND, 0u);
  }
  auto status = fsd.wait_exit();
  ASSERT_TRUE(status.has_value()) << fsd.log();
  EXPECT_EQ(*status, 0) << fsd.log();
}

// libvirt reads a back-end's capabilities to choose its command line: fsd
// says it is an fs back-end that takes virtiofsd's flags as flags, and
// claims no migration.
TEST_F(VirtiofsdCli, PrintCapabilitiesIsVhostUserJson) {
  int status = -1;
  std::string out = testing::run_command(testing::fsd_binary() + " --print-capabilities", &status);
  ASSERT_EQ(status, 0);
  auto caps = nlohmann::json::parse(out);
  EXPECT_EQ(caps["type"], "fs");
  EXPECT_EQ(caps["features"], nlohmann::json::array({"separate-options"}));
}

// The command lines the tools that start virtiofsd pass, word for word
// (only paths and numbers are this test's): each starts fsd, which serves
// a vhost-user front-end on the socket it was given, and exits when that
// front-end goes, as virtiofsd does.
TEST_F(VirtiofsdCli, CallersCommandLinesServeAFrontEnd) {
  std::string dir = share_;
  struct Caller {
    const char* who;
    std::vector<std::string> args;  // "--fd=3": the listening socket is fd 3, as libvirt and Kata pass it
  };
  std::vector<Caller> callers = {
      {"libvirt 9 (default <filesystem>)", {"--fd=3", "-o", "source=" + dir}},
      {"libvirt 9 (cache, xattr and locks set in <binary>)",
       {"--fd=3", "-o", "source=" + dir + ",cache=always,xattr,flock,posix_lock", "--thread-pool-size=16"}},
      {"libvirt 9 with virtiofsd_debug = 1", {"--fd=3", "-o", "source=" + dir, "-d"}},
      {"libvirt 9 with <sandbox mode='chroot'/>", {"--fd=3", "-o", "source=" + dir + ",sandbox=chroot"}},
      {"libvirt with <openfiles max='4096'/>", {"--fd=3", "-o", "source=" + dir, "--rlimit-nofile=4096"}},
      {"Kata Containers", {"--syslog", "--cache=auto", "--shared-dir=" + dir, "--fd=3", "--thread-pool-size=1",
                           "--announce-submounts"}},
      {"the Rust virtiofsd's own default written out (no pool)", {"--fd=3", "--shared-dir=" + dir, "--thread-pool-size=0"}},
  };
  // microvm.nix makes the socket itself (--socket-path), for its group
  // (kvm; root where this machine has no kvm group).
  std::string path = (tmp_.path() / "caller.sock").string();
  std::string group = ::getgrnam("kvm") ? "kvm" : "root";
  callers.push_back({"microvm.nix", {"--socket-path=" + path, "--socket-group=" + group, "--shared-dir=" + dir,
                                     "--thread-pool-size", "2", "--posix-acl", "--xattr", "--cache=auto",
                                     "--rlimit-nofile", "1048576"}});
  for (const auto& c : callers) {
    SCOPED_TRACE(c.who);
    std::filesystem::remove(path);
    bool own_socket = c.args.front().starts_with("--socket-path=");
    Fd listening = own_socket ? Fd() : listen_unix(path, {}, 8);
    FsdProcess fsd({.args = c.args, .pass_fds = own_socket ? std::vector<int>{} : std::vector<int>{listening.get()},
                    .listen_fds_env = false});
    listening.reset();
    if (own_socket) fsd.wait_for_log("listening on " + path);
    auto f = VhostFrontend::connect(path);
    ASSERT_TRUE(f.ok()) << std::strerror(-f.error()) << fsd.log();
    ASSERT_TRUE((*f)->negotiate().ok()) << fsd.log();
    auto init = (*f)->fuse_init();
    ASSERT_TRUE(init.ok()) << fsd.log();
    EXPECT_EQ(init->error, 0);
    auto look = (*f)->fuse_lookup(FUSE_ROOT_ID, "hello.txt");
    ASSERT_TRUE(look.ok()) << fsd.log();
    EXPECT_EQ(look->error, 0) << fsd.log();
    f->reset();
    auto status = fsd.wait_exit();
    ASSERT_TRUE(status.has_value()) << "fsd kept running after its front-end went\n" << fsd.log();
    EXPECT_EQ(*status, 0) << fsd.log();
  }
}

// --tag: the device's config space holds the tag and one request queue, as
// crosvm reads it; without --tag there is no config space to offer.
TEST_F(VirtiofsdCli, TagIsAdvertisedInTheConfigSpace) {
  namespace vu = vhost_user;
  for (bool tagged : {true, false}) {
    SCOPED_TRACE(tagged ? "--tag" : "no --tag");
    std::vector<std::string> args{"--socket-path", sock_, "--shared-dir", share_};
    if (tagged) args.insert(args.end(), {"--tag", "myfs"});
    FsdProcess fsd({.args = args});
    fsd.wait_for_log("listening on " + sock_);
    auto f = VhostFrontend::connect(sock_);
    ASSERT_TRUE(f.ok()) << fsd.log();
    auto pf = (*f)->send(vu::Request::GetProtocolFeatures, vu::None{}, {}, false, true);
    ASSERT_TRUE(pf.ok());
    bool config = (std::get<uint64_t>(pf->payload) & vu::kPfConfig) != 0;
    EXPECT_EQ(config, tagged);
    if (!tagged) continue;
    ASSERT_TRUE((*f)->negotiate().ok()) << fsd.log();
    vu::Config c{};
    c.offset = 0;
    c.size = 40;
    auto r = (*f)->send(vu::Request::GetConfig, c, {}, false, true);
    ASSERT_TRUE(r.ok());
    const auto& reply = std::get<vu::Config>(r->payload);
    ASSERT_EQ(reply.size, 40u);
    const auto& got = reply.payload;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(got.data()), 5), std::string("myfs\0", 5));
    uint32_t queues;
    std::memcpy(&queues, got.data() + 36, 4);
    EXPECT_EQ(queues, 1u);
  }
  testing::expect_fsd_refuses({"--socket-path", sock_, "--shared-dir", share_, "--tag", std::string(37, 't')},
                              "a virtio-fs tag is 1 to 36 bytes");
}

// --announce-submounts: a directory the host has a file system mounted on
// comes back from LOOKUP flagged FUSE_ATTR_SUBMOUNT, to a client that
// offers FUSE_SUBMOUNTS (as Linux's virtio-fs driver does); other
// directories, and everything without the flag, do not.
TEST_F(VirtiofsdCli, AnnounceSubmountsFlagsMountPoints) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to mount a tmpfs";
  auto sub = std::filesystem::path(share_) / "sub";
  std::filesystem::create_directories(sub);
  std::filesystem::create_directories(std::filesystem::path(share_) / "plain");
  ASSERT_EQ(::mount("fsd-test", sub.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=1m"), 0) << std::strerror(errno);
  struct Unmount {
    std::filesystem::path at;
    ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
  } unmount{sub};
  for (bool announce : {true, false}) {
    SCOPED_TRACE(announce ? "--announce-submounts" : "without");
    std::vector<std::string> args{"--socket-path", sock_, "--shared-dir", share_};
    if (announce) args.push_back("--announce-submounts");
    FsdProcess fsd({.args = args});
    fsd.wait_for_log("listening on " + sock_);
    auto f = VhostFrontend::connect(sock_);
    ASSERT_TRUE(f.ok()) << fsd.log();
    ASSERT_TRUE((*f)->negotiate().ok()) << fsd.log();
    fuse_init_in in{};
    in.major = FUSE_KERNEL_VERSION;
    in.minor = FUSE_KERNEL_MINOR_VERSION;
    in.flags = FUSE_SUBMOUNTS | FUSE_INIT_EXT;
    auto init = (*f)->fuse(1, FUSE_INIT, 0, std::as_bytes(std::span(&in, 1)), 4096);
    ASSERT_TRUE(init.ok());
    ASSERT_EQ(init->error, 0);
    auto flags_of = [&](const std::string& name) -> uint32_t {
      auto look = (*f)->fuse_lookup(FUSE_ROOT_ID, name);
      if (!look.ok() || look->error != 0) return 0xffffffff;
      fuse_entry_out e{};
      std::memcpy(&e, look->body.data(), sizeof e);
      return e.attr.flags;
    };
    EXPECT_EQ(flags_of("sub"), announce ? uint32_t{FUSE_ATTR_SUBMOUNT} : 0u) << fsd.log();
    EXPECT_EQ(flags_of("plain"), 0u);
    EXPECT_EQ(flags_of("hello.txt"), 0u);
  }
}

TEST_F(VirtiofsdCli, VersionFlagsPrintTheVersion) {
  for (const char* flag : {"-V", "--version"}) {
    int status = -1;
    std::string out = testing::run_command(testing::fsd_binary() + " " + flag, &status);
    EXPECT_EQ(status, 0) << flag;
    EXPECT_TRUE(out.starts_with("fsd ")) << flag << ": " << out;
  }
}

TEST_F(VirtiofsdCli, HonouredAndHarmlessFlagsServeAndExitWithTheFrontEnd) {
  FsdProcess fsd({.args = {"--socket-path", sock_, "-o", "source=" + share_ + ",cache=none", "-o", "xattr,no_posix_lock",
                           "--sandbox", "none", "--seccomp", "none", "--inode-file-handles", "prefer", "--readonly",
                           "--thread-pool-size", "2", "--killpriv-v2", "-o", "killpriv_v2",
                           "--xattrmap", ":map::user.virtiofs.:", "--translate-uid", "map:0:0:1"}});
  fsd.wait_for_log("listening on " + sock_);
  {
    auto f = VhostFrontend::connect(sock_);
    ASSERT_TRUE(f.ok()) << std::strerror(-f.error()) << fsd.log();
    ASSERT_TRUE((*f)->negotiate().ok()) << fsd.log();
    auto init = (*f)->fuse_init();
    ASSERT_TRUE(init.ok());
    EXPECT_EQ(init->error, 0);
    auto look = (*f)->fuse_lookup(FUSE_ROOT_ID, "hello.txt");
    ASSERT_TRUE(look.ok());
    EXPECT_EQ(look->error, 0);
    // --readonly is honoured: creating a file is EROFS.
    std::vector<std::byte> create(sizeof(fuse_create_in));
    fuse_create_in ci{};
    ci.flags = O_WRONLY | O_CREAT;
    ci.mode = 0644;
    std::memcpy(create.data(), &ci, sizeof ci);
    for (char c : std::string("new.txt")) create.push_back(static_cast<std::byte>(c));
    create.push_back(std::byte{0});
    auto made = (*f)->fuse(1, FUSE_CREATE, FUSE_ROOT_ID, create, 4096);
    ASSERT_TRUE(made.ok());
    EXPECT_EQ(made->error, -EROFS);
  }
  // As virtiofsd does, fsd in this form exits when its front-end goes.
  auto status = fsd.wait_exit();
  ASSERT_TRUE(status.has_value()) << fsd.log();
  EXPECT_EQ(*status, 0) << fsd.log();
}

}  // namespace
}  // namespace fsd
