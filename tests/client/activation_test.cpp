// fsd started as systemd starts a socket-activated Type=notify service:
// listening sockets passed as fds 3, 4, ... with LISTEN_FDS, LISTEN_PID and
// LISTEN_FDNAMES, and $NOTIFY_SOCKET to say READY=1 on. No systemd is
// needed: the test is the supervisor. fsd runs with its default sandbox and
// seccomp filter, so readiness is sent from inside them.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "fsd/client/p9_client.h"
#include "fsd/client/vhost_frontend.h"
#include "fsd/core/unix_socket.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using frontend::VhostFrontend;

class Activation : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file(tmp_.path() / "share/hello.txt", "hello\n");
    p9_ = listen_unix((tmp_.path() / "p9.sock").string(), {}, 16);
    vfs_ = listen_unix((tmp_.path() / "vfs.sock").string(), {}, 16);
    notify_path_ = (tmp_.path() / "notify").string();
    notify_ = Fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, notify_path_.c_str(), sizeof sa.sun_path - 1);
    ASSERT_EQ(::bind(notify_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  }
  // The next notification, or "" after `ms`.
  std::string notification(int ms = 10000) {
    pollfd p{notify_.get(), POLLIN, 0};
    if (::poll(&p, 1, ms) != 1) return "";
    char buf[256];
    ssize_t n = ::recv(notify_.get(), buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }
  FsdProcess::Options options(std::vector<std::string> args, const std::string& names) {
    args.insert(args.begin(), {"--export", "t=" + (tmp_.path() / "share").string()});
    return {.args = args,
            .pass_fds = {p9_.get(), vfs_.get()},
            .env = {{"LISTEN_FDNAMES", names}, {"NOTIFY_SOCKET", notify_path_}}};
  }

  TempDir tmp_;
  Fd p9_, vfs_, notify_;
  std::string notify_path_;
};

TEST_F(Activation, PassedSocketsAreServedAndReadinessIsNotified) {
  FsdProcess fsd(options({"--listen", "systemd:ninep", "--virtiofs-socket", "t=systemd:vfs"}, "ninep:vfs"));
  std::string ready = notification();
  EXPECT_TRUE(ready.starts_with("READY=1\n")) << "'" << ready << "'\n" << fsd.log();
  EXPECT_NE(fsd.log().find("listening on systemd:ninep (unix)"), std::string::npos) << fsd.log();
  // 9P on the passed socket, as a local peer (itself: root).
  auto c = p9::Client::connect_unix((tmp_.path() / "p9.sock").string());
  ASSERT_TRUE(c.ok()) << fsd.log();
  ASSERT_TRUE(c->version(65536).ok());
  ASSERT_TRUE(c->attach(1, "t").ok());
  ASSERT_TRUE(c->walk(1, 2, "hello.txt").ok());
  ASSERT_TRUE(c->lopen(2, O_RDONLY).ok());
  auto text = c->read_all(2);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "hello\n");
  // virtio-fs on the other.
  auto f = VhostFrontend::connect((tmp_.path() / "vfs.sock").string());
  ASSERT_TRUE(f.ok()) << fsd.log();
  ASSERT_TRUE((*f)->negotiate().ok()) << fsd.log();
  auto init = (*f)->fuse_init();
  ASSERT_TRUE(init.ok());
  EXPECT_EQ(init->error, 0);
  auto look = (*f)->fuse_lookup(FUSE_ROOT_ID, "hello.txt");
  ASSERT_TRUE(look.ok());
  EXPECT_EQ(look->error, 0);
  EXPECT_EQ(fsd.stop(), 0) << fsd.log();
  EXPECT_EQ(notification(), "STOPPING=1");
  // The socket files are the supervisor's: fsd leaves them.
  EXPECT_TRUE(fs::exists(tmp_.path() / "p9.sock"));
}

// The same through systemd's own harness, systemd-socket-activate: it
// listens, and on the first connection execs fsd with the socket passed
// (LISTEN_FDS, LISTEN_FDNAMES); that connection is fsd's to serve.
TEST_F(Activation, SystemdSocketActivateStartsFsdOnTheFirstConnection) {
  int found = 0;
  run_command("command -v systemd-socket-activate", &found);
  ASSERT_EQ(found, 0) << "systemd-socket-activate (Debian's systemd package) is missing";
  std::string sock = (tmp_.path() / "activated.sock").string();
  ChildProcess harness({"systemd-socket-activate", "-l", sock, "--fdname=virtiofs", "-E",
                        "NOTIFY_SOCKET=" + notify_path_, fsd_binary(), "--export",
                        "t=" + (tmp_.path() / "share").string(), "--virtiofs-socket", "t=systemd:virtiofs"},
                       tmp_.path() / "harness.log");
  // The harness binds, then listens: the file appears a moment before a
  // connection is accepted (ECONNREFUSED until then).
  auto f = VhostFrontend::connect(sock);
  for (int i = 0; i < 500 && !f.ok(); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    f = VhostFrontend::connect(sock);
  }
  ASSERT_TRUE(f.ok()) << read_file(tmp_.path() / "harness.log");
  ASSERT_TRUE((*f)->negotiate().ok()) << read_file(tmp_.path() / "harness.log");
  auto init = (*f)->fuse_init();
  ASSERT_TRUE(init.ok());
  EXPECT_EQ(init->error, 0);
  EXPECT_TRUE(notification().starts_with("READY=1\n")) << read_file(tmp_.path() / "harness.log");
}

TEST_F(Activation, PassedSocketsMustAllBeClaimedByName) {
  auto refused = [&](std::vector<std::string> args, const std::string& names, const std::string& needle) {
    SCOPED_TRACE(needle);
    FsdProcess fsd(options(args, names));
    auto status = fsd.wait_exit();
    ASSERT_TRUE(status.has_value()) << "fsd kept running";
    EXPECT_EQ(*status, 2) << fsd.log();
    EXPECT_NE(fsd.log().find(needle), std::string::npos) << fsd.log();
    EXPECT_EQ(notification(0), "");  // never ready
  };
  refused({"--listen", "systemd:ninep"}, "ninep:vfs", "socket activation passed 'vfs', which no --listen systemd:vfs");
  refused({"--listen", "systemd:other", "--virtiofs-socket", "t=systemd:vfs"}, "ninep:vfs",
          "--listen systemd:other: no socket of that name was passed (passed: ninep, vfs");
  refused({"--listen", "systemd:a:b"}, "ninep:vfs", "expected systemd:NAME");
}

}  // namespace
}  // namespace fsd::testing
