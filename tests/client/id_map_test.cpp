// An export's uid/gid translation over 9P: a root peer (QEMU relaying a
// guest) names guest uids, which the export maps to host uids, forbids, and
// shows back mapped. Needs root (to act as other users); skipped without it.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "fsd/client/p9_client.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

class IdMapOverNineP : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root, to act as other users";
    share_ = tmp_.path() / "share";
    std::filesystem::create_directory(share_);
    ::chmod(share_.c_str(), 0777);
    write_file(share_ / "secret", "root's secret\n");
    ::chmod((share_ / "secret").c_str(), 0600);
    sock_ = (tmp_.path() / "p9.sock").string();
  }
  std::unique_ptr<FsdProcess> start(std::vector<std::string> maps) {
    std::vector<std::string> args{"--export", "t=" + share_.string(), "--listen", "unix:" + sock_};
    args.insert(args.end(), maps.begin(), maps.end());
    auto fsd = std::make_unique<FsdProcess>(FsdProcess::Options{.args = args});
    fsd->wait_listening("unix:");
    return fsd;
  }
  p9::Client attach_as(uint32_t uid) {
    auto c = p9::Client::connect_unix(sock_);
    EXPECT_TRUE(c.ok());
    EXPECT_TRUE(c->version(65536).ok());
    auto a = c->attach(1, "t", uid);
    EXPECT_TRUE(a.ok()) << std::strerror(-a.error());
    return std::move(*c);
  }

  TempDir tmp_;
  std::filesystem::path share_;
  std::string sock_;
};

// The guest's ids 0-65535 are the host's 100000-165535 (a subordinate range):
// the guest's root is an unprivileged user on the host, yet sees itself own
// what it makes.
TEST_F(IdMapOverNineP, AGuestsRootIsAnOrdinaryUserOnTheHost) {
  auto fsd = start({"--translate-uid", "map:0:100000:65536", "--translate-gid", "map:0:100000:65536"});
  auto c = attach_as(0);
  ASSERT_TRUE(c.walk(1, 2, "secret").ok());
  auto opened = c.lopen(2, O_RDONLY);
  ASSERT_FALSE(opened.ok()) << "the guest's root read the host's root-only file";
  EXPECT_EQ(opened.error(), -EACCES);
  ASSERT_TRUE(c.walk(1, 3, "").ok());
  ASSERT_TRUE(c.lcreate(3, "made", O_WRONLY | O_CREAT, 0644, 0).ok());
  struct stat st{};
  ASSERT_EQ(::lstat((share_ / "made").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 100000u);
  EXPECT_EQ(st.st_gid, 100000u);
  auto attr = c.getattr(3);
  ASSERT_TRUE(attr.ok());
  EXPECT_EQ(attr->uid, 0u);
  EXPECT_EQ(attr->gid, 0u);
  // Host ids outside the range show as they are.
  ASSERT_TRUE(c.walk(1, 4, "secret").ok());
  attr = c.getattr(4);
  ASSERT_TRUE(attr.ok());
  EXPECT_EQ(attr->uid, 0u);
}

TEST_F(IdMapOverNineP, ForbiddenIdsCanNeitherActNorOwn) {
  auto fsd = start({"--translate-uid", "forbid-guest:5000:10", "--translate-gid", "forbid-guest:5000:10"});
  {
    auto c = p9::Client::connect_unix(sock_);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c->version(65536).ok());
    auto a = c->attach(1, "t", 5003);
    ASSERT_FALSE(a.ok());
    EXPECT_EQ(a.error(), -EPERM);
  }
  auto c = attach_as(0);
  ASSERT_TRUE(c.walk(1, 2, "").ok());
  EXPECT_EQ(c.lcreate(2, "in5005", O_WRONLY | O_CREAT, 0644, 5005).error(), -EPERM);
  ASSERT_TRUE(c.lcreate(2, "made", O_WRONLY | O_CREAT, 0644, 0).ok());
  EXPECT_EQ(c.call<p9::Rsetattr>(p9::Tsetattr{.fid = 2, .valid = p9::kSetattrUid, .uid = 5009}).error(), -EPERM);
  EXPECT_EQ(c.call<p9::Rsetattr>(p9::Tsetattr{.fid = 2, .valid = p9::kSetattrGid, .gid = 5000}).error(), -EPERM);
  ASSERT_TRUE(c.call<p9::Rsetattr>(p9::Tsetattr{.fid = 2, .valid = p9::kSetattrUid | p9::kSetattrGid, .uid = 5010, .gid = 4999}).ok());
  struct stat st{};
  ASSERT_EQ(::lstat((share_ / "made").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 5010u);
  EXPECT_EQ(st.st_gid, 4999u);
}

TEST_F(IdMapOverNineP, BadRulesAreRefusedNamingTheFlag) {
  for (auto [args, flag] : {std::pair{std::vector<std::string>{"--translate-uid", "map:0:1"}, "--translate-uid 'map:0:1'"},
                            {{"--translate-gid", "squash:0:1:1"}, "--translate-gid 'squash:0:1:1'"},
                            {{"--xattrmap", ":ok:client:::"}, "--xattrmap"},
                            {{"--export", "u=" + share_.string() + ",translate-uid=guest:1"}, "translate-uid 'guest:1'"},
                            {{"--export", "u=" + share_.string() + ",xattrmap=:bad:all::"}, "xattrmap"}}) {
    std::vector<std::string> all{"--export", "t=" + share_.string(), "--listen", "unix:" + sock_};
    all.insert(all.end(), args.begin(), args.end());
    expect_fsd_refuses(all, flag);
  }
}

}  // namespace
}  // namespace fsd::testing
