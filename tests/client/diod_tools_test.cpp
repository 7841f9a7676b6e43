// diod's userspace 9p clients (diodls, diodcat) against an fsd process over
// TCP: a real third-party 9P2000.L client. Results are compared with the
// host files byte for byte.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <set>
#include <sstream>

#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

std::string tool(const std::string& name) {
  for (const char* dir : {"/usr/sbin/", "/usr/bin/", "/sbin/"}) {
    std::string p = dir + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

class DiodTools : public ::testing::Test {
 protected:
  void SetUp() override {
    diodls_ = tool("diodls");
    diodcat_ = tool("diodcat");
    ASSERT_FALSE(diodls_.empty() || diodcat_.empty()) << "diod's client tools are missing: run scripts/setup";
    write_file(tree_.path() / "hello.txt", "hello from fsd\n");
    write_file(tree_.path() / "big.bin", random_bytes(3 * 1024 * 1024 + 17, 42));
    write_file(tree_.path() / "empty", "");
    write_file(tree_.path() / "sub/inner.txt", "inner\n");
    write_file(tree_.path() / "sub/deeper/data.bin", random_bytes(100000, 43));
    // A TCP client acts as nobody (fsd cannot tell who it is): the tree is
    // readable by all, as a read-only export for anyone would be.
    std::filesystem::permissions(tree_.path(), std::filesystem::perms(0755));
    fsd_ = std::make_unique<FsdProcess>(FsdProcess::Options{
        .args = {"--export", "tree=" + tree_.str() + ",ro", "--listen", "tcp:127.0.0.1:0"}});
    port_ = fsd_->wait_listening("tcp:127.0.0.1:");
  }

  std::string server() const { return "127.0.0.1:" + port_; }

  TempDir tree_;
  std::unique_ptr<FsdProcess> fsd_;
  std::string port_, diodls_, diodcat_;
};

TEST_F(DiodTools, ListsWhatTheHostHas) {
  for (std::string dir : {"", "sub", "sub/deeper"}) {
    SCOPED_TRACE("dir '" + dir + "'");
    int status;
    std::string out = run_command(diodls_ + " -t 20 -s " + server() + " -a tree " + dir, &status);
    ASSERT_EQ(status, 0) << out << fsd_->log();
    std::set<std::string> got;
    for (auto& l : lines(out))
      if (l != "." && l != "..") got.insert(l);
    std::set<std::string> want;
    for (auto& e : std::filesystem::directory_iterator(tree_.path() / dir)) want.insert(e.path().filename().string());
    EXPECT_EQ(got, want);
  }
}

TEST_F(DiodTools, LongListingShowsHostSizes) {
  int status;
  std::string out = run_command(diodls_ + " -t 20 -l -s " + server() + " -a tree", &status);
  ASSERT_EQ(status, 0) << out;
  int checked = 0;
  for (auto& l : lines(out)) {
    std::istringstream in(l);
    std::vector<std::string> f;
    for (std::string w; in >> w;) f.push_back(w);
    ASSERT_GE(f.size(), 6u) << l;
    std::string name = f.back();
    if (name == "." || name == "..") continue;
    struct stat st{};
    ASSERT_EQ(::lstat((tree_.path() / name).c_str(), &st), 0) << name;
    if (S_ISREG(st.st_mode)) {
      EXPECT_EQ(f[4], std::to_string(st.st_size)) << l;
      checked++;
    }
  }
  EXPECT_EQ(checked, 3);
}

TEST_F(DiodTools, CatMatchesHostBytesAtSeveralMsizes) {
  for (const char* msize : {"8192", "65536", "1048576"}) {
    for (const char* file : {"hello.txt", "big.bin", "empty", "sub/inner.txt", "sub/deeper/data.bin"}) {
      SCOPED_TRACE(std::string(file) + " msize " + msize);
      int status;
      std::string out = run_command(diodcat_ + " -t 20 -m " + msize + " -s " + server() + " -a tree " + file, &status);
      ASSERT_EQ(status, 0) << fsd_->log();
      std::string want = read_file(tree_.path() / file);
      ASSERT_EQ(out.size(), want.size());
      EXPECT_TRUE(out == want);
    }
  }
}

TEST_F(DiodTools, AnameCanBeTheHostPath) {
  int status;
  std::string out = run_command(diodcat_ + " -t 20 -s " + server() + " -a " + tree_.str() + " hello.txt", &status);
  ASSERT_EQ(status, 0);
  EXPECT_EQ(out, "hello from fsd\n");
}

TEST_F(DiodTools, UnknownExportAndMissingFileFailCleanly) {
  int status;
  run_command(diodls_ + " -t 20 -s " + server() + " -a nosuch 2>/dev/null", &status);
  EXPECT_NE(status, 0);
  run_command(diodcat_ + " -t 20 -s " + server() + " -a tree nosuch.txt 2>/dev/null", &status);
  EXPECT_NE(status, 0);
  // fsd is still serving
  std::string out = run_command(diodcat_ + " -t 20 -s " + server() + " -a tree hello.txt", &status);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(out, "hello from fsd\n");
}

}  // namespace
}  // namespace fsd::testing
