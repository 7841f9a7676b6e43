// libvirt starts fsd as its virtiofsd: a domain with a <filesystem> whose
// <binary path> is fsd, booted by a libvirtd of the test's own. libvirt runs
// fsd with its own command line (--fd, -o source=..., --print-capabilities
// first), and the guest's Linux virtiofs driver reads and writes the share.
//
// The daemon runs as root (libvirt's virtiofs needs its system mode) in
// private mount and pid namespaces: its configuration, state, logs and
// sockets are the test's temporary directories and tmpfs mounts, nothing of
// the host's /etc, /run or /var is touched, and when the test ends (or dies)
// the namespace's init goes and takes libvirtd, QEMU and fsd with it.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/support/guest_initramfs.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) out += c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '\'' ? "&apos;" : std::string(1, c);
  return out;
}

TEST(LibvirtGuest, LibvirtRunsFsdAsItsVirtiofsd) {
  if (::geteuid() != 0) GTEST_SKIP() << "libvirt's virtiofs needs its system (root) daemon";
  std::string kdir = guest_kernel_dir();
  ASSERT_FALSE(kdir.empty()) << "no guest kernel: run scripts/setup";
  int found = 0;
  run_command("command -v libvirtd virsh unshare >/dev/null", &found);
  ASSERT_EQ(found, 0) << "libvirtd or virsh is missing (Debian's libvirt-daemon-driver-qemu and libvirt-clients)";

  TempDir tmp;
  fs::path etc = tmp.path() / "etc", sock = tmp.path() / "sock", log = tmp.path() / "log", share = tmp.path() / "share";
  for (const auto& d : {etc, sock, log, share}) fs::create_directories(d);
  write_file(share / "hello.txt", "hello through libvirt\n");
  write_file(etc / "libvirtd.conf", "unix_sock_dir = \"" + sock.string() +
                                        "\"\nunix_sock_rw_perms = \"0700\"\nauth_unix_rw = \"none\"\nlog_outputs = \"3:stderr\"\n");
  // QEMU runs as root with no labels, cgroups or namespaces of libvirt's
  // (none of which a container gives it), and its output goes to files.
  write_file(etc / "qemu.conf",
             "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\nsecurity_driver = \"none\"\n"
             "cgroup_controllers = [ ]\nnamespaces = [ ]\nstdio_handler = \"file\"\n");
  // libvirtd resolves its default QEMU user at start, even when qemu.conf
  // names another: the namespace's /etc/passwd has it.
  write_file(tmp.path() / "passwd", read_file("/etc/passwd") + "libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin\n");
  write_file(tmp.path() / "group", read_file("/etc/group") + "libvirt-qemu:x:64055:\n");
  write_file(tmp.path() / "daemon.sh",
             "set -e\n"
             "mount -t tmpfs tmpfs /var\n"
             "mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /var/tmp\n"
             "ln -s /run /var/run\n"
             "mount --bind " + log.string() + " /var/log/libvirt\n"
             "mount -t tmpfs tmpfs /run\n"
             "mkdir -p /run/libvirt /etc/libvirt\n"
             "mount --bind " + etc.string() + " /etc/libvirt\n"
             "mount --bind " + (tmp.path() / "passwd").string() + " /etc/passwd\n"
             "mount --bind " + (tmp.path() / "group").string() + " /etc/group\n"
             "exec libvirtd -f /etc/libvirt/libvirtd.conf\n");
  // PID 1 of the namespace is a shell that reaps: libvirtd daemonizes the
  // QEMU processes it probes, and as PID 1 itself it would leave them
  // zombies and wait 40 s for each to die.
  ChildProcess daemon({"unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
                       "sh", "-c", "sh " + (tmp.path() / "daemon.sh").string() + " & wait $!"},
                      tmp.path() / "libvirtd.log");
  const std::string uri = "qemu:///system?socket=" + (sock / "libvirt-sock").string();
  for (int i = 0; i < 300 && !fs::exists(sock / "libvirt-sock"); i++) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(sock / "libvirt-sock")) << read_file(tmp.path() / "libvirtd.log");

  // The guest: mount the tag, read, write, and report.
  std::string initrd = (tmp.path() / "initrd.gz").string();
  std::string version = fs::path(*fs::directory_iterator(kdir + "/lib/modules")).filename().string();
  nlohmann::json plan;
  plan["mounts"] = nlohmann::json::array({{{"fstype", "virtiofs"}, {"source", "shared"}, {"target", "/mnt"}}});
  plan["command"] = {"/bin/sh", "-c", "cat /mnt/hello.txt && echo written-by-the-guest > /mnt/from-guest.txt && echo guest-done"};
  plan["env"] = {{"PATH", "/bin"}};
  write_guest_initramfs(initrd, FSD_GUEST_INIT, kdir + "/lib/modules/" + version, {"virtio_pci", "virtiofs"}, plan);

  fs::path console = tmp.path() / "console.log";
  std::string domain =
      "<domain type='qemu'>\n"
      "  <name>fsd-libvirt-test</name>\n"
      "  <memory unit='MiB'>512</memory>\n"
      "  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>\n"
      "  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>" + xml_escape(kdir + "/vmlinuz") + "</kernel>"
      "<initrd>" + xml_escape(initrd) + "</initrd><cmdline>console=ttyS0 panic=-1</cmdline></os>\n"
      "  <features><acpi/></features>\n"
      "  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\n"
      "  <devices>\n"
      "    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
      "    <filesystem type='mount' accessmode='passthrough'>\n"
      "      <driver type='virtiofs' queue='1024'/>\n"
      "      <binary path='" + xml_escape(FSD_BINARY) + "' xattr='on'><cache mode='always'/><lock posix='on' flock='on'/></binary>\n"
      "      <source dir='" + xml_escape(share.string()) + "'/>\n"
      "      <target dir='shared'/>\n"
      "    </filesystem>\n"
      "    <serial type='file'><source path='" + xml_escape(console.string()) + "'/><target port='0'/></serial>\n"
      "  </devices>\n"
      "</domain>\n";
  write_file(tmp.path() / "domain.xml", domain);
  int status = 0;
  auto started = std::chrono::steady_clock::now();
  std::string out = run_command("virsh -c '" + uri + "' create " + (tmp.path() / "domain.xml").string() + " 2>&1", &status);
  ASSERT_EQ(status, 0) << out << "\n" << read_file(tmp.path() / "libvirtd.log");

  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
  while (read_file(console).find("fsd-guest-init: exit") == std::string::npos && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::string text = read_file(console);
  std::printf("libvirt: the domain was created and ran in %.1f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  EXPECT_NE(text.find("hello through libvirt"), std::string::npos) << text;
  EXPECT_NE(text.find("guest-done"), std::string::npos) << text;
  EXPECT_NE(text.find("fsd-guest-init: exit 0"), std::string::npos) << text;
  EXPECT_EQ(read_file(share / "from-guest.txt"), "written-by-the-guest\n");
  // It was fsd that libvirt ran, given the listening socket (--fd), the
  // share (-o source=) and the cache mode, as its log (libvirt's virtiofsd
  // log) says.
  std::string fsd_log;
  for (auto& e : fs::recursive_directory_iterator(log))
    if (e.path().filename().string().find("virtiofsd") != std::string::npos) fsd_log += read_file(e.path());
  EXPECT_NE(fsd_log.find("fsd info: virtio device 'virtiofs': listening on --fd "), std::string::npos) << fsd_log;
  EXPECT_NE(fsd_log.find("fsd info: export 'virtiofs': " + share.string() + " (rw, cache=always"), std::string::npos) << fsd_log;
  EXPECT_NE(fsd_log.find("front-end connected"), std::string::npos) << fsd_log;
  run_command("virsh -c '" + uri + "' destroy fsd-libvirt-test >/dev/null 2>&1", &status);  // if still there
}

}  // namespace
}  // namespace fsd::testing
