// A real guest mounts fsd's 9P over virtio-vsock: Debian's kernel under
// QEMU (TCG), fsd the back-end of its vhost-user-vsock-pci device. The
// guest init connects from a reserved port and mounts with trans=fd (as
// vmlaunch's does); the script then checks reads, writes and guest users
// on those mounts, and runs a process of its own (fsd-vsock-probe) that
// speaks 9P from the guest as an ordinary user: it cannot bind a reserved
// port, and what it creates belongs to the one identity fsd gives
// unreserved ports, whoever it names in Tattach. One boot.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "tests/support/guest_initramfs.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

constexpr uid_t kUntrusted = 2003;

std::string guest_script(const std::string& big_md5) {
  return R"SH(#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
check() { n=$1; shift; if "$@" >/tmp/out 2>&1; then echo "CHECK $n OK"; else echo "CHECK $n FAIL $(head -c 300 /tmp/out | tr '\n' ' ')"; fi; }
probe() { /bin/fsd-vsock-probe "$@" 2>&1 | tr '\n' ' '; }

check mounted-over-fd sh -c 'grep " /mnt/ro 9p " /proc/mounts | grep -q trans=fd && grep " /mnt/rw 9p " /proc/mounts | grep -q trans=fd'
check ro-read test "$(cat /mnt/ro/hello.txt)" = "hello from the host"
check ro-big-md5 test "$(md5sum /mnt/ro/big.bin | cut -d' ' -f1)" = ")SH" + big_md5 + R"SH("
check ro-refuses sh -c '! touch /mnt/ro/new'
check rw-create sh -c 'echo "written by the guest" > /mnt/rw/guest.txt'
check rw-copy-big dd if=/mnt/ro/big.bin of=/mnt/rw/copy.bin bs=1M
check rw-mkdir-rename sh -c 'mkdir /mnt/rw/gdir && mv /mnt/rw/guest.txt /mnt/rw/gdir/renamed.txt'
check rw-readback test "$(cat /mnt/rw/gdir/renamed.txt)" = "written by the guest"
check user-creates-file su -s /bin/sh bob -c 'echo mine > /mnt/rw/bob.txt'
# A guest process speaking 9P itself, as uid 1000: no reserved port for it,
check user-no-reserved-port test "$(probe 1000 700 rw 0 x)" = "bind EACCES "
# and from its own port it may attach naming root, but acts as fsd's one untrusted identity.
check user-attach-as-root test "$(probe 1000 0 rw 0 by-user.txt)" = "connect ok attach ok create ok "
check root-unreserved test "$(probe 0 0 rw 0 by-root-unreserved.txt)" = "connect ok attach ok create ok "
sync
echo "CHECKS DONE"
)SH";
}

TEST(VsockGuest, LinuxMountsFsd9POverVsockAndOnlyRootIsTrusted) {
  ASSERT_EQ(guest_tools_missing(), "");
  std::string kdir = guest_kernel_dir();
  ASSERT_EQ(::geteuid(), 0u) << "fsd must be able to act as guest users";

  TempDir tmp;
  auto ro = tmp.path() / "ro", rw = tmp.path() / "rw";
  std::string big = random_bytes(5 * 1024 * 1024 + 7, 5);
  write_file(ro / "hello.txt", "hello from the host\n");
  write_file(ro / "big.bin", big);
  std::filesystem::create_directories(rw);
  ::chmod(rw.c_str(), 0777);
  int st = 0;
  std::string big_md5 = run_command("md5sum " + (ro / "big.bin").string(), &st).substr(0, 32);

  std::string initrd = (tmp.path() / "initrd.gz").string();
  nlohmann::json plan;
  plan["mounts"] = nlohmann::json::array();
  for (auto [tag, cache] : {std::pair{"ro", "loose"}, {"rw", "none"}}) {
    plan["mounts"].push_back({{"fstype", "9p"},
                              {"source", tag},
                              {"target", std::string("/mnt/") + tag},
                              {"options", std::string("aname=") + tag + ",version=9p2000.L,msize=1048576,cache=" + cache},
                              {"vsock_port", 564}});
  }
  plan["command"] = {"/bin/sh", "/test.sh"};
  plan["env"] = nlohmann::json::object({{"PATH", "/bin"}});
  write_guest_initramfs(initrd, FSD_GUEST_INIT, guest_module_dir(kdir),
                        {"virtio_pci", "vmw_vsock_virtio_transport", "9pnet_fd", "9p"}, plan,
                        {{"etc/passwd", "root:x:0:0::/:/bin/sh\nbob:x:2002:2002::/tmp:/bin/sh\n"},
                         {"etc/group", "root:x:0:\nbob:x:2002:\n"},
                         {"test.sh", guest_script(big_md5)}},
                        {{"bin/fsd-vsock-probe", FSD_VSOCK_PROBE}});

  std::string sock = (tmp.path() / "vsock.sock").string();
  FsdProcess fsd({.args = {"--export", "ro=" + ro.string() + ",ro", "--export", "rw=" + rw.string() + ",cache=never",
                           "--vsock-socket", sock + ",untrusted-as=" + std::to_string(kUntrusted) + ":" +
                                                 std::to_string(kUntrusted)}});
  fsd.wait_for_log("listening on " + sock);

  std::vector<std::string> qemu = guest_qemu_argv(kdir, initrd);
  qemu.insert(qemu.end(), {"-chardev", "socket,id=v0,path=" + sock, "-device", "vhost-user-vsock-pci,chardev=v0"});
  auto console = tmp.path() / "console.log";
  ChildProcess vm(qemu, console);
  auto status = vm.wait(std::chrono::seconds(600));
  std::string out = read_file(console);
  ASSERT_TRUE(status.has_value()) << "the guest did not power off in time:\n" << out << fsd.log();

  std::regex line(R"(CHECK (\S+) (OK|FAIL)(.*))");
  int checks = 0;
  for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it) {
    checks++;
    EXPECT_EQ((*it)[2], "OK") << (*it)[1] << ":" << (*it)[3];
  }
  EXPECT_EQ(checks, 12) << out;
  EXPECT_NE(out.find("CHECKS DONE"), std::string::npos) << out << fsd.log();

  EXPECT_EQ(read_file(rw / "gdir/renamed.txt"), "written by the guest\n");
  EXPECT_TRUE(read_file(rw / "copy.bin") == big);
  auto owner = [&](const char* name) {
    struct stat s{};
    EXPECT_EQ(::lstat((rw / name).c_str(), &s), 0) << name;
    return std::pair{s.st_uid, s.st_gid};
  };
  EXPECT_EQ(owner("gdir"), (std::pair<uid_t, gid_t>{0, 0}));  // guest root, through its trusted mount
  EXPECT_EQ(owner("bob.txt"), (std::pair<uid_t, gid_t>{2002, 2002}));
  EXPECT_EQ(owner("by-user.txt"), (std::pair<uid_t, gid_t>{kUntrusted, kUntrusted}));
  EXPECT_EQ(owner("by-root-unreserved.txt"), (std::pair<uid_t, gid_t>{kUntrusted, kUntrusted}));
  EXPECT_FALSE(std::filesystem::exists(rw / "x"));
  EXPECT_EQ(fsd.stop(), 0) << fsd.log();
}

}  // namespace
}  // namespace fsd::testing
