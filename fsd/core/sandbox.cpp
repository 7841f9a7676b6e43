#include "fsd/core/sandbox.h"

#include <linux/capability.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace fsd {
namespace {

constexpr int kKept[] = {CAP_CHOWN,  CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID,
                         CAP_SETGID, CAP_SETUID,       CAP_MKNOD,           CAP_SETFCAP};
constexpr const char* kKeptNames[] = {"chown",  "dac_override", "dac_read_search", "fowner", "fsetid",
                                      "setgid", "setuid",       "mknod",           "setfcap"};

[[noreturn]] void fail(const std::string& step) {
  throw std::runtime_error("--sandbox namespace: " + step + ": " + std::strerror(errno));
}

// An empty, read-only tmpfs with /proc becomes the root. The tmpfs is
// mounted over a directory every system has (in this private namespace
// only), and pivot_root swaps it in.
void pivot_into_empty_root() {
  if (::unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC) != 0) fail("unshare");
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) fail("making mounts private");
  const char* base = nullptr;
  for (const char* d : {"/tmp", "/mnt", "/run", "/dev"}) {
    struct stat st{};
    if (::stat(d, &st) == 0 && S_ISDIR(st.st_mode)) {
      base = d;
      break;
    }
  }
  if (base == nullptr) fail("no directory to build the new root on");
  if (::mount("fsd-sandbox", base, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755") != 0)
    fail("mounting the new root");
  std::string proc = std::string(base) + "/proc";
  if (::mkdir(proc.c_str(), 0555) != 0) fail("mkdir /proc");
  // fsd names open files as /proc/self/fd/N, and reads callers' groups.
  if (::mount("/proc", proc.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0) fail("binding /proc");
  if (::chdir(base) != 0) fail("chdir");
  if (::syscall(SYS_pivot_root, ".", ".") != 0) fail("pivot_root");
  if (::umount2(".", MNT_DETACH) != 0) fail("detaching the old root");
  if (::chdir("/") != 0) fail("chdir /");
  if (::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    fail("making the new root read-only");
}

void drop_capabilities() {
  uint64_t keep = 0;
  for (int c : kKept) keep |= uint64_t{1} << c;
  for (int c = 0; c <= CAP_LAST_CAP; c++)
    if (!(keep & (uint64_t{1} << c)) && ::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL)
      fail("dropping capability " + std::to_string(c) + " from the bounding set");
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) fail("clearing ambient capabilities");
  __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[2]{};
  if (::syscall(SYS_capget, &h, d) != 0) fail("capget");
  for (int i = 0; i < 2; i++) {
    uint32_t k = static_cast<uint32_t>(keep >> (32 * i));
    d[i].effective &= k;
    d[i].permitted &= k;
    d[i].inheritable = 0;
  }
  if (::syscall(SYS_capset, &h, d) != 0) fail("capset");
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("no_new_privs");
}

}  // namespace

SandboxMode parse_sandbox(std::string_view text) {
  if (text == "none") return SandboxMode::kNone;
  if (text == "namespace") return SandboxMode::kNamespace;
  if (text == "chroot")
    throw std::invalid_argument(
        "--sandbox chroot: not supported by fsd (it names open files through /proc, which a chroot without a "
        "mount namespace cannot keep); use --sandbox namespace, or none");
  throw std::invalid_argument("--sandbox " + std::string(text) + ": expected namespace or none");
}

void enter_sandbox(SandboxMode mode) {
  if (mode == SandboxMode::kNone) return;
  pivot_into_empty_root();
  drop_capabilities();
}

std::string kept_capabilities() {
  std::string out;
  for (const char* n : kKeptNames) out += (out.empty() ? "" : ",") + std::string(n);
  return out;
}

}  // namespace fsd
