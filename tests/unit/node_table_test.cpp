// NodeTable: nodes by (dev, ino), their locations, and the bounded cache of
// O_PATH fds with reopening by name, on a temporary tree.
#include "fsd/vfs/node_table.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/support/test_support.h"

namespace fsd {
namespace {

using testing::TempDir;

Fd open_path(const std::string& path) { return Fd(::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC)); }

struct statx stat_of(int fd) {
  struct statx st{};
  EXPECT_EQ(::statx(fd, "", AT_EMPTY_PATH, kNodeStatxMask, &st), 0);
  return st;
}

class NodeTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 8; i++) touch("f" + std::to_string(i));
  }
  void touch(const std::string& name) { std::ofstream(dir.str() + "/" + name) << name; }
  NodeTable& table(unsigned cache = 256) {
    if (!table_) table_.emplace(open_path(dir.str()), NodeTable::Options{.path_fd_cache = cache}, "'the test tree'");
    return *table_;
  }
  // What a lookup does: opens `name` in the root and interns it.
  NodeRef look_up(const std::string& name) {
    Fd fd = open_path(dir.str() + "/" + name);
    EXPECT_TRUE(fd.valid()) << name;
    auto st = stat_of(fd.get());
    return table().intern(std::move(fd), st, table().root(), name);
  }
  ino_t ino_of(const PathFd& fd) { return stat_of(fd.get()).stx_ino; }

  TempDir dir;
  std::optional<NodeTable> table_;
};

TEST_F(NodeTableTest, TheRootIsANodeFromTheStart) {
  NodeTable& t = table();
  ASSERT_TRUE(t.root());
  EXPECT_TRUE(t.root()->is_root());
  EXPECT_TRUE(t.root()->is_dir());
  EXPECT_EQ(t.stats().nodes, 1u);
  auto [parent, name] = t.location(*t.root());
  EXPECT_FALSE(parent);
}

TEST_F(NodeTableTest, OneNodePerInodeLivingAsLongAsItsReferences) {
  NodeTable& t = table();
  NodeRef a = look_up("f0");
  NodeRef again = look_up("f0");
  EXPECT_EQ(a, again);
  EXPECT_EQ(t.stats().nodes, 2u);
  EXPECT_EQ(t.find(a->key()), a);
  ::link((dir.str() + "/f0").c_str(), (dir.str() + "/hard").c_str());
  NodeRef link = look_up("hard");
  EXPECT_EQ(link, a);  // the same inode by another name: the same node, last seen as "hard"
  EXPECT_EQ(t.location(*a).second, "hard");
  Node::Key key = a->key();
  a.reset();
  again.reset();
  EXPECT_EQ(t.stats().nodes, 2u);
  link.reset();
  EXPECT_EQ(t.stats().nodes, 1u);
  EXPECT_FALSE(t.find(key));
}

TEST_F(NodeTableTest, TheFdCacheStaysWithinItsBoundAndReopensByName) {
  NodeTable& t = table(2);
  std::vector<NodeRef> nodes;
  std::vector<ino_t> inos;
  for (int i = 0; i < 8; i++) {
    nodes.push_back(look_up("f" + std::to_string(i)));
    inos.push_back(nodes.back()->ino);
    EXPECT_LE(t.stats().path_fds, 2u);
  }
  EXPECT_EQ(t.stats().reopen_by_name, 0u);
  for (int i = 0; i < 8; i++) {
    auto pfd = t.path_fd(*nodes[i]);
    ASSERT_TRUE(pfd) << i;
    EXPECT_EQ(ino_of(*pfd), inos[i]);
  }
  EXPECT_GE(t.stats().reopen_by_name, 6u);
  EXPECT_LE(t.stats().path_fds, 2u);
}

TEST_F(NodeTableTest, APinnedFdIsNeverEvicted) {
  NodeTable& t = table(1);
  NodeRef a = look_up("f0");
  auto pinned = t.path_fd(*a);
  ASSERT_TRUE(pinned);
  int fd = pinned->get();
  for (int i = 1; i < 8; i++) look_up("f" + std::to_string(i));
  EXPECT_EQ(::fcntl(fd, F_GETFD), FD_CLOEXEC);  // still open
  EXPECT_EQ(ino_of(*pinned), a->ino);
}

TEST_F(NodeTableTest, AnEvictedNodeWhoseNameNowLeadsElsewhereIsStale) {
  NodeTable& t = table(1);
  NodeRef a = look_up("f0");
  NodeRef b = look_up("f1");  // evicts f0's fd
  ASSERT_EQ(::rename((dir.str() + "/f0").c_str(), (dir.str() + "/moved").c_str()), 0);
  touch("f0");  // another inode under the old name
  auto pfd = t.path_fd(*a);
  ASSERT_FALSE(pfd);
  EXPECT_EQ(pfd.error(), -ESTALE);
  // Seen under its new name, it is found again.
  Fd fd = open_path(dir.str() + "/moved");
  NodeRef found = t.seen(Node::Key{dev_of(stat_of(fd.get())), stat_of(fd.get()).stx_ino}, t.root(), "moved");
  EXPECT_EQ(found, a);
  look_up("f1");
  pfd = t.path_fd(*a);
  ASSERT_TRUE(pfd);
  EXPECT_EQ(ino_of(*pfd), a->ino);
}

TEST_F(NodeTableTest, ParentsAreKeptForDotDotAndReopening) {
  ASSERT_EQ(::mkdir((dir.str() + "/d").c_str(), 0755), 0);
  touch("d/inner");
  NodeTable& t = table(1);
  NodeRef d = look_up("d");
  Fd fd = open_path(dir.str() + "/d/inner");
  auto st = stat_of(fd.get());
  NodeRef inner = t.intern(std::move(fd), st, d, "inner");
  EXPECT_EQ(t.parent(*inner), d);
  EXPECT_EQ(t.parent(*d), t.root());
  d.reset();  // the child keeps its parent alive
  EXPECT_EQ(t.stats().nodes, 3u);
  look_up("f0");  // evicts inner's fd (and d's)
  auto pfd = t.path_fd(*inner);  // reopened through d, reopened through the root
  ASSERT_TRUE(pfd);
  EXPECT_EQ(ino_of(*pfd), inner->ino);
}

TEST_F(NodeTableTest, UniqueInosAreTheInoOnTheRootsDevice) {
  NodeTable& t = table();
  NodeRef a = look_up("f0");
  EXPECT_EQ(t.unique_ino(a->dev, a->ino), a->ino);
  uint64_t other = t.unique_ino(a->dev + 1, a->ino);
  EXPECT_NE(other, a->ino);
  EXPECT_EQ(t.unique_ino(a->dev + 1, a->ino), other);  // stable
  EXPECT_NE(t.unique_ino(a->dev + 2, a->ino), other);  // and distinct per device
}

TEST_F(NodeTableTest, TheRootMovesOnlyToTheSameDirectoryAndOnlyBeforeUse) {
  NodeTable& t = table();
  EXPECT_THROW(t.move_root(open_path(dir.str() + "/f0")), std::runtime_error);
  ASSERT_EQ(::mkdir((dir.str() + "/other").c_str(), 0755), 0);
  try {
    t.move_root(open_path(dir.str() + "/other"));
    FAIL() << "moved to another directory";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("'the test tree' is no longer the directory"), std::string::npos)
        << e.what();
  }
  Fd same = open_path(dir.str());
  int fd = same.get();
  t.move_root(std::move(same));
  EXPECT_EQ(t.root_fd(), fd);
  NodeRef a = look_up("f0");
  EXPECT_THROW(t.move_root(open_path(dir.str())), std::runtime_error);  // nodes in use now
}

TEST_F(NodeTableTest, ARootThatIsNoDirectoryIsRefusedByName) {
  try {
    NodeTable t(open_path(dir.str() + "/f0"), {}, "'f0'");
    FAIL() << "a file became a root";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "'f0' is not a directory");
  }
}

}  // namespace
}  // namespace fsd
