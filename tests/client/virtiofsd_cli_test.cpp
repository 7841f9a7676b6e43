// fsd in virtiofsd's command-line form: what it honours, what it accepts
// because it changes nothing for fsd, and the security flags it refuses
// (rather than running without the protection they ask for).
#include <gtest/gtest.h>

#include <cstring>

#include "fsd/client/vhost_frontend.h"
#include "tests/support/test_support.h"

namespace fsd {
namespace {

using frontend::VhostFrontend;
using testing::FsdProcess;
using testing::TempDir;

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
  ExpectRefused({"--shared-dir", share_, "--sandbox", "chroot"}, "--sandbox chroot");
  ExpectRefused({"--shared-dir", share_, "--security-label"}, "--security-label");
  ExpectRefused({"--shared-dir", share_, "--posix-acl"}, "--posix-acl");
  ExpectRefused({"-o", "source=" + share_ + ",sandbox=chroot"}, "--sandbox chroot");
  ExpectRefused({"-o", "source=" + share_, "-o", "no_such_option"}, "-o no_such_option");
}

TEST_F(VirtiofsdCli, HonouredAndHarmlessFlagsServeAndExitWithTheFrontEnd) {
  FsdProcess fsd({.args = {"--socket-path", sock_, "-o", "source=" + share_ + ",cache=none", "-o", "xattr,no_posix_lock",
                           "--sandbox", "none", "--seccomp", "none", "--inode-file-handles", "prefer", "--readonly",
                           "--thread-pool-size", "2", "--announce-submounts", "--killpriv-v2", "-o", "killpriv_v2",
                           "--xattrmap", ":map::user.virtiofs.:", "--translate-uid", "map:0:0:1"}});
  fsd.wait_for_log("listening on " + sock_);
  {
    auto f = VhostFrontend::connect(sock_);
    ASSERT_TRUE(f.ok()) << std::strerror(-f.error()) << fsd.log();
    ASSERT_TRUE((*f)->negotiate().ok()) << fsd.log();
    auto init = (*f)->fuse_init();
    ASSERT_TRUE(init.ok());
    EXPECT_EQ(init->error, 0);
    std::string name = "hello.txt";
    name.push_back('\0');
    auto look = (*f)->fuse(1, FUSE_LOOKUP, FUSE_ROOT_ID, std::as_bytes(std::span(name)), 4096);
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
