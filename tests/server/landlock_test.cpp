// fsd's Landlock confinement (fsd/core/landlock.h), tried in a forked child:
// what it may still do beneath its trees, and what it may no longer do
// anywhere else.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <sstream>

#include "common/fd.h"
#include "fsd/core/landlock.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

// Runs `body` in a forked child and returns the errno of each step it
// reports (0 where the step succeeded), read from a pipe.
template <class F>
std::map<std::string, int> in_child(F body) {
  int p[2];
  EXPECT_EQ(::pipe(p), 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    std::ostringstream out;
    auto step = [&](const std::string& name, int rc) { out << name << "=" << (rc < 0 ? errno : 0) << "\n"; };
    body(step);
    std::string text = out.str();
    (void)!::write(p[1], text.data(), text.size());
    ::_exit(0);
  }
  ::close(p[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child died";
  std::map<std::string, int> got;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    auto eq = line.find('=');
    got[line.substr(0, eq)] = std::stoi(line.substr(eq + 1));
  }
  return got;
}

TEST(Landlock, ConfinesFileAccessToTheTrees) {
  if (landlock_abi() < 2) GTEST_SKIP() << "the kernel has no Landlock (version 2 or later)";
  TempDir tmp;
  auto rw = tmp.path() / "rw", ro = tmp.path() / "ro", outside = tmp.path() / "outside";
  write_file(rw / "sub/file", "rw\n");
  write_file(ro / "file", "ro\n");
  write_file(outside / "file", "outside\n");
  auto got = in_child([&](auto step) {
    Fd rw_dir(::open(rw.c_str(), O_PATH | O_DIRECTORY)), ro_dir(::open(ro.c_str(), O_PATH | O_DIRECTORY));
    LandlockResult r = confine_with_landlock({{.dir = rw_dir.get(), .writable = true}, {.dir = ro_dir.get()}});
    step("confined", r.confined ? 0 : (errno = ENOSYS, -1));
    auto at = [](const std::filesystem::path& p) { return p.string(); };
    int fd = ::open(at(rw / "sub/file").c_str(), O_RDWR);
    step("rw: open for writing", fd);
    if (fd >= 0) step("rw: truncate", ::ftruncate(fd, 1)), ::close(fd);
    fd = ::open(at(rw / "made").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
    step("rw: create", fd);
    if (fd >= 0) ::close(fd);
    step("rw: mkdir", ::mkdir(at(rw / "dir").c_str(), 0700));
    step("rw: rename between directories", ::rename(at(rw / "made").c_str(), at(rw / "dir/moved").c_str()));
    step("rw: link between directories", ::link(at(rw / "dir/moved").c_str(), at(rw / "sub/linked").c_str()));
    step("rw: symlink", ::symlink("anywhere", at(rw / "sym").c_str()));
    step("rw: fifo", ::mkfifo(at(rw / "fifo").c_str(), 0600));
    step("rw: unlink", ::unlink(at(rw / "sub/linked").c_str()));
    step("rw: rmdir", ::mkdir(at(rw / "gone").c_str(), 0700) == 0 ? ::rmdir(at(rw / "gone").c_str()) : -1);
    step("rw: char device", ::mknod(at(rw / "null").c_str(), S_IFCHR | 0600, makedev(1, 3)));
    fd = ::open(at(ro / "file").c_str(), O_RDONLY);
    step("ro: read", fd);
    if (fd >= 0) ::close(fd);
    step("ro: write", ::open(at(ro / "file").c_str(), O_WRONLY));
    step("ro: create", ::open(at(ro / "new").c_str(), O_WRONLY | O_CREAT, 0600));
    step("ro: rename into rw", ::rename(at(ro / "file").c_str(), at(rw / "stolen").c_str()));
    step("outside: read", ::open(at(outside / "file").c_str(), O_RDONLY));
    step("outside: create", ::open(at(outside / "new").c_str(), O_WRONLY | O_CREAT, 0600));
    step("outside: rename into rw", ::rename(at(outside / "file").c_str(), at(rw / "pulled").c_str()));
    step("outside: /etc/passwd", ::open("/etc/passwd", O_RDONLY));
    fd = ::open("/proc/self/status", O_RDONLY);
    step("/proc", fd);
    if (fd >= 0) ::close(fd);
    // A file beneath a tree, reopened through /proc: its own path decides.
    Fd held(::open(at(rw / "sub/file").c_str(), O_PATH));
    fd = ::open(("/proc/self/fd/" + std::to_string(held.get())).c_str(), O_RDWR);
    step("rw: reopened through /proc", fd);
    if (fd >= 0) ::close(fd);
    step("execute", ::execl("/bin/true", "true", nullptr));
    if (r.abi >= 4) {
      int s = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{.sin_family = AF_INET, .sin_port = 0, .sin_addr = {htonl(INADDR_LOOPBACK)}};
      step("tcp bind", ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a));
    }
  });
  SCOPED_TRACE([&] {
    std::string all;
    for (auto& [k, v] : got) all += k + ": " + std::to_string(v) + "\n";
    return all;
  }());
  ASSERT_EQ(got["confined"], 0);
  for (const char* allowed : {"rw: open for writing", "rw: truncate", "rw: create", "rw: mkdir",
                              "rw: rename between directories", "rw: link between directories", "rw: symlink",
                              "rw: fifo", "rw: unlink", "rw: rmdir", "ro: read", "/proc", "rw: reopened through /proc"})
    EXPECT_EQ(got.at(allowed), 0) << allowed;
  for (const char* denied : {"rw: char device", "ro: write", "ro: create", "ro: rename into rw", "outside: read",
                             "outside: create", "outside: rename into rw", "outside: /etc/passwd", "execute"})
    EXPECT_NE(got.at(denied), 0) << denied;
  if (got.contains("tcp bind")) {
    EXPECT_EQ(got["tcp bind"], EACCES);
  }
  EXPECT_TRUE(std::filesystem::exists(outside / "file"));
  EXPECT_FALSE(std::filesystem::exists(outside / "new"));
  EXPECT_FALSE(std::filesystem::exists(rw / "pulled"));
}

}  // namespace
}  // namespace fsd::testing
