// The closure view's lists (common/closure.h): what `nix-store -qR` and
// closureInfo write, and every line that names no store entry refused with
// its file and line.
#include <gtest/gtest.h>

#include <stdexcept>

#include "common/closure.h"
#include "fsd/vfs/export.h"
#include "tests/support/test_support.h"

namespace fsd {
namespace {

using fsd::testing::TempDir;
using fsd::testing::write_file;

TEST(Closure, ListsNameTheirLastComponent) {
  Closure c;
  c.add_list(
      "/nix/store/aaaa-glibc-2.38\n"
      "/nix/store/bbbb-bash-5.2/\r\n"
      "\n"
      "# a comment\n"
      "  cccc-bare-name  \n"
      "/nix/store/aaaa-glibc-2.38\n"  // repeated
      "/gnu/store/dddd-guile-3.0",  // no newline at the end
      "list");
  EXPECT_EQ(c.size(), 4u);
  for (const char* shown : {"aaaa-glibc-2.38", "bbbb-bash-5.2", "cccc-bare-name", "dddd-guile-3.0"})
    EXPECT_TRUE(c.shows(shown)) << shown;
  for (const char* hidden : {"aaaa-glibc", "aaaa-glibc-2.38x", "", "nix", "store", "# a comment", ".", ".."})
    EXPECT_FALSE(c.shows(hidden)) << hidden;
}

TEST(Closure, ALineNamingNoEntryIsRefusedWithItsPlace) {
  for (const char* bad : {"/nix/store/..", "/nix/store/.", ".."}) {
    Closure c;
    try {
      c.add_list(std::string("/nix/store/ok\n") + bad + "\n", "paths");
      ADD_FAILURE() << bad << " was taken";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("paths:2"), std::string::npos) << e.what();
    }
  }
}

TEST(Closure, LoadsAFileAClosureInfoOrADirectoryOfLists) {
  TempDir tmp;
  write_file(tmp.path() / "one", "/nix/store/a-x\n/nix/store/b-y\n");
  EXPECT_EQ(Closure::load((tmp.path() / "one").string()).size(), 2u);

  // closureInfo: store-paths alone; registration's other lines are not names.
  write_file(tmp.path() / "info/store-paths", "/nix/store/a-x\n");
  write_file(tmp.path() / "info/registration", "/nix/store/a-x\nsha256:0abc\n42\n\n0\n");
  Closure info = Closure::load((tmp.path() / "info").string());
  EXPECT_EQ(info.size(), 1u);
  EXPECT_TRUE(info.shows("a-x"));

  write_file(tmp.path() / "lists/vm", "/nix/store/a-x\n");
  write_file(tmp.path() / "lists/tools", "/nix/store/c-z\n/nix/store/a-x\n");
  Closure both = Closure::load((tmp.path() / "lists").string());
  EXPECT_EQ(both.size(), 2u);
  EXPECT_TRUE(both.shows("c-z"));

  EXPECT_THROW(Closure::load((tmp.path() / "missing").string()), std::runtime_error);
  write_file(tmp.path() / "empty", "# nothing\n\n");
  EXPECT_THROW(Closure::load((tmp.path() / "empty").string()), std::runtime_error);
  write_file(tmp.path() / "bad", "/nix/store/a-x\n/nix/store/..\n");
  try {
    Closure::load((tmp.path() / "bad").string());
    ADD_FAILURE() << "a bad list was taken";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("bad:2"), std::string::npos) << e.what();
  }
}

TEST(ParseExport, AClosureIsForReadOnlyExportsAndTakesAnyFileName) {
  auto e = parse_export("store=/nix/store,ro,closure=/tmp/a,,b");
  EXPECT_EQ(e.closure, "/tmp/a,b");
  EXPECT_TRUE(e.read_only);
  EXPECT_EQ(parse_export("store=/s,closure=/c,ro").closure, "/c");  // in any order
  EXPECT_THROW(parse_export("store=/nix/store,closure=/tmp/a"), std::invalid_argument);
  EXPECT_THROW(parse_export("store=/nix/store,ro,closure="), std::invalid_argument);
}

}  // namespace
}  // namespace fsd
