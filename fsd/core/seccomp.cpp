#include "fsd/core/seccomp.h"

#include <seccomp.h>

#include <cerrno>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>

namespace fsd {

SeccompAction parse_seccomp(std::string_view text) {
  if (text == "none") return SeccompAction::kNone;
  if (text == "kill") return SeccompAction::kKill;
  if (text == "log") return SeccompAction::kLog;
  if (text == "trap") return SeccompAction::kTrap;
  throw std::invalid_argument("--seccomp " + std::string(text) + ": expected kill, log, trap or none");
}

namespace {

// Everything fsd's threads call while serving: file operations on exports
// (for calls made inline as well as through the blocking pool), sockets and
// vhost-user (fd passing, guest memory mappings), io_uring, acting as
// callers, and what glibc and the C++ runtime need for threads, memory,
// time and signals. Nothing that creates namespaces, mounts, loads
// modules, traces, or executes.
constexpr const char* kAllowed[] = {
    // files
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "open", "openat", "openat2", "open_by_handle_at", "name_to_handle_at", "close", "close_range", "dup", "dup2",
    "dup3", "fcntl", "lseek", "stat", "lstat", "fstat", "newfstatat", "statx", "statfs", "fstatfs", "getdents64",
    "access", "faccessat", "faccessat2", "readlink", "readlinkat", "mkdirat", "mknodat", "symlinkat", "linkat",
    "unlinkat", "renameat", "renameat2", "fchmod", "fchmodat", "fchown", "fchownat", "truncate", "ftruncate",
    "utimensat", "fallocate", "fsync", "fdatasync", "syncfs", "copy_file_range", "flock",
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr", "llistxattr",
    "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    // io_uring
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    // sockets, eventfds, waiting
    "accept", "accept4", "recvfrom", "sendto", "recvmsg", "sendmsg", "shutdown", "getsockopt", "setsockopt",
    "getsockname", "getpeername", "eventfd2", "poll", "ppoll",
    // acting as callers
    "setfsuid", "setfsgid", "setgroups", "capget", "getuid", "geteuid", "getgid", "getegid", "getgroups",
    // memory (guest memory maps, malloc)
    "mmap", "munmap", "mremap", "mprotect", "madvise", "brk",
    // threads and time
    "clone", "clone3", "set_robust_list", "rseq", "futex", "sched_yield", "sched_getaffinity", "gettid",
    "getpid", "exit", "exit_group", "nanosleep", "clock_nanosleep", "clock_gettime", "gettimeofday",
    "getrandom",
    // signals (sigwait in main, SIGUSR1 to itself, abort)
    "rt_sigprocmask", "rt_sigaction", "rt_sigreturn", "rt_sigtimedwait", "kill", "tgkill", "restart_syscall",
};

// The sandbox's waiter (outside the pid namespace) only waits for signals
// and for the server, passes signals on, and exits.
constexpr const char* kWaiterAllowed[] = {
    "rt_sigtimedwait", "rt_sigprocmask", "rt_sigreturn", "wait4", "kill", "exit", "exit_group", "restart_syscall",
};

}  // namespace

void install_seccomp(SeccompAction action, SeccompList list) {
  if (action == SeccompAction::kNone) return;
  std::span<const char* const> allowed = list == SeccompList::kServer ? std::span<const char* const>(kAllowed)
                                                                      : std::span<const char* const>(kWaiterAllowed);
  uint32_t on_violation = action == SeccompAction::kKill ? SCMP_ACT_KILL_PROCESS
                          : action == SeccompAction::kLog ? SCMP_ACT_LOG
                                                          : SCMP_ACT_TRAP;
  scmp_filter_ctx ctx = seccomp_init(on_violation);
  if (ctx == nullptr) throw std::runtime_error("--seccomp: seccomp_init failed");
  // A binary tree of syscall numbers, not a list of ~100 comparisons: every
  // inline syscall pays for the filter.
  (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
  auto fail = [&](const std::string& what, int rc) {
    seccomp_release(ctx);
    throw std::runtime_error("--seccomp: " + what + ": " + std::strerror(-rc));
  };
  for (const char* name : allowed) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0); rc != 0) fail(std::string("allowing ") + name, rc);
  }
  if (int rc = seccomp_load(ctx); rc != 0) fail("loading the filter", rc);
  seccomp_release(ctx);
}

}  // namespace fsd
