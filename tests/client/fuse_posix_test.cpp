// A POSIX behaviour suite run twice: on a host FUSE mount of an fsd export
// (the kernel's FUSE driver talking to fsd's fuse::Server) and on a plain
// host directory. Each run records what every call returned; the two
// transcripts must be identical. Repeated for each cache policy.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>

#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

constexpr long kFuseSuperMagic = 0x65735546;

// Records "step: outcome" lines. Outcomes name errno values symbolically so
// a mismatch reads clearly.
class Transcript {
 public:
  void rec(const std::string& step, const std::string& outcome) { lines.push_back(step + ": " + outcome); }
  void rc(const std::string& step, long r) { rec(step, r < 0 ? err() : "ok"); }
  static std::string err() { return std::string("error ") + strerrorname_np(errno); }
  std::vector<std::string> lines;
};

std::string describe_stat(const char* path, bool follow = false) {
  struct stat st{};
  if ((follow ? ::stat(path, &st) : ::lstat(path, &st)) < 0) return Transcript::err();
  char buf[256];
  std::snprintf(buf, sizeof buf, "mode=%o nlink=%lu uid=%u gid=%u size=%lld", st.st_mode,
                static_cast<unsigned long>(st.st_nlink), st.st_uid, st.st_gid, static_cast<long long>(st.st_size));
  return buf;
}

std::string content(const char* path) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Transcript::err();
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  std::string shown;
  for (char c : out.substr(0, 64)) shown += (c >= 32 && c < 127) ? c : '.';
  return "len=" + std::to_string(out.size()) + " hash=" + std::to_string(std::hash<std::string>{}(out)) + " '" + shown + "'";
}

std::string listing(const char* path) {
  DIR* d = ::opendir(path);
  if (!d) return Transcript::err();
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) names.push_back(e->d_name);
  ::closedir(d);
  std::sort(names.begin(), names.end());
  std::string out;
  for (auto& n : names) out += n + " ";
  return out;
}

// The suite, run with the working directory at the tree under test.
std::vector<std::string> run_suite(const std::string& root) {
  Transcript t;
  if (::chdir(root.c_str()) != 0) return {"chdir failed"};

  // create, write, read
  int fd = ::open("f", O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0640);
  t.rc("create f", fd);
  t.rec("write f", std::to_string(::write(fd, "hello world", 11)));
  ::close(fd);
  t.rec("stat f", describe_stat("f"));
  t.rc("create f again with O_EXCL", ::open("f", O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0640));
  t.rc("open missing", ::open("missing", O_RDONLY | O_CLOEXEC));
  t.rec("read f", content("f"));
  fd = ::open("f", O_RDWR | O_CLOEXEC);
  char buf[64] = {};
  ssize_t got = ::pread(fd, buf, 5, 6);
  t.rec("pread f@6", std::to_string(got) + " " + std::string(buf, 5));
  t.rec("pwrite past end", std::to_string(::pwrite(fd, "X", 1, 20)));
  ::close(fd);
  t.rec("hole reads as zeros", content("f"));
  fd = ::open("f", O_WRONLY | O_APPEND | O_CLOEXEC);
  t.rec("append", std::to_string(::write(fd, "!", 1)));
  ::close(fd);
  t.rec("after append", content("f"));
  // truncate
  t.rc("truncate f 5", ::truncate("f", 5));
  t.rec("after truncate", content("f"));
  fd = ::open("f", O_RDWR | O_CLOEXEC);
  t.rc("ftruncate extend", ::ftruncate(fd, 8));
  t.rec("lseek end", std::to_string(::lseek(fd, 0, SEEK_END)));
  t.rc("fsync", ::fsync(fd));
  t.rc("fdatasync", ::fdatasync(fd));
  t.rc("fallocate", ::posix_fallocate(fd, 0, 4096) == 0 ? 0 : -1);
  ::close(fd);
  t.rec("after extend", content("f"));
  fd = ::open("f", O_WRONLY | O_TRUNC | O_CLOEXEC);
  ::close(fd);
  t.rec("after O_TRUNC", describe_stat("f"));
  // a larger file
  std::string big = random_bytes(3 * 1024 * 1024 + 5, 9);
  fd = ::open("big", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  size_t off = 0;
  while (off < big.size()) {
    ssize_t n = ::write(fd, big.data() + off, std::min<size_t>(big.size() - off, 1 << 20));
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  t.rec("big", content("big"));

  // directories
  t.rc("mkdir d", ::mkdir("d", 0750));
  t.rec("stat d", describe_stat("d"));
  t.rc("mkdir d again", ::mkdir("d", 0750));
  write_file("d/inner", "inner");
  t.rc("rmdir non-empty", ::rmdir("d"));
  t.rc("rmdir a file", ::rmdir("f"));
  t.rc("unlink a dir", ::unlink("d"));
  t.rc("open dir for writing", ::open("d", O_WRONLY | O_CLOEXEC));
  t.rc("create with long name", ::open(std::string(256, 'n').c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
  t.rc("create in missing dir", ::open("nodir/x", O_CREAT | O_WRONLY | O_CLOEXEC, 0644));

  // rename
  write_file("r1", "one");
  write_file("r2", "two");
  t.rc("rename r1 -> d/g", ::rename("r1", "d/g"));
  t.rec("old name gone", describe_stat("r1"));
  t.rec("new name", content("d/g"));
  t.rc("rename over existing", ::rename("r2", "d/g"));
  t.rec("replaced", content("d/g"));
  ::mkdir("e", 0755);
  t.rc("rename dir over file", ::rename("e", "d/g"));
  t.rc("rename file over dir", ::rename("d/g", "e"));
  write_file("x1", "x-one");
  write_file("x2", "x-two");
  t.rc("renameat2 noreplace", ::renameat2(AT_FDCWD, "x1", AT_FDCWD, "x2", RENAME_NOREPLACE));
  t.rc("renameat2 exchange", ::renameat2(AT_FDCWD, "x1", AT_FDCWD, "x2", RENAME_EXCHANGE));
  t.rec("x1 after exchange", content("x1"));
  t.rc("rename missing", ::rename("missing", "m2"));

  // links
  t.rc("link d/g -> h", ::link("d/g", "h"));
  t.rec("nlink after link", describe_stat("h"));
  t.rc("link to a dir", ::link("d", "dlink"));
  t.rc("link over existing", ::link("d/g", "x1"));
  t.rc("unlink h", ::unlink("h"));
  t.rec("nlink after unlink", describe_stat("d/g"));
  t.rc("symlink dangling", ::symlink("target-text", "s"));
  char lbuf[256];
  ssize_t ln = ::readlink("s", lbuf, sizeof lbuf);
  t.rec("readlink s", ln < 0 ? Transcript::err() : std::string(lbuf, static_cast<size_t>(ln)));
  t.rec("lstat s", describe_stat("s"));
  t.rec("stat s (dangling)", describe_stat("s", true));
  t.rc("symlink to file", ::symlink("d/g", "s2"));
  t.rec("stat through s2", describe_stat("s2", true));
  t.rec("read through s2", content("s2"));
  t.rc("readlink a file", ::readlink("x1", lbuf, sizeof lbuf));
  t.rc("symlink over existing", ::symlink("x", "x1"));
  t.rc("mkfifo", ::mkfifo("fifo", 0644));
  t.rec("stat fifo", describe_stat("fifo"));

  // attributes
  t.rc("chmod 0600", ::chmod("x1", 0600));
  t.rec("mode", describe_stat("x1"));
  t.rc("chmod dir 0700", ::chmod("e", 0700));
  t.rec("dir mode", describe_stat("e"));
  t.rc("chown", ::chown("x1", 1234, 5678));
  t.rec("owner", describe_stat("x1"));
  t.rc("lchown symlink", ::lchown("s", 4321, 8765));
  t.rec("symlink owner", describe_stat("s"));
  timespec ts[2] = {{1000000000, 123456789}, {2000000000, 987654321}};
  t.rc("utimensat", ::utimensat(AT_FDCWD, "x1", ts, 0));
  struct stat st{};
  ::stat("x1", &st);
  t.rec("times", std::to_string(st.st_atim.tv_sec) + "." + std::to_string(st.st_atim.tv_nsec) + " " +
                     std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec));
  timespec omit[2] = {{0, UTIME_OMIT}, {1500000000, 5}};
  t.rc("utimensat omit atime", ::utimensat(AT_FDCWD, "x1", omit, 0));
  ::stat("x1", &st);
  t.rec("times after omit", std::to_string(st.st_atim.tv_sec) + " " + std::to_string(st.st_mtim.tv_sec) + "." +
                                std::to_string(st.st_mtim.tv_nsec));
  t.rc("chmod missing", ::chmod("missing", 0644));

  // xattrs (user namespace)
  t.rc("setxattr", ::setxattr("x1", "user.k", "v", 1, 0));
  char xbuf[16] = {};
  ssize_t xn = ::getxattr("x1", "user.k", xbuf, sizeof xbuf);
  t.rec("getxattr", xn < 0 ? Transcript::err() : std::string(xbuf, static_cast<size_t>(xn)));
  t.rc("getxattr missing", ::getxattr("x1", "user.none", xbuf, sizeof xbuf));
  t.rc("setxattr create existing", ::setxattr("x1", "user.k", "w", 1, XATTR_CREATE));
  t.rc("removexattr", ::removexattr("x1", "user.k"));
  t.rc("getxattr removed", ::getxattr("x1", "user.k", xbuf, sizeof xbuf));

  // unlinked but open
  write_file("doomed", "still readable");
  fd = ::open("doomed", O_RDONLY | O_CLOEXEC);
  t.rc("unlink open file", ::unlink("doomed"));
  std::memset(buf, 0, sizeof buf);
  got = ::read(fd, buf, sizeof buf - 1);
  t.rec("read after unlink", std::to_string(got) + " " + buf);
  ::close(fd);

  // final listing
  t.rec("listing /", listing("."));
  t.rec("listing d", listing("d"));
  t.rc("rmdir e", ::rmdir("e"));
  t.rc("unlink fifo", ::unlink("fifo"));
  t.rec("final listing", listing("."));
  (void)!::chdir("/");
  return t.lines;
}

// ---- the same, call by call, as several users

struct User {
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;
};
const User kRoot{0, 0, {0}};
const User kAlice{2001, 2001, {2001, 3000}};  // in the shared group 3000
const User kBob{2002, 2002, {2002}};
const User kCarol{2003, 2003, {2003, 3000}};

// What `step` (returning its outcome) gives when run by `u` in a child
// process, with the working directory at `root`.
template <class F>
std::string as(const User& u, const std::string& root, F step) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  int status = run_as(
      u.uid, u.gid,
      [&] {
        ::close(fds[0]);
        ::umask(0);  // modes as asked
        if (::chdir(root.c_str()) != 0) return 1;
        std::string out = step();
        return ::write(fds[1], out.data(), out.size()) == static_cast<ssize_t>(out.size()) ? 0 : 1;
      },
      u.groups);
  ::close(fds[1]);
  std::string out;
  char buf[1024];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  return status == 0 ? out : "child failed (" + std::to_string(status) + ")";
}

std::string rc(long r) { return r < 0 ? Transcript::err() : "ok"; }
// Outcomes in the order they were made (a braced list is evaluated left to right).
std::string all(std::initializer_list<std::string> outcomes) {
  std::string out;
  for (const auto& o : outcomes) out += (out.empty() ? "" : " ") + o;
  return out;
}
std::string make(const char* path, mode_t mode) {
  int fd = ::open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode);
  if (fd < 0) return Transcript::err();
  (void)!::write(fd, "data", 4);
  ::close(fd);
  return describe_stat(path);
}
std::string append(const char* path) {
  int fd = ::open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return Transcript::err();
  ssize_t n = ::write(fd, "more", 4);
  ::close(fd);
  return n < 0 ? Transcript::err() : describe_stat(path);
}

// Ownership, set-group-ID inheritance, set-id clearing, permission errors,
// sticky directories and chown/chmod rules, each call made by the user a
// local file system would see.
std::vector<std::string> run_identity_suite(const std::string& root) {
  Transcript t;
  auto step = [&](const std::string& name, const User& u, auto f) { t.rec(name, as(u, root, f)); };
  auto by_root = [&](const std::string& name, auto f) { step(name, kRoot, f); };
  ::chmod(root.c_str(), 0777);

  // Created files, directories, symlinks and FIFOs belong to their creator,
  // with the mode asked for (setuid included).
  step("alice creates a", kAlice, [] { return make("a", 0640); });
  step("alice creates setuid", kAlice, [] { return make("asuid", 04755); });
  step("alice mkdir", kAlice, [] { return all({rc(::mkdir("adir", 0750)), describe_stat("adir")}); });
  step("alice symlink", kAlice, [] { return all({rc(::symlink("a", "alink")), describe_stat("alink")}); });
  step("alice mkfifo", kAlice, [] { return all({rc(::mkfifo("afifo", 0600)), describe_stat("afifo")}); });
  // Set-group-ID directories: the group is inherited, and subdirectories
  // keep the bit; a creator outside the group does not get setgid files.
  by_root("root makes sg", [] { return all({rc(::mkdir("sg", 0777)), rc(::chown("sg", 0, 3000)), rc(::chmod("sg", 02777))}); });
  step("alice creates in sg", kAlice, [] { return make("sg/a", 0644); });
  step("alice mkdir in sg", kAlice, [] { return all({rc(::mkdir("sg/sub", 0755)), describe_stat("sg/sub")}); });
  step("bob creates setgid in sg", kBob, [] { return make("sg/b", 02755); });
  // Permission errors owed to others.
  step("bob reads alice's 0640", kBob, [] { return content("a"); });
  step("carol reads it (not in alice's group)", kCarol, [] { return content("a"); });
  step("bob writes alice's", kBob, [] { return append("a"); });
  step("bob chmods alice's", kBob, [] { return rc(::chmod("a", 0666)); });
  step("bob chowns alice's to himself", kBob, [] { return rc(::chown("a", 2002, 2002)); });
  step("alice gives hers to bob", kAlice, [] { return rc(::chown("a", 2002, -1)); });
  step("alice chgrps to a group of hers", kAlice, [] { return all({rc(::chown("a", -1, 3000)), describe_stat("a")}); });
  step("carol reads it now (group 3000)", kCarol, [] { return content("a"); });
  step("alice chgrps to bob's group", kAlice, [] { return rc(::chown("a", -1, 2002)); });
  step("bob lists adir (0750)", kBob, [] { return listing("adir"); });
  step("bob creates in adir", kBob, [] { return make("adir/x", 0644); });
  step("bob access(R_OK) on a", kBob, [] { return rc(::access("a", R_OK)); });
  step("alice access(W_OK) on a", kAlice, [] { return rc(::access("a", W_OK)); });
  // chmod by a non-member of the file's group drops setgid.
  by_root("root gives a to alice:2002", [] { return rc(::chown("a", 2001, 2002)); });
  step("alice chmods setgid outside her groups", kAlice, [] { return all({rc(::chmod("a", 02755)), describe_stat("a")}); });
  // Times: only the owner sets them; anyone who may write sets "now".
  by_root("root makes shared 0666", [] { return all({make("shared", 0666), rc(::chown("shared", 2001, 2001))}); });
  step("bob sets alice's times", kBob, [] {
    timespec ts[2] = {{1000, 0}, {2000, 0}};
    return rc(::utimensat(AT_FDCWD, "shared", ts, 0));
  });
  step("bob touches alice's writable file", kBob, [] { return rc(::utimensat(AT_FDCWD, "shared", nullptr, 0)); });
  step("bob touches alice's 0640 file", kBob, [] { return rc(::utimensat(AT_FDCWD, "asuid", nullptr, 0)); });
  // Sticky directories: only the owner of a file (or the directory) removes
  // or renames it.
  by_root("root makes sticky", [] { return all({rc(::mkdir("tmp", 0777)), rc(::chmod("tmp", 01777))}); });
  step("alice creates in sticky", kAlice, [] { return make("tmp/af", 0666); });
  step("bob unlinks alice's in sticky", kBob, [] { return rc(::unlink("tmp/af")); });
  step("bob renames alice's in sticky", kBob, [] { return rc(::rename("tmp/af", "tmp/bf")); });
  step("bob renames over alice's in sticky", kBob, [] { return all({make("tmp/bf", 0644), rc(::rename("tmp/bf", "tmp/af"))}); });
  step("alice unlinks hers in sticky", kAlice, [] { return rc(::unlink("tmp/af")); });
  // Hard links to another's file (protected_hardlinks applies alike).
  step("bob links alice's setuid file", kBob, [] { return rc(::link("asuid", "tmp/blink")); });
  // Set-id bits go on a write, truncation or chown by someone without
  // CAP_FSETID, and stay for root.
  auto setid_file = [](const char* name) {
    return [name] { return all({make(name, 0777), rc(::chown(name, 2001, 3000)), rc(::chmod(name, 06777))}); };
  };
  by_root("root makes k1", setid_file("k1"));
  step("bob writes k1", kBob, [] { return append("k1"); });
  by_root("root makes k2", setid_file("k2"));
  step("bob truncates k2", kBob, [] { return all({rc(::truncate("k2", 1)), describe_stat("k2")}); });
  by_root("root makes k3", setid_file("k3"));
  step("bob opens k3 with O_TRUNC", kBob, [] {
    int fd = ::open("k3", O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
    return all({rc(fd), describe_stat("k3")});
  });
  by_root("root makes k4", setid_file("k4"));
  step("alice chowns k4 to a group of hers", kAlice, [] { return all({rc(::chown("k4", -1, 2001)), describe_stat("k4")}); });
  by_root("root makes k5", setid_file("k5"));
  by_root("root writes k5", [] { return append("k5"); });
  by_root("root makes k6", [] { return all({make("k6", 0777), rc(::chmod("k6", 02767))}); });
  step("bob writes k6 (setgid without group execute)", kBob, [] { return append("k6"); });
  // Privileged xattrs.
  step("alice sets trusted.x on hers", kAlice, [] { return rc(::setxattr("a", "trusted.x", "1", 1, 0)); });
  step("alice sets security.capability on hers", kAlice, [] {
    const char cap[20] = {1, 0, 0, 2, 0x40};
    return rc(::setxattr("asuid", "security.capability", cap, sizeof cap, 0));
  });
  // Device nodes (the export has ",devices"): root may make them, others not.
  by_root("root makes a char device", [] { return all({rc(::mknod("cdev", S_IFCHR | 0644, makedev(1, 3))), describe_stat("cdev")}); });
  step("alice makes a char device", kAlice, [] { return rc(::mknod("adev", S_IFCHR | 0644, makedev(1, 3))); });
  step("alice makes a block device", kAlice, [] { return rc(::mknod("bdev", S_IFBLK | 0644, makedev(7, 0))); });
  step("alice sets user.x on hers", kAlice, [] { return rc(::setxattr("a", "user.x", "1", 1, 0)); });
  step("bob sets user.x on alice's", kBob, [] { return rc(::setxattr("a", "user.x", "2", 1, 0)); });
  t.rec("final listing", listing(root.c_str()));
  return t.lines;
}

// The mount's transcript matches the plain directory's, step by step
// (FSD_DUMP_TRANSCRIPT=1 prints the mount's).
void expect_same_transcript(const std::vector<std::string>& plain, const std::vector<std::string>& fuse) {
  if (std::getenv("FSD_DUMP_TRANSCRIPT"))
    for (auto& l : fuse) std::printf("%s\n", l.c_str());
  ASSERT_EQ(plain.size(), fuse.size());
  for (size_t i = 0; i < plain.size(); i++) EXPECT_EQ(fuse[i], plain[i]) << "step " << i;
}

class FusePosix : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_EQ(::access("/dev/fuse", R_OK | W_OK), 0) << "/dev/fuse is needed for this test";
    std::filesystem::create_directories(tmp_.path() / "export");
    std::filesystem::create_directories(tmp_.path() / "mnt");
    std::filesystem::create_directories(tmp_.path() / "plain");
    fsd_ = std::make_unique<FsdProcess>(FsdProcess::Options{
        .args = {"--export", "x=" + (tmp_.path() / "export").string() + ",devices,cache=" + GetParam(), "--fuse-mount",
                 "x=" + (tmp_.path() / "mnt").string()}});
    fsd_->wait_for_log("mounted 'x'");
    struct statfs sf{};
    ASSERT_EQ(::statfs((tmp_.path() / "mnt").c_str(), &sf), 0);
    ASSERT_EQ(sf.f_type, kFuseSuperMagic);
  }
  void TearDown() override {
    if (fsd_) {
      EXPECT_EQ(fsd_->stop(), 0) << fsd_->log();
    }
    ::umount2((tmp_.path() / "mnt").c_str(), MNT_DETACH);  // only if fsd could not
  }

  TempDir tmp_;
  std::unique_ptr<FsdProcess> fsd_;
};

TEST_P(FusePosix, BehavesLikeAPlainDirectory) {
  auto plain = run_suite((tmp_.path() / "plain").string());
  auto fuse = run_suite((tmp_.path() / "mnt").string());
  expect_same_transcript(plain, fuse);
  // And what the mount shows is what the export holds.
  EXPECT_EQ(listing((tmp_.path() / "export").c_str()), listing((tmp_.path() / "plain").c_str()));
  EXPECT_EQ(content((tmp_.path() / "export/big").c_str()), content((tmp_.path() / "plain/big").c_str()));
}

TEST_P(FusePosix, UsersFareAsOnAPlainDirectory) {
  ::chmod(tmp_.path().c_str(), 0755);  // others reach the trees
  auto plain = run_identity_suite((tmp_.path() / "plain").string());
  auto fuse = run_identity_suite((tmp_.path() / "mnt").string());
  expect_same_transcript(plain, fuse);
}

// And with the writeback cache (the client's page cache holds writes).
INSTANTIATE_TEST_SUITE_P(CachePolicies, FusePosix,
                         ::testing::Values("never", "auto", "always", "auto,writeback", "always,writeback"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), ',', '_');
                           return n;
                         });

// With the writeback cache the client holds written data until it flushes
// (fsync here); without it every write reaches the host at once. Appends
// land at the end though fsd drops O_APPEND, and a write-only open works.
TEST(FuseWriteback, WritesWaitInTheClientsCacheUntilFsync) {
  for (bool writeback : {false, true}) {
    SCOPED_TRACE(writeback ? "writeback" : "write-through");
    TempDir tmp;
    write_file(tmp.path() / "export/log", "0123456789");
    std::filesystem::create_directories(tmp.path() / "mnt");
    FsdProcess fsd({.args = {"--export", "x=" + (tmp.path() / "export").string() + (writeback ? ",writeback" : ""),
                             "--fuse-mount", "x=" + (tmp.path() / "mnt").string()}});
    fsd.wait_for_log("mounted 'x'");
    std::string mnt = (tmp.path() / "mnt").string(), host = (tmp.path() / "export").string();
    int fd = ::open((mnt + "/new").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "cached", 6), 6);
    EXPECT_EQ(read_file(host + "/new"), writeback ? "" : "cached");
    ASSERT_EQ(::fsync(fd), 0);
    EXPECT_EQ(read_file(host + "/new"), "cached");
    ::close(fd);
    // Appends, through a write-only O_APPEND open.
    fd = ::open((mnt + "/log").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "ab", 2), 2);
    ASSERT_EQ(::write(fd, "cd", 2), 2);
    ::close(fd);
    EXPECT_EQ(content((mnt + "/log").c_str()), content((host + "/log").c_str()));
    EXPECT_EQ(read_file(host + "/log"), "0123456789abcd");
    EXPECT_EQ(fsd.stop(), 0);
    ::umount2(mnt.c_str(), MNT_DETACH);
  }
}

// SIGTERM ends fsd while a process still holds its mount (here the test,
// with a directory and a file open in it): the mount is detached, and
// what the holder kept answers ENOTCONN rather than keeping fsd alive.
TEST(FuseStop, ATermEndsFsdThoughTheMountIsHeld) {
  TempDir tmp;
  write_file(tmp.path() / "export/file", "content");
  std::filesystem::create_directories(tmp.path() / "mnt");
  std::string mnt = (tmp.path() / "mnt").string();
  FsdProcess fsd({.args = {"--export", "x=" + (tmp.path() / "export").string(), "--fuse-mount", "x=" + mnt}});
  fsd.wait_for_log("mounted 'x'");
  int dir = ::open(mnt.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dir, 0);
  int file = ::openat(dir, "file", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(file, 0);
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(fsd.stop(std::chrono::seconds(5)), 0);  // SIGKILL after 5 s: then the status is -1
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  char c;
  errno = 0;
  EXPECT_EQ(::pread(file, &c, 1, 0), -1);
  EXPECT_EQ(errno, ENOTCONN);
  struct stat st{};
  errno = 0;
  EXPECT_EQ(::fstatat(dir, "file", &st, 0), -1);
  EXPECT_EQ(errno, ENOTCONN);
  ::close(file);
  ::close(dir);
  ::umount2(mnt.c_str(), MNT_DETACH);
}

TEST(FuseReadOnly, EveryMutationIsErofs) {
  TempDir tmp;
  write_file(tmp.path() / "export/file", "content");
  std::filesystem::create_directories(tmp.path() / "export/dir");
  std::filesystem::create_directories(tmp.path() / "mnt");
  FsdProcess fsd({.args = {"--export", "x=" + (tmp.path() / "export").string() + ",ro", "--fuse-mount",
                           "x=" + (tmp.path() / "mnt").string()}});
  fsd.wait_for_log("mounted 'x'");
  ASSERT_EQ(::chdir((tmp.path() / "mnt").c_str()), 0);
  auto erofs = [](long r) { return r < 0 && errno == EROFS; };
  EXPECT_TRUE(erofs(::open("new", O_CREAT | O_WRONLY | O_CLOEXEC, 0644)));
  EXPECT_TRUE(erofs(::open("file", O_WRONLY | O_CLOEXEC)));
  EXPECT_TRUE(erofs(::open("file", O_RDONLY | O_TRUNC | O_CLOEXEC)));
  EXPECT_TRUE(erofs(::truncate("file", 1)));
  EXPECT_TRUE(erofs(::mkdir("newdir", 0755)));
  EXPECT_TRUE(erofs(::rmdir("dir")));
  EXPECT_TRUE(erofs(::unlink("file")));
  EXPECT_TRUE(erofs(::rename("file", "renamed")));
  EXPECT_TRUE(erofs(::link("file", "hard")));
  EXPECT_TRUE(erofs(::symlink("file", "sym")));
  EXPECT_TRUE(erofs(::mkfifo("fifo", 0644)));
  EXPECT_TRUE(erofs(::chmod("file", 0600)));
  EXPECT_TRUE(erofs(::chown("file", 1, 1)));
  EXPECT_TRUE(erofs(::utimensat(AT_FDCWD, "file", nullptr, 0)));
  EXPECT_TRUE(erofs(::setxattr("file", "user.k", "v", 1, 0)));
  EXPECT_TRUE(erofs(::removexattr("file", "user.k")));
  EXPECT_EQ(content("file"), "len=7 hash=" + std::to_string(std::hash<std::string>{}("content")) + " 'content'");
  (void)!::chdir("/");
  EXPECT_EQ(read_file(tmp.path() / "export/file"), "content");
  EXPECT_EQ(fsd.stop(), 0);
  ::umount2((tmp.path() / "mnt").c_str(), MNT_DETACH);
}

// A closure view (closure=FILE): through the host's FUSE driver, with its
// caches and READDIRPLUS, only the listed store paths are there; every
// other top-level name is absent by any path, and the root's link count
// does not tell how many directories it holds.
TEST(FuseClosure, OnlyTheListedStorePathsAreThere) {
  namespace fs = std::filesystem;
  TempDir tmp;
  fs::path store = tmp.path() / "store";
  write_file(store / "aaa-app/bin/app", "app");
  fs::create_symlink("../../ccc-secret/key", store / "aaa-app/bin/to-secret");
  write_file(store / "bbb-lib/lib.so", "lib");
  write_file(store / "ccc-secret/key", "secret");
  write_file(store / ".links/0abc", "secret");
  write_file(tmp.path() / "closure", "/nix/store/aaa-app\n/nix/store/bbb-lib\n/nix/store/zzz-not-on-host\n");
  fs::create_directories(tmp.path() / "mnt");
  FsdProcess fsd({.args = {"--export", "s=" + store.string() + ",ro,closure=" + (tmp.path() / "closure").string(),
                           "--fuse-mount", "s=" + (tmp.path() / "mnt").string()}});
  fsd.wait_for_log("mounted 's'");
  fs::path mnt = tmp.path() / "mnt";
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(mnt)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"aaa-app", "bbb-lib"}));
  EXPECT_EQ(read_file(mnt / "aaa-app/bin/app"), "app");
  struct stat st{};
  for (const char* hidden : {"ccc-secret", "ccc-secret/key", ".links", "zzz-not-on-host", "aaa-app/../ccc-secret",
                             "aaa-app/bin/../../ccc-secret/key", "aaa-app/bin/to-secret"}) {
    errno = 0;
    EXPECT_EQ(::stat((mnt / hidden).c_str(), &st), -1) << hidden;
    EXPECT_EQ(errno, ENOENT) << hidden;
  }
  ASSERT_EQ(::lstat((mnt / "aaa-app/bin/to-secret").c_str(), &st), 0);  // the link itself is listed
  ASSERT_EQ(::stat(mnt.c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 1u);
  EXPECT_EQ(fsd.stop(), 0);
  ::umount2(mnt.c_str(), MNT_DETACH);
}

// An export's id and xattr-name maps, through the host's FUSE driver (the
// same server code serves virtio-fs). Every uid but 3000 is squashed to 2001
// on the host, which shows as 0; 3000 is forbidden. security.* names live
// under user.guest. on the host.
// A POSIX ACL in the binary form the kernel takes: (tag, perm, id) entries.
std::string acl(std::initializer_list<std::tuple<uint16_t, uint16_t, uint32_t>> entries) {
  std::string v("\x02\x00\x00\x00", 4);  // version 2
  for (auto [tag, perm, id] : entries) {
    char e[8];
    std::memcpy(e, &tag, 2);
    std::memcpy(e + 2, &perm, 2);
    std::memcpy(e + 4, &id, 4);
    v.append(e, 8);
  }
  return v;
}
constexpr uint16_t kUserObj = 0x01, kUser = 0x02, kGroupObj = 0x04, kMask = 0x10, kOther = 0x20;
constexpr uint32_t kNoId = 0xffffffff;

// With posix-acl (virtiofsd's --posix-acl) the client enforces ACLs, so an
// ACL can grant what the mode bits do not, and fsd applies the umask the
// client sends unless a default ACL applies instead: new files get the
// modes they get in a plain directory. Without it, the client checks mode
// bits only.
TEST(FuseAcl, AclsGrantAndDefaultAclsReplaceTheUmask) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to act as other users";
  TempDir tmp;
  auto exp = tmp.path() / "export";
  ::chmod(tmp.path().c_str(), 0755);
  for (const char* d : {"plain", "inherit"}) std::filesystem::create_directories(exp / d);
  for (const char* d : {"", "plain", "inherit"}) ::chmod((exp / d).c_str(), 0777);
  write_file(exp / "secret", "for nobody too\n");
  ::chmod((exp / "secret").c_str(), 0600);
  std::string access = acl({{kUserObj, 6, kNoId}, {kUser, 4, 65534}, {kGroupObj, 0, kNoId}, {kMask, 4, kNoId}, {kOther, 0, kNoId}});
  if (::setxattr((exp / "secret").c_str(), "system.posix_acl_access", access.data(), access.size(), 0) != 0)
    GTEST_SKIP() << "the test directory's file system has no POSIX ACLs: " << std::strerror(errno);
  std::string inherit = acl({{kUserObj, 7, kNoId}, {kGroupObj, 7, kNoId}, {kOther, 7, kNoId}});
  ASSERT_EQ(::setxattr((exp / "inherit").c_str(), "system.posix_acl_default", inherit.data(), inherit.size(), 0), 0);

  // What nobody, with umask 077, gets: reading the file, and the modes of
  // what it creates in each directory under `root`.
  auto as_nobody = [&](const std::filesystem::path& root, const std::string& suffix) {
    std::map<std::string, int> got;
    got["read secret"] = run_as(65534, 65534, [&] {
      int f = ::open((root / "secret").c_str(), O_RDONLY | O_CLOEXEC);
      return f >= 0 && ::close(f) == 0 ? 0 : errno;
    });
    for (const char* d : {"plain", "inherit"}) {
      int r = run_as(65534, 65534, [&] {
        ::umask(077);
        int f = ::open((root / d / ("f" + suffix)).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
        if (f < 0 || ::close(f) != 0) return errno;
        return ::mkdir((root / d / ("d" + suffix)).c_str(), 0777) == 0 ? 0 : errno;
      });
      got[std::string("create in ") + d] = r;
      struct stat st{};
      got[std::string("file mode in ") + d] = ::lstat((exp / d / ("f" + suffix)).c_str(), &st) == 0 ? st.st_mode & 07777 : -1;
      got[std::string("dir mode in ") + d] = ::lstat((exp / d / ("d" + suffix)).c_str(), &st) == 0 ? st.st_mode & 07777 : -1;
    }
    return got;
  };
  auto local = as_nobody(exp, "-local");
  EXPECT_EQ(local["read secret"], 0);
  EXPECT_EQ(local["file mode in plain"], 0600);
  EXPECT_EQ(local["file mode in inherit"], 0666);
  for (bool posix_acl : {true, false}) {
    SCOPED_TRACE(posix_acl ? "posix-acl" : "without posix-acl");
    auto mnt = tmp.path() / (posix_acl ? "mnt-acl" : "mnt");
    std::filesystem::create_directories(mnt);
    FsdProcess fsd({.args = {"--export", "x=" + exp.string() + ",cache=never" + (posix_acl ? ",posix-acl" : ""),
                             "--fuse-mount", "x=" + mnt.string()}});
    fsd.wait_for_log("mounted 'x'");
    auto got = as_nobody(mnt, posix_acl ? "-acl" : "-none");
    if (posix_acl) {
      EXPECT_EQ(got, local);  // as in the plain directory, call by call
    } else {
      EXPECT_EQ(got["read secret"], EACCES);  // the client checks mode bits only
      EXPECT_EQ(got["file mode in plain"], 0600);  // the client applied the umask itself
    }
    EXPECT_EQ(fsd.stop(), 0) << fsd.log();
  }
}

TEST(FuseMaps, IdsAndXattrNamesAreTranslated) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to act as other users";
  TempDir tmp;
  auto exp = tmp.path() / "export", mnt = tmp.path() / "mnt";
  std::filesystem::create_directories(exp);
  std::filesystem::create_directories(mnt);
  ::chmod(tmp.path().c_str(), 0755);
  ::chmod(exp.c_str(), 0777);
  write_file(exp / "hostfile", "host's\n");
  ASSERT_EQ(::chown((exp / "hostfile").c_str(), 2001, 2001), 0);
  ASSERT_EQ(::setxattr((exp / "hostfile").c_str(), "security.hosts", "h", 1, 0), 0);
  ASSERT_EQ(::setxattr((exp / "hostfile").c_str(), "user.guest.security.label", "g", 1, 0), 0);
  std::string maps = ",translate-uid=squash-guest:0:2001:3000,translate-uid=forbid-guest:3000:1,translate-uid=host:2001:0:1"
                     ",translate-gid=squash-guest:0:2001:3000,translate-gid=host:2001:0:1";
  FsdProcess fsd({.args = {"--export", "x=" + exp.string() + maps + ",cache=never", "--fuse-mount", "x=" + mnt.string(),
                           "--xattrmap", ":map:security.:user.guest.:"}});
  fsd.wait_for_log("mounted 'x'");

  // Root's file is the host's 2001, and shows as root again.
  int fd = ::open((mnt / "made").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ::close(fd);
  struct stat host{}, shown{};
  ASSERT_EQ(::lstat((exp / "made").c_str(), &host), 0);
  EXPECT_EQ(host.st_uid, 2001u);
  EXPECT_EQ(host.st_gid, 2001u);
  ASSERT_EQ(::lstat((mnt / "made").c_str(), &shown), 0);
  EXPECT_EQ(shown.st_uid, 0u);
  EXPECT_EQ(shown.st_gid, 0u);
  // A chown to a forbidden uid fails; to another, lands squashed.
  EXPECT_EQ(::chown((mnt / "made").c_str(), 3000, -1), -1);
  EXPECT_EQ(errno, EPERM);
  // The forbidden user can do nothing at all, not even look.
  int looked = run_as(3000, 3000, [&] {
    struct stat st{};
    return ::lstat((mnt / "made").c_str(), &st) == 0 ? 0 : errno;
  });
  EXPECT_EQ(looked, EPERM);
  // Another user is squashed too: what it makes is 2001's on the host.
  int made = run_as(1500, 1500, [&] {
    int f = ::open((mnt / "by1500").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    return f >= 0 && ::close(f) == 0 ? 0 : errno;
  });
  EXPECT_EQ(made, 0);
  ASSERT_EQ(::lstat((exp / "by1500").c_str(), &host), 0);
  EXPECT_EQ(host.st_uid, 2001u);

  // security.* is the guest's own, kept under user.guest. on the host.
  char v[16]{};
  ASSERT_EQ(::setxattr((mnt / "made").c_str(), "security.label", "mine", 4, 0), 0) << std::strerror(errno);
  EXPECT_EQ(::getxattr((exp / "made").c_str(), "user.guest.security.label", v, sizeof v), 4);
  EXPECT_EQ(std::string(v, 4), "mine");
  EXPECT_EQ(::getxattr((exp / "made").c_str(), "security.label", v, sizeof v), -1);
  EXPECT_EQ(::getxattr((mnt / "hostfile").c_str(), "security.label", v, sizeof v), 1);
  EXPECT_EQ(v[0], 'g');
  EXPECT_EQ(::getxattr((mnt / "hostfile").c_str(), "security.hosts", v, sizeof v), -1) << "the host's own label showed";
  char list[256]{};
  ssize_t n = ::listxattr((mnt / "hostfile").c_str(), list, sizeof list);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(list, static_cast<size_t>(n)), std::string("security.label\0", 15));
  // The renamed names cannot be reached directly.
  EXPECT_EQ(::setxattr((mnt / "made").c_str(), "user.guest.security.x", "v", 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
  // A renamed file capability goes when the file is written, as the real one would.
  std::string cap("\x01\x00\x00\x02\xc0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20);
  ASSERT_EQ(::setxattr((mnt / "made").c_str(), "security.capability", cap.data(), cap.size(), 0), 0) << std::strerror(errno);
  EXPECT_EQ(::getxattr((exp / "made").c_str(), "user.guest.security.capability", nullptr, 0), 20);
  fd = ::open((mnt / "made").c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::write(fd, "x", 1), 1);
  ::close(fd);
  EXPECT_EQ(::getxattr((exp / "made").c_str(), "user.guest.security.capability", nullptr, 0), -1);
  EXPECT_EQ(errno, ENODATA);
  // With ids translated, ACLs (which hold ids) are not passed through.
  EXPECT_EQ(::setxattr((mnt / "made").c_str(), "system.posix_acl_access", "\x02\x00\x00\x00", 4, 0), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  EXPECT_EQ(fsd.stop(), 0);
  ::umount2(mnt.c_str(), MNT_DETACH);
}

}  // namespace
}  // namespace fsd::testing

// Run in a private mount namespace when possible: if this process is killed,
// the FUSE mounts it made go away with the namespace.
int main(int argc, char** argv) {
  if (::unshare(CLONE_NEWNS) == 0) ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
