// XattrMap: virtiofsd's --xattrmap rules.
#include "fsd/vfs/xattr_map.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace fsd {
namespace {

std::string host(const XattrMap& m, std::string_view client) {
  auto r = m.to_host(client);
  return r ? *r : "error " + std::to_string(r.error());
}

TEST(XattrMap, MapWithAKeyRenamesThatNamespaceOnly) {
  auto m = XattrMap::parse(":map:security.:user.guest.:");
  EXPECT_EQ(host(m, "security.selinux"), "user.guest.security.selinux");
  EXPECT_EQ(host(m, "security.capability"), "user.guest.security.capability");
  EXPECT_EQ(host(m, "user.mime"), "user.mime");  // others pass
  // A client may not reach the renamed names directly...
  EXPECT_EQ(host(m, "user.guest.security.capability"), "error " + std::to_string(-EPERM));
  // ...and sees them under their own names, the host's own security.* hidden.
  EXPECT_EQ(m.to_client("user.guest.security.selinux"), "security.selinux");
  EXPECT_EQ(m.to_client("security.selinux"), std::nullopt);
  EXPECT_EQ(m.to_client("user.mime"), "user.mime");
}

TEST(XattrMap, MapWithoutAKeyPrefixesEverything) {
  auto m = XattrMap::parse(" :map::user.virtiofs.: ");
  EXPECT_EQ(host(m, "trusted.x"), "user.virtiofs.trusted.x");
  EXPECT_EQ(host(m, "user.x"), "user.virtiofs.user.x");
  EXPECT_EQ(m.to_client("user.virtiofs.trusted.x"), "trusted.x");
  EXPECT_EQ(m.to_client("user.x"), std::nullopt);  // the host's own: hidden
}

TEST(XattrMap, RulesApplyInOrderWithTheirOwnSeparator) {
  auto m = XattrMap::parse(
      "/prefix/all/trusted./user.virtiofs./\n"
      "  /bad/server//trusted./\n"
      "  /bad/client/user.virtiofs.//\n"
      "  /unsupported/all/system.posix_acl_/system.posix_acl_/\n"
      "  /ok/all///");
  EXPECT_EQ(host(m, "trusted.a"), "user.virtiofs.trusted.a");
  EXPECT_EQ(host(m, "user.virtiofs.a"), "error " + std::to_string(-EPERM));
  EXPECT_EQ(host(m, "system.posix_acl_access"), "error " + std::to_string(-ENOTSUP));
  EXPECT_EQ(host(m, "user.a"), "user.a");
  EXPECT_EQ(m.to_client("trusted.a"), std::nullopt);
  EXPECT_EQ(m.to_client("user.virtiofs.trusted.a"), "trusted.a");
  EXPECT_EQ(m.to_client("system.posix_acl_default"), std::nullopt);
  EXPECT_EQ(m.to_client("security.selinux"), "security.selinux");
}

TEST(XattrMap, BadRulesAreRefusedNamingThem) {
  auto refused = [](const char* text) {
    try {
      XattrMap::parse(text);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(refused("").find("no rules"), std::string::npos);
  EXPECT_NE(refused(":rename:all:a:b:").find("unknown type 'rename'"), std::string::npos);
  EXPECT_NE(refused(":ok:both:::").find("unknown scope 'both'"), std::string::npos);
  EXPECT_NE(refused(":ok:all::").find("unterminated"), std::string::npos);
  EXPECT_NE(refused(":map::p.: :ok:all:::").find("nothing may follow a map rule"), std::string::npos);
  // Names that meet no rule, one way or the other.
  EXPECT_NE(refused(":prefix:all:trusted.:user.t.:").find("catch-all"), std::string::npos);
  EXPECT_NE(refused(":ok:client:::").find("catch-all"), std::string::npos);
  EXPECT_EQ(refused(":ok:client::: :bad:server:::"), "");
}

}  // namespace
}  // namespace fsd
