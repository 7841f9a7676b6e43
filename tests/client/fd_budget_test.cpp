// fsd under RLIMIT_NOFILE 1024 serves a client that walks, and keeps fids
// for, 100,000 files: fds are a bounded cache, not one per file.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "fsd/client/p9_client.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

constexpr int kDirs = 100;
constexpr int kFilesPerDir = 1000;

TEST(FdBudget, HundredThousandFilesUnderNofile1024) {
  TempDir tmp;
  auto t0 = std::chrono::steady_clock::now();
  auto secs = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  auto tree = tmp.path() / "tree";
  for (int d = 0; d < kDirs; d++) {
    auto dir = tree / ("d" + std::to_string(d));
    std::filesystem::create_directories(dir);
    for (int f = 0; f < kFilesPerDir; f++) {
      std::string content = std::to_string(d * kFilesPerDir + f);
      int fd = ::open((dir / ("f" + std::to_string(f))).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
      ::close(fd);
    }
  }
  std::printf("built the tree in %.1f s\n", secs());
  std::string sock = (tmp.path() / "9p.sock").string();
  FsdProcess fsd({.args = {"--export", "t=" + tree.string() + ",ro", "--listen", "unix:" + sock},
                  .nofile = 1024});
  fsd.wait_listening("unix:");

  auto c = p9::Client::connect_unix(sock);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->version(1 << 20).ok());
  const uint32_t root = c->new_fid();
  ASSERT_TRUE(c->attach(root, "t").ok());

  // Pass 1: walk to every file and keep its fid.
  struct Held {
    uint32_t fid;
    int index;
  };
  std::vector<Held> held;
  held.reserve(kDirs * kFilesPerDir);
  size_t max_fds = 0;
  for (int d = 0; d < kDirs; d++) {
    std::string dname = "d" + std::to_string(d);
    uint32_t dfid = c->new_fid();
    auto dq = c->walk(root, dfid, dname);
    ASSERT_TRUE(dq.ok()) << dname << ": " << std::strerror(-dq.error()) << "\n" << fsd.log();
    ASSERT_TRUE(c->lopen(dfid, O_RDONLY | O_DIRECTORY).ok());
    auto entries = c->readdir_all(dfid);
    ASSERT_TRUE(entries.ok());
    ASSERT_EQ(entries->size(), static_cast<size_t>(kFilesPerDir + 2));
    for (auto& e : *entries) {
      if (e.name == "." || e.name == "..") continue;
      uint32_t fid = c->new_fid();
      auto q = c->walk(dfid, fid, e.name);
      ASSERT_TRUE(q.ok()) << dname << "/" << e.name << ": " << std::strerror(-q.error());
      auto a = c->getattr(fid);
      ASSERT_TRUE(a.ok());
      int index = d * kFilesPerDir + std::stoi(e.name.substr(1));
      ASSERT_EQ(a->size, std::to_string(index).size());
      held.push_back({fid, index});
    }
    ASSERT_TRUE(c->clunk(dfid).ok());
    if (d % 10 == 0) max_fds = std::max(max_fds, fsd.open_fds());
  }
  ASSERT_EQ(held.size(), static_cast<size_t>(kDirs * kFilesPerDir));

  std::printf("pass 1 (walk + getattr, fids kept) done at %.1f s\n", secs());
  // Pass 2: every held fid still works, though its fd was evicted long ago.
  for (size_t i = 0; i < held.size(); i++) {
    auto a = c->getattr(held[i].fid);
    ASSERT_TRUE(a.ok()) << "fid " << held[i].fid << ": " << std::strerror(-a.error());
    if (i % 997 == 0) {
      uint32_t fid = c->new_fid();
      ASSERT_TRUE(c->walk(held[i].fid, fid, "").ok());
      ASSERT_TRUE(c->lopen(fid, O_RDONLY).ok());
      EXPECT_EQ(*c->read_all(fid), std::to_string(held[i].index));
      ASSERT_TRUE(c->clunk(fid).ok());
    }
  }
  max_fds = std::max(max_fds, fsd.open_fds());
  std::printf("pass 2 (getattr of every held fid) done at %.1f s\n", secs());
  RecordProperty("fsd_max_open_fds", static_cast<int>(max_fds));
  std::printf("fsd held %zu fids with at most %zu open fds (RLIMIT_NOFILE 1024)\n", held.size(), max_fds);
  EXPECT_LT(max_fds, 1024u);
  EXPECT_EQ(fsd.stop(), 0) << fsd.log();
}

}  // namespace
}  // namespace fsd::testing
