// FileBudget: open files' fds within a budget, reclaimed from idle files
// and opened again on use, on a temporary tree.
#include "fsd/vfs/fd_budget.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include "fsd/vfs/node_table.h"
#include "tests/support/test_support.h"

namespace fsd {
namespace {

using testing::TempDir;

class FileBudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 4; i++) testing::write_file(dir.path() / name(i), "content of " + name(i));
  }
  static std::string name(int i) { return "f" + std::to_string(i); }
  // `path_fds`: the node table's cache of O_PATH fds.
  FileBudget& budget(unsigned n, unsigned path_fds = 256) {
    nodes.emplace(Fd(::open(dir.str().c_str(), O_PATH | O_CLOEXEC)), NodeTable::Options{.path_fd_cache = path_fds},
                  "'tree'");
    budget_.emplace(*nodes, n);
    return *budget_;
  }
  // What Vfs::open does: a reserved fd, opened, adopted.
  OpenFile open(const std::string& nm, bool special = false) {
    EXPECT_TRUE(budget_->reserve()) << nm;
    std::string path = dir.str() + "/" + nm;
    Fd pfd(::open(path.c_str(), O_PATH | O_CLOEXEC));
    struct statx st{};
    EXPECT_EQ(::statx(pfd.get(), "", AT_EMPTY_PATH, kNodeStatxMask, &st), 0);
    NodeRef node = nodes->intern(std::move(pfd), st, nodes->root(), nm);
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    EXPECT_TRUE(fd.valid());
    return budget_->adopt(std::move(fd), std::move(node), O_RDONLY, dev_of(st), special);
  }
  std::string read_through(const OpenFile& f) {
    auto u = budget_->use(f);
    if (!u) return "error " + std::to_string(u.error());
    char buf[64];
    ssize_t n = ::pread(u->fd(), buf, sizeof buf, 0);
    return n < 0 ? "read failed" : std::string(buf, n);
  }

  TempDir dir;
  std::optional<NodeTable> nodes;
  std::optional<FileBudget> budget_;
};

TEST_F(FileBudgetTest, ASpentBudgetWithNothingToReclaimIsEmfile) {
  FileBudget& b = budget(2);
  ASSERT_TRUE(b.reserve());
  ASSERT_TRUE(b.reserve());
  auto r = b.reserve();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), -EMFILE);
  b.unreserve();
  EXPECT_TRUE(b.reserve());
  EXPECT_EQ(b.open(), 2u);
}

TEST_F(FileBudgetTest, AnIdleFileLendsItsFdAndGetsItBackOnUse) {
  FileBudget& b = budget(2);
  std::vector<OpenFile> files;
  for (int i = 0; i < 4; i++) files.push_back(open(name(i)));  // the clock reclaims as it goes
  EXPECT_LE(b.open(), 2u);
  EXPECT_GE(b.reclaimed(), 2u);
  for (int i = 0; i < 4; i++) EXPECT_EQ(read_through(files[i]), "content of " + name(i)) << i;
  EXPECT_GE(b.reopened(), 2u);
  EXPECT_LE(b.open(), 2u);
  files.clear();
  EXPECT_EQ(b.open(), 0u);
}

TEST_F(FileBudgetTest, AFileInUseKeepsItsFd) {
  FileBudget& b = budget(1);
  OpenFile a = open(name(0));
  auto using_a = b.use(a);
  ASSERT_TRUE(using_a);
  auto r = b.reserve();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), -EMFILE);
  EXPECT_EQ(b.reclaimed(), 0u);
}

TEST_F(FileBudgetTest, SpecialFilesAreNeverReclaimed) {
  FileBudget& b = budget(1);
  OpenFile fifo_like = open(name(0), /*special=*/true);
  auto r = b.reserve();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), -EMFILE);
}

TEST_F(FileBudgetTest, AFileWithNoNameLeftKeepsItsFd) {
  FileBudget& b = budget(1);
  OpenFile a = open(name(0));
  ASSERT_EQ(::unlink((dir.str() + "/" + name(0)).c_str()), 0);
  auto r = b.reserve();  // cannot take a's: it could never be opened again
  ASSERT_FALSE(r);
  EXPECT_EQ(read_through(a), "content of f0");
}

TEST_F(FileBudgetTest, RemovingANameFirstReopensItsReclaimedFiles) {
  FileBudget& b = budget(1);
  OpenFile a = open(name(0));
  OpenFile other = open(name(1));  // reclaims a's fd
  ASSERT_EQ(b.reclaimed(), 1u);
  Fd root(::open(dir.str().c_str(), O_PATH | O_CLOEXEC));
  b.keep_files_of(root.get(), name(0).c_str());  // what an unlink does first
  EXPECT_EQ(b.reopened(), 1u);
  ASSERT_EQ(::unlink((dir.str() + "/" + name(0)).c_str()), 0);
  EXPECT_EQ(read_through(a), "content of f0");
}

// A node whose O_PATH fd is still cached reopens its own inode, whatever
// its name; one whose fd was evicted too goes by name, which now leads to
// another file (the old one moved away on the host, behind fsd's back).
TEST_F(FileBudgetTest, AReclaimedFileWhoseNameLeadsElsewhereIsStale) {
  FileBudget& b = budget(1, /*path_fds=*/0);
  OpenFile a = open(name(0));
  OpenFile other = open(name(1));  // reclaims a's fd
  ASSERT_EQ(b.reclaimed(), 1u);
  other = OpenFile();  // room to reopen
  ASSERT_EQ(::rename((dir.str() + "/" + name(0)).c_str(), (dir.str() + "/moved").c_str()), 0);
  testing::write_file(dir.path() / name(0), "another file");
  std::string seen = read_through(a);
  EXPECT_EQ(seen, "error " + std::to_string(-ESTALE));
}

TEST_F(FileBudgetTest, AnInvalidOpenFileIsEbadf) {
  FileBudget& b = budget(1);
  auto u = b.use(OpenFile());
  ASSERT_FALSE(u);
  EXPECT_EQ(u.error(), -EBADF);
}

}  // namespace
}  // namespace fsd
