// Who may connect to fsd, and who a client acts as once connected. These
// tests switch to the unprivileged user nobody (65534) on the host, so
// they need root; they are skipped without it.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstring>

#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

// 0 if a unix-socket connect to `path` succeeds, else its errno.
int connect_errno(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  int r = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 ? 0 : errno;
  ::close(fd);
  return r;
}

class Identity : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root, to act as nobody";
    // Everyone may reach the sockets' directory: only the sockets' own
    // modes keep nobody out.
    ::chmod(tmp_.path().c_str(), 0755);
    share_ = tmp_.path() / "share";
    std::filesystem::create_directory(share_);
    p9_ = (tmp_.path() / "p9.sock").string();
    vfs_ = (tmp_.path() / "vfs.sock").string();
  }
  // fsd serving the share on a 9P socket and a virtio-fs socket, started
  // under umask 000 so that nothing but fsd decides the sockets' modes.
  std::unique_ptr<FsdProcess> start(std::vector<std::string> extra) {
    std::vector<std::string> args{"--export", "t=" + share_.string(), "--listen", "unix:" + p9_,
                                  "--virtiofs-socket", "t=" + vfs_};
    args.insert(args.end(), extra.begin(), extra.end());
    mode_t old = ::umask(0);
    auto fsd = std::make_unique<FsdProcess>(FsdProcess::Options{.args = args});
    ::umask(old);
    fsd->wait_for_log("listening on " + vfs_);
    fsd->wait_listening("unix:");
    return fsd;
  }

  TempDir tmp_;
  std::filesystem::path share_;
  std::string p9_, vfs_;
};

TEST_F(Identity, SocketsAreOwnerOnlyWhateverTheUmask) {
  auto fsd = start({});
  for (const auto& sock : {p9_, vfs_}) {
    SCOPED_TRACE(sock);
    struct stat st{};
    ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    EXPECT_EQ(run_as(kNobody, kNogroup, [&] { return connect_errno(sock); }), EACCES);
  }
  // Root, the sockets' owner, still connects (the virtio-fs socket takes
  // one front-end at a time, so only the 9P one is tried here).
  EXPECT_EQ(connect_errno(p9_), 0);
  // Nothing but the sockets was left beside them (they are bound under a
  // temporary name first).
  size_t entries = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(tmp_.path())) entries++;
  EXPECT_EQ(entries, 3u);  // share, p9.sock, vfs.sock
}

TEST_F(Identity, SocketModeAndGroupLetOthersIn) {
  {
    auto fsd = start({"--socket-mode", "0660", "--socket-group", std::to_string(kNogroup)});
    for (const auto& sock : {p9_, vfs_}) {
      SCOPED_TRACE(sock);
      struct stat st{};
      ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 07777, 0660u);
      EXPECT_EQ(st.st_gid, kNogroup);
    }
    // In the group: in. Not in it (uid 65534 with another group): out.
    EXPECT_EQ(run_as(kNobody, kNogroup, [&] { return connect_errno(p9_); }), 0);
    EXPECT_EQ(run_as(kNobody, 65533, [&] { return connect_errno(p9_); }), EACCES);
  }
  auto fsd = start({"--socket-mode", "666"});
  EXPECT_EQ(run_as(kNobody, 65533, [&] { return connect_errno(p9_); }), 0);
  EXPECT_EQ(run_as(kNobody, 65533, [&] { return connect_errno(vfs_); }), 0);
}

TEST_F(Identity, BadSocketModeOrGroupIsRefused) {
  for (auto [flag, value] : {std::pair{"--socket-mode", "999"}, {"--socket-mode", "0x1ff"}, {"--socket-mode", "01777"},
                             {"--socket-mode", ""}, {"--socket-group", "no-such-group-here"}}) {
    SCOPED_TRACE(std::string(flag) + " '" + value + "'");
    FsdProcess fsd({.args = {"--export", "t=" + share_.string(), "--listen", "unix:" + p9_, flag, value}});
    auto status = fsd.wait_exit();
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(*status, 2) << fsd.log();
    EXPECT_NE(fsd.log().find(flag), std::string::npos) << fsd.log();
    EXPECT_FALSE(std::filesystem::exists(p9_));
  }
}

}  // namespace
}  // namespace fsd::testing
