#include "fsd/core/landlock.h"

#include <fcntl.h>
#include <linux/landlock.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "common/fd.h"

namespace fsd {
namespace {

// The rights by the ABI version that brought them (linux/landlock.h of
// older kernels lacks the later ones; the values are the kernel's ABI).
constexpr uint64_t kExecute = 1ull << 0, kWriteFile = 1ull << 1, kReadFile = 1ull << 2, kReadDir = 1ull << 3,
                   kRemoveDir = 1ull << 4, kRemoveFile = 1ull << 5, kMakeChar = 1ull << 6, kMakeDir = 1ull << 7,
                   kMakeReg = 1ull << 8, kMakeSock = 1ull << 9, kMakeFifo = 1ull << 10, kMakeBlock = 1ull << 11,
                   kMakeSym = 1ull << 12;
constexpr uint64_t kRefer = 1ull << 13;     // ABI 2
constexpr uint64_t kTruncate = 1ull << 14;  // ABI 3
constexpr uint64_t kIoctlDev = 1ull << 15;  // ABI 5
constexpr uint64_t kBindTcp = 1ull << 0, kConnectTcp = 1ull << 1;  // ABI 4, network rights

// landlock_ruleset_attr as of ABI 4; the kernel takes a shorter one from
// older callers, so fsd passes only what the running kernel knows.
struct RulesetAttr {
  uint64_t handled_fs = 0;
  uint64_t handled_net = 0;
};

struct PathBeneath {
  uint64_t allowed = 0;
  int32_t parent_fd = -1;
} __attribute__((packed));

[[noreturn]] void fail(const std::string& step) {
  throw std::runtime_error("landlock: " + step + ": " + std::strerror(errno));
}

uint64_t fs_rights(int abi) {
  uint64_t all = kExecute | kWriteFile | kReadFile | kReadDir | kRemoveDir | kRemoveFile | kMakeChar | kMakeDir |
                 kMakeReg | kMakeSock | kMakeFifo | kMakeBlock | kMakeSym;
  if (abi >= 2) all |= kRefer;
  if (abi >= 3) all |= kTruncate;
  if (abi >= 5) all |= kIoctlDev;
  return all;
}

}  // namespace

int landlock_abi() {
  long v = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  return v < 0 ? 0 : static_cast<int>(v);
}

LandlockResult confine_with_landlock(const std::vector<LandlockTree>& trees) {
  LandlockResult r;
  r.abi = landlock_abi();
  if (r.abi == 0) {
    r.why = "the kernel has no Landlock (or it is not among its LSMs)";
    return r;
  }
  bool any_writable = false;
  for (const auto& t : trees) any_writable |= t.writable;
  if (r.abi < 2 && any_writable) {
    r.why = "Landlock's first version forbids renaming and linking between directories, which a writable export needs";
    return r;
  }
  const uint64_t handled = fs_rights(r.abi);
  RulesetAttr attr{.handled_fs = handled, .handled_net = r.abi >= 4 ? kBindTcp | kConnectTcp : 0};
  size_t attr_size = r.abi >= 4 ? sizeof attr : sizeof attr.handled_fs;
  Fd ruleset(static_cast<int>(::syscall(SYS_landlock_create_ruleset, &attr, attr_size, 0)));
  if (!ruleset) fail("creating the ruleset");
  auto allow = [&](int dir, uint64_t rights) {
    PathBeneath rule{.allowed = rights & handled, .parent_fd = dir};
    if (::syscall(SYS_landlock_add_rule, ruleset.get(), LANDLOCK_RULE_PATH_BENEATH, &rule, 0) != 0)
      fail("adding a rule");
  };
  const uint64_t read = kReadFile | kReadDir;
  for (const auto& t : trees) {
    uint64_t rights = read;
    if (t.writable) {
      rights = handled & ~(kExecute | kMakeChar | kMakeBlock | kIoctlDev);
      if (t.devices) rights |= kMakeChar | kMakeBlock | kIoctlDev;
    }
    allow(t.dir, rights);
  }
  // /proc: fsd names its open files as /proc/self/fd/N (an open there is
  // checked against the file it reaches), and reads its peers' groups.
  Fd proc(::open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!proc) fail("opening /proc");
  allow(proc.get(), read);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("no_new_privs");
  if (::syscall(SYS_landlock_restrict_self, ruleset.get(), 0) != 0) fail("restricting fsd");
  r.confined = true;
  return r;
}

}  // namespace fsd
