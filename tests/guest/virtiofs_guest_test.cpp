// A real guest: Debian's kernel under QEMU (TCG) mounts fsd's exports with
// its virtiofs driver through vhost-user-fs-pci. One boot runs every check;
// the guest prints "CHECK name OK|FAIL ..." lines on its serial console.
// The guest runs SELinux, so the files it makes carry its labels
// (security-label), which the host then finds on them.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "tests/support/guest_initramfs.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

constexpr int kManyFiles = 50000;

std::string md5_hex(const std::string& data) {
  int status;
  TempDir t;
  write_file(t.path() / "f", data);
  std::string out = run_command("md5sum " + (t.path() / "f").string(), &status);
  return out.substr(0, 32);
}

// The guest's script: busybox sh, one CHECK line per assertion.
std::string guest_script(const std::string& big_md5) {
  return R"SH(#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
check() { n=$1; shift; if "$@" >/tmp/out 2>&1; then echo "CHECK $n OK"; else echo "CHECK $n FAIL $(head -c 300 /tmp/out | tr '\n' ' ')"; fi; }
erofs() { n=$1; shift; if "$@" >/tmp/out 2>&1; then echo "CHECK $n FAIL it succeeded";
  elif grep -q 'Read-only file system' /tmp/out; then echo "CHECK $n OK"; else echo "CHECK $n FAIL $(head -c 300 /tmp/out | tr '\n' ' ')"; fi; }

check ro-list test "$(ls /mnt/ro | tr '\n' ' ')" = "big.bin dir hello.txt link "
check ro-read test "$(cat /mnt/ro/hello.txt)" = "hello from the host"
check ro-nested test "$(cat /mnt/ro/dir/nested.txt)" = "nested"
check ro-big-md5 test "$(md5sum /mnt/ro/big.bin | cut -d' ' -f1)" = ")SH" + big_md5 + R"SH("
check ro-symlink test "$(readlink /mnt/ro/link)" = "hello.txt"
check ro-through-symlink test "$(cat /mnt/ro/link)" = "hello from the host"
erofs ro-create touch /mnt/ro/new
erofs ro-mkdir mkdir /mnt/ro/newdir
erofs ro-unlink rm /mnt/ro/hello.txt
erofs ro-rmdir rmdir /mnt/ro/dir
erofs ro-rename mv /mnt/ro/hello.txt /mnt/ro/moved.txt
erofs ro-new-symlink ln -s x /mnt/ro/newlink
erofs ro-link ln /mnt/ro/hello.txt /mnt/ro/hard
erofs ro-chmod chmod 600 /mnt/ro/hello.txt
erofs ro-append sh -c 'echo more >> /mnt/ro/hello.txt'
erofs ro-truncate truncate -s 0 /mnt/ro/hello.txt
erofs ro-touch-times touch -d '2001-01-01 00:00' /mnt/ro/hello.txt

check rw-create sh -c 'echo "written by the guest" > /mnt/rw/guest.txt'
check rw-copy-big dd if=/mnt/ro/big.bin of=/mnt/rw/copy.bin bs=1M
check rw-mkdir mkdir /mnt/rw/gdir
check rw-rename mv /mnt/rw/guest.txt /mnt/rw/gdir/renamed.txt
check rw-readback test "$(cat /mnt/rw/gdir/renamed.txt)" = "written by the guest"
check rw-delete sh -c 'echo doomed > /mnt/rw/doomed.txt && rm /mnt/rw/doomed.txt && ! test -e /mnt/rw/doomed.txt'
check rw-symlink ln -s gdir/renamed.txt /mnt/rw/link
check rw-chmod chmod 640 /mnt/rw/gdir/renamed.txt
check rw-host-file test "$(cat /mnt/rw/from-host.txt)" = "from the host"
# Guest users: fsd acts as the caller, so the host checks its permissions.
check user-denied-others-file sh -c '! su -s /bin/sh bob -c "cat /mnt/rw/alice-secret.txt"'
check user-reads-own-file su -s /bin/sh alice -c 'test "$(cat /mnt/rw/alice-secret.txt)" = "alice only"'
check user-creates-file su -s /bin/sh bob -c 'echo mine > /mnt/rw/bob.txt && mkdir /mnt/rw/bobdir'

# (stat of sub itself does not trigger the automount; a path through it does)
check submount-reads test "$(cat /mnt/rw/sub/in-sub.txt)" = "in the submount"
check submount-own-device sh -c 'test "$(stat -c %d /mnt/rw/.)" != "$(stat -c %d /mnt/rw/sub/.)" && grep -q " /mnt/rw/sub virtiofs " /proc/mounts'
check many-find test "$(find /mnt/many -type f | wc -l)" = ")SH" + std::to_string(kManyFiles) + R"SH("
check many-tar sh -c 'tar cf - -C /mnt/many . | wc -c > /tmp/size && test "$(cat /tmp/size)" -gt 1000000'
sync
echo "CHECKS DONE"
)SH";
}

TEST(VirtiofsGuest, LinuxMountsFsdExports) {
  ASSERT_EQ(guest_tools_missing(), "");
  std::string kdir = guest_kernel_dir();

  TempDir tmp;
  auto ro = tmp.path() / "ro", rw = tmp.path() / "rw", many = tmp.path() / "many";
  std::string big = random_bytes(5 * 1024 * 1024 + 7, 3);
  write_file(ro / "hello.txt", "hello from the host\n");
  write_file(ro / "big.bin", big);
  write_file(ro / "dir/nested.txt", "nested\n");
  std::filesystem::create_symlink("hello.txt", ro / "link");
  write_file(rw / "from-host.txt", "from the host\n");
  // A guest user's private file, and a share every guest user may write in.
  write_file(rw / "alice-secret.txt", "alice only\n");
  ASSERT_EQ(::chown((rw / "alice-secret.txt").c_str(), 2001, 2001), 0);
  ::chmod((rw / "alice-secret.txt").c_str(), 0600);
  ::chmod(rw.c_str(), 0777);
  // A file system mounted inside the rw export (a tmpfs, gone with the
  // test): with submounts the guest mounts it on its own.
  std::filesystem::create_directories(rw / "sub");
  ASSERT_EQ(::mount("fsd-test-sub", (rw / "sub").c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755"), 0)
      << std::strerror(errno);
  struct Unmount {
    std::filesystem::path at;
    ~Unmount() { ::umount2(at.c_str(), MNT_DETACH); }
  } unmount{rw / "sub"};
  write_file(rw / "sub/in-sub.txt", "in the submount\n");
  for (int d = 0; d < kManyFiles / 1000; d++) {
    auto dir = many / ("d" + std::to_string(d));
    std::filesystem::create_directories(dir);
    for (int f = 0; f < 1000; f++) {
      int fd = ::open((dir / ("file-" + std::to_string(f))).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::write(fd, "0123456789abcdef0123456789abcdef", 32), 32);
      ::close(fd);
    }
  }

  // The initramfs: busybox, the project's init, the modules and the plan.
  std::string initrd = (tmp.path() / "initrd.gz").string();
  nlohmann::json plan;
  plan["mounts"] = nlohmann::json::array();
  for (const char* tag : {"ro", "rw", "many"}) {
    nlohmann::json m = nlohmann::json::object();
    m["fstype"] = "virtiofs";
    m["source"] = tag;
    m["target"] = std::string("/mnt/") + tag;
    plan["mounts"].push_back(m);
  }
  plan["command"] = {"/bin/sh", "/test.sh"};
  plan["env"] = nlohmann::json::object({{"PATH", "/bin"}});
  write_guest_initramfs(initrd, FSD_GUEST_INIT, guest_module_dir(kdir), {"virtio_pci", "virtiofs"}, plan,
                        {{"etc/passwd", "root:x:0:0::/:/bin/sh\nalice:x:2001:2001::/tmp:/bin/sh\nbob:x:2002:2002::/tmp:/bin/sh\n"},
                         {"etc/group", "root:x:0:\nalice:x:2001:\nbob:x:2002:\n"},
                         {"test.sh", guest_script(md5_hex(big))}});

  // fsd, with an fd limit far below the number of files the guest walks.
  std::map<std::string, std::string> sock;
  std::vector<std::string> args;
  for (auto [tag, dir, opts] : {std::tuple{"ro", ro, ",ro"}, {"rw", rw, ",cache=never,submounts,security-label"}, {"many", many, ",ro"}}) {
    sock[tag] = (tmp.path() / (std::string(tag) + ".sock")).string();
    args.insert(args.end(), {"--export", std::string(tag) + "=" + dir.string() + opts, "--virtiofs-socket",
                             std::string(tag) + "=" + sock[tag]});
  }
  FsdProcess fsd({.args = args, .nofile = 1024});
  fsd.wait_for_log("listening on " + sock["many"]);

  std::vector<std::string> qemu = guest_qemu_argv(kdir, initrd);
  // SELinux on in the guest (no policy loaded: it allows everything, and
  // names each new file's label after its initial SID), so that its
  // virtiofs driver sends FUSE_SECURITY_CTX labels for the rw export's
  // security-label.
  for (auto& a : qemu)
    if (a.starts_with("console=ttyS0")) a += " security=selinux selinux=1";
  int n = 0;
  for (const char* tag : {"ro", "rw", "many"}) {
    std::string id = "fs" + std::to_string(n++);
    qemu.insert(qemu.end(), {"-chardev", "socket,id=" + id + ",path=" + sock[tag], "-device",
                             "vhost-user-fs-pci,chardev=" + id + ",tag=" + tag});
  }
  auto console = tmp.path() / "console.log";
  auto started = std::chrono::steady_clock::now();
  ChildProcess vm(qemu, console);
  auto status = vm.wait(std::chrono::seconds(600));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::string out = read_file(console);
  ASSERT_TRUE(status.has_value()) << "the guest did not power off in time:\n" << out << fsd.log();
  std::printf("guest booted, checked and powered off in %.1f s\n", secs);

  // Every check the script made, by name.
  std::regex line(R"(CHECK (\S+) (OK|FAIL)(.*))");
  int checks = 0;
  for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it) {
    checks++;
    EXPECT_EQ((*it)[2], "OK") << (*it)[1] << ":" << (*it)[3];
  }
  EXPECT_EQ(checks, 33) << out;
  EXPECT_NE(out.find("CHECKS DONE"), std::string::npos) << out;
  EXPECT_NE(out.find("fsd-guest-init: exit 0"), std::string::npos) << out;

  // What the guest did, seen from the host.
  EXPECT_EQ(read_file(rw / "gdir/renamed.txt"), "written by the guest\n");
  EXPECT_TRUE(read_file(rw / "copy.bin") == big);
  EXPECT_FALSE(std::filesystem::exists(rw / "guest.txt"));
  EXPECT_FALSE(std::filesystem::exists(rw / "doomed.txt"));
  EXPECT_EQ(std::filesystem::read_symlink(rw / "link"), "gdir/renamed.txt");
  EXPECT_EQ(std::filesystem::status(rw / "gdir/renamed.txt").permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write | std::filesystem::perms::group_read);
  EXPECT_EQ(read_file(ro / "hello.txt"), "hello from the host\n");
  EXPECT_FALSE(std::filesystem::exists(ro / "new"));
  // Made by guest user bob (2002): his on the host too.
  for (const char* made : {"bob.txt", "bobdir"}) {
    struct stat st{};
    ASSERT_EQ(::lstat((rw / made).c_str(), &st), 0) << made;
    EXPECT_EQ(st.st_uid, 2002u) << made;
    EXPECT_EQ(st.st_gid, 2002u) << made;
  }
  // The guest's labels: on every file it made, none on the host's own.
  auto label = [](const std::filesystem::path& p) {
    char v[256];
    ssize_t n = ::lgetxattr(p.c_str(), "security.selinux", v, sizeof v);
    return n < 0 ? std::string("(") + std::strerror(errno) + ")" : std::string(v, static_cast<size_t>(n));
  };
  std::printf("the guest's label of its new files: %s\n", label(rw / "gdir").c_str());
  for (const char* made : {"gdir", "gdir/renamed.txt", "link", "copy.bin", "bob.txt", "bobdir"}) {
    std::string l = label(rw / made);
    EXPECT_TRUE(!l.empty() && l[0] != '(') << made << ": " << l;
  }
  EXPECT_EQ(label(rw / "from-host.txt"), "(" + std::string(std::strerror(ENODATA)) + ")");
  for (const auto& e : std::filesystem::recursive_directory_iterator(rw))
    EXPECT_FALSE(e.path().filename().string().starts_with(".fsd-label.")) << e.path();
  EXPECT_LT(fsd.open_fds(), 1024u);
  EXPECT_EQ(fsd.stop(), 0) << fsd.log();
}

}  // namespace
}  // namespace fsd::testing
