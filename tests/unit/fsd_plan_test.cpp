// fsd's plan: the command line checked and decided before anything opens,
// for root and for an ordinary user.
#include "fsd/plan.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "fsd/virtiofsd_compat.h"

namespace fsd {
namespace {

using cli::Options;

constexpr Self kRoot{.uid = 0, .gid = 0};
constexpr Self kUser{.uid = 1000, .gid = 1000};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

Options serving(std::string exports = "store=/nix/store,ro") {
  Options o;
  o.exports = {std::move(exports)};
  o.listens = {"unix:/run/fsd.sock"};
  return o;
}

// The message make_plan refuses `o` with, or "" when it plans.
std::string refusal(Options o, const Self& self = kUser) {
  try {
    make_plan(o, self);
    return "";
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
}

TEST(FsdPlan, NeedsSomethingToExportAndSomewhereToServeIt) {
  EXPECT_EQ(refusal(Options{}), "nothing to export: give --export TAG=PATH (or --shared-dir)");
  Options o;
  o.exports = {"a=/srv"};
  EXPECT_EQ(refusal(o),
            "nothing to serve on: give --listen, --virtiofs-socket, --virtio9p-socket, --vsock-socket or --fuse-mount");
  EXPECT_EQ(refusal(serving()), "");
}

TEST(FsdPlan, EveryTransportNamesAnExportByTag) {
  Options o = serving();
  o.virtiofs_sockets = {"nope=/run/fs.sock"};
  EXPECT_EQ(refusal(o), "--virtiofs-socket 'nope=/run/fs.sock': no --export has tag 'nope'");
  o.virtiofs_sockets = {"store"};
  EXPECT_EQ(refusal(o), "--virtiofs-socket 'store': expected TAG=PATH");
  o.virtiofs_sockets = {"store=/run/fs.sock"};
  Plan p = make_plan(o, kUser);
  ASSERT_EQ(p.virtiofs_sockets.size(), 1u);
  EXPECT_EQ(p.virtiofs_sockets[0], (std::pair<std::string, std::string>{"store", "/run/fs.sock"}));
}

TEST(FsdPlan, ATagIsGivenOnce) {
  Options o = serving();
  o.exports.push_back("store=/srv");
  EXPECT_EQ(refusal(o), "--export: tag 'store' is given twice");
}

TEST(FsdPlan, TheSandboxDefaultsToWhatTheUserCanHave) {
  Options root = serving();
  EXPECT_EQ(make_plan(root, kRoot).sandbox, SandboxMode::kNamespace);
  Options user = serving();
  Plan p = make_plan(user, kUser);
  EXPECT_EQ(p.sandbox, SandboxMode::kLandlock);
  EXPECT_EQ(p.seccomp, kSanitized ? SeccompAction::kNone : SeccompAction::kKill);
  // A FUSE mount needs the host's mount namespace and fusermount3.
  Options fuse = serving();
  fuse.fuse_mounts = {"store=/mnt"};
  p = make_plan(fuse, kUser);
  EXPECT_EQ(p.sandbox, SandboxMode::kNone);
  EXPECT_EQ(p.seccomp, SeccompAction::kNone);
  fuse.sandbox = "namespace";
  EXPECT_NE(refusal(fuse).find("--sandbox namespace: a --fuse-mount lives in the host's mount namespace"),
            std::string::npos);
  fuse.sandbox = "none";
  fuse.seccomp = "kill";
  EXPECT_NE(refusal(fuse).find("--seccomp kill: not with --fuse-mount"), std::string::npos);
}

TEST(FsdPlan, NamespaceIdMapsAreForAnOrdinaryUsersSandbox) {
  Options o = serving();
  o.uid_map = {"0:1000:1"};
  o.gid_map = {"0:1000:1"};
  EXPECT_NE(refusal(o, kRoot).find("--uid-map: only for an fsd started by an ordinary user"), std::string::npos);
  Options none = o;
  none.sandbox = "none";
  EXPECT_NE(refusal(none).find("--uid-map: maps ids into the sandbox's user namespace; not with --sandbox none"),
            std::string::npos);
  Plan p = make_plan(o, kUser);
  EXPECT_EQ(p.sandbox, SandboxMode::kNamespace);  // the maps ask for it
  EXPECT_EQ(o.sandbox, "namespace");
}

TEST(FsdPlan, CapabilitiesAreChangedOnlyWhereTheSandboxDropsThem) {
  Options o = serving();
  o.sandbox = "none";
  o.modcaps = "-chown";
  EXPECT_NE(refusal(o, kRoot).find("--modcaps: fsd drops capabilities in its namespace sandbox"), std::string::npos);
}

TEST(FsdPlan, ExportWideFlagsReachEveryExportAndClashesAreNamed) {
  Options o = serving();
  o.exports.push_back("xchg=/tmp/xchg");
  o.translate_uid = {"map:0:100000:65536"};
  o.direct_io = true;
  Plan p = make_plan(o, kRoot);
  ASSERT_EQ(p.exports.size(), 2u);
  for (const auto& e : p.exports) {
    EXPECT_TRUE(e.direct_io) << e.tag;
    EXPECT_EQ(e.uids.to_host(0), 100000u) << e.tag;
  }
  o.posix_acl = true;
  EXPECT_NE(refusal(o, kRoot).find("--posix-acl: not supported by fsd on export 'store', which translates ids"),
            std::string::npos);
  o.posix_acl = false;
  o.translate_uid = {"bogus"};
  EXPECT_EQ(refusal(o, kRoot).rfind("--translate-uid ", 0), 0u);
}

TEST(FsdPlan, VirtiofsdsFormBecomesOneExportOnOneSocket) {
  Options o;
  o.socket_path = "/run/vfs.sock";
  o.shared_dir = "/srv/share";
  cli::apply_compat(o);
  Plan p = make_plan(o, kRoot);
  ASSERT_EQ(p.exports.size(), 1u);
  EXPECT_EQ(p.exports[0].tag, cli::kCompatTag);
  EXPECT_EQ(p.exports[0].path, "/srv/share");
  ASSERT_EQ(p.virtiofs_sockets.size(), 1u);
  EXPECT_EQ(p.virtiofs_sockets[0].second, "/run/vfs.sock");
}

}  // namespace
}  // namespace fsd
