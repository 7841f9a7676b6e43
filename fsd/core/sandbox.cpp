#include "fsd/core/sandbox.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "fsd/core/seccomp.h"

namespace fsd {
namespace {

constexpr int kKept[] = {CAP_CHOWN,  CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID,
                         CAP_SETGID, CAP_SETUID,       CAP_MKNOD,           CAP_SETFCAP};

[[noreturn]] void fail(const std::string& step) {
  throw std::runtime_error("--sandbox namespace: " + step + ": " + std::strerror(errno));
}

void write_proc(const char* file, const std::string& text) {
  int fd = ::open(file, O_WRONLY | O_CLOEXEC);
  if (fd < 0) fail(std::string("opening ") + file);
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  int saved = errno;
  ::close(fd);
  errno = saved;
  if (!ok) fail(std::string("writing ") + file);
}

std::string map_text(const std::vector<IdRange>& ranges) {
  std::string out;
  for (const auto& r : ranges)
    out += std::to_string(r.inside) + " " + std::to_string(r.host) + " " + std::to_string(r.count) + "\n";
  return out;
}

// Runs `tool` (newuidmap or newgidmap) for process `pid` and `ranges`;
// returns its exit status, 127 if it could not be run.
int run_map_tool(const char* tool, pid_t pid, const std::vector<IdRange>& ranges) {
  std::vector<std::string> args{tool, std::to_string(pid)};
  for (const auto& r : ranges)
    for (uint32_t v : {r.inside, r.host, r.count}) args.push_back(std::to_string(v));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t child = ::fork();
  if (child < 0) return 127;
  if (child == 0) {
    ::execvp(tool, argv.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

// Ranges beyond fsd's own id are written by newuidmap and newgidmap, which
// check them against the host's subordinate ids and must run outside the
// new namespace: a helper forked before unshare runs them once fsd is in
// it, and reports which step failed (0: none).
void map_with_helper(const NamespaceIds& ids) {
  int go[2], done[2];
  if (::pipe2(go, O_CLOEXEC) != 0 || ::pipe2(done, O_CLOEXEC) != 0) fail("pipe");
  pid_t fsd_pid = ::getpid();
  pid_t helper = ::fork();
  if (helper < 0) fail("fork");
  if (helper == 0) {
    ::close(go[1]);
    ::close(done[0]);
    char step = 0;
    if (::read(go[0], &step, 1) != 1) ::_exit(0);  // fsd did not get as far
    step = run_map_tool("newuidmap", fsd_pid, ids.uids) != 0   ? 'u'
           : run_map_tool("newgidmap", fsd_pid, ids.gids) != 0 ? 'g'
                                                                : 'k';
    (void)!::write(done[1], &step, 1);
    ::_exit(0);
  }
  ::close(go[0]);
  ::close(done[1]);
  bool entered = ::unshare(CLONE_NEWUSER) == 0;
  int saved = errno;
  char step = 0;
  if (entered) {
    (void)!::write(go[1], "x", 1);
    if (::read(done[0], &step, 1) != 1) step = 0;
  }
  ::close(go[1]);
  ::close(done[0]);
  while (::waitpid(helper, nullptr, 0) < 0 && errno == EINTR) {
  }
  errno = saved;
  if (!entered)
    fail("unshare(CLONE_NEWUSER) (an unprivileged fsd needs user namespaces for its sandbox; or use --sandbox none)");
  if (step != 'k') {
    const char* what = step == 'g' ? "--gid-map: newgidmap" : "--uid-map: newuidmap";
    throw std::runtime_error(std::string(what) + " could not map the ranges (its message, if any, is above; the "
                             "tool comes with Debian's uidmap package, and the host ids must be this user's "
                             "subordinate ids in /etc/subuid and /etc/subgid)");
  }
}

// Started by an ordinary user, fsd first enters a user namespace of its own.
// By default its uid and gid are the only ids mapped there (to themselves,
// or to what --uid-map/--gid-map say): it may build the rest of the sandbox,
// and its capabilities reach no file it could not reach before. With ranges
// of subordinate ids mapped too, it may also act as those ids.
void enter_user_namespace(const NamespaceIds& ids) {
  uid_t uid = ::geteuid();
  gid_t gid = ::getegid();
  if (!maps_only(ids.uids, uid) || !maps_only(ids.gids, gid)) return map_with_helper(ids);
  if (::unshare(CLONE_NEWUSER) != 0)
    fail("unshare(CLONE_NEWUSER) (an unprivileged fsd needs user namespaces for its sandbox; or use --sandbox none)");
  auto own = [](const std::vector<IdRange>& given, uint32_t id) {
    return map_text(given.empty() ? std::vector<IdRange>{{id, id, 1}} : given);
  };
  write_proc("/proc/self/setgroups", "deny");
  write_proc("/proc/self/gid_map", own(ids.gids, gid));
  write_proc("/proc/self/uid_map", own(ids.uids, uid));
}

unsigned thread_count() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("Threads:")) return static_cast<unsigned>(std::stoul(line.substr(8)));
  return 0;
}

// fsd becomes pid 1 of a new pid namespace: it forks, and the parent stays
// outside as a waiter with nothing but what waiting takes. It passes
// SIGINT and SIGTERM on, and exits with the server's status (128+N if
// signal N ended it), so a supervisor sees one process as before. The
// server dies with the waiter (PR_SET_PDEATHSIG).
void split_off_waiter(SeccompAction waiter_seccomp) {
  if (unsigned n = thread_count(); n != 1) {
    errno = EBUSY;
    fail("fork into the pid namespace with " + std::to_string(n) + " threads running");
  }
  sigset_t wait_for{}, before{};
  sigemptyset(&wait_for);
  for (int sig : {SIGCHLD, SIGINT, SIGTERM}) sigaddset(&wait_for, sig);
  ::sigprocmask(SIG_BLOCK, &wait_for, &before);
  int alive[2];
  if (::pipe2(alive, O_CLOEXEC) != 0) fail("pipe");
  pid_t child = ::fork();
  if (child < 0) fail("fork");
  if (child == 0) {
    ::close(alive[1]);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    pollfd p{alive[0], POLLIN, 0};
    if (::poll(&p, 1, 0) != 0) ::_exit(1);  // the waiter is gone already
    ::close(alive[0]);
    ::sigprocmask(SIG_SETMASK, &before, nullptr);
    return;
  }
  // The waiter: holds nothing of the server's, and gives up everything.
  ::close(alive[0]);
  if (alive[1] > 3) ::close_range(3, static_cast<unsigned>(alive[1]) - 1, 0);
  ::close_range(static_cast<unsigned>(alive[1]) + 1, ~0u, 0);
  __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[2]{};
  bool ok = ::syscall(SYS_capset, &h, none) == 0 && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0;
  try {
    install_seccomp(waiter_seccomp, SeccompList::kWaiter);
  } catch (const std::exception&) {
    ok = false;
  }
  if (!ok) {
    ::kill(child, SIGKILL);
    ::_exit(1);
  }
  for (;;) {
    siginfo_t info{};
    if (::sigwaitinfo(&wait_for, &info) < 0) continue;
    if (info.si_signo != SIGCHLD) {
      ::kill(child, info.si_signo);
      continue;
    }
    int status = 0;
    if (::waitpid(child, &status, WNOHANG) == child) ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
}

// An empty, read-only tmpfs with /proc and the exports becomes the root.
// The tmpfs is mounted over a directory every system has (in this private
// namespace only), and pivot_root swaps it in. Mounts stay slaves of the
// host's, so that what the host mounts under an export later still shows.
std::vector<Fd> pivot_into_empty_root(const std::vector<ExportMount>& exports) {
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) != 0) fail("making mounts slaves of the host's");
  const char* base = nullptr;
  for (const char* d : {"/tmp", "/mnt", "/run", "/dev"}) {
    struct stat st{};
    if (::stat(d, &st) == 0 && S_ISDIR(st.st_mode)) {
      base = d;
      break;
    }
  }
  if (base == nullptr) fail("no directory to build the new root on");
  // The exports are looked up before the tmpfs hides `base`, which one of
  // them may lie under; each is bound from an fd opened in this namespace
  // (a bind's source must be one of its mounts).
  std::vector<Fd> sources;
  for (const auto& e : exports) {
    sources.emplace_back(::open(e.path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!sources.back()) fail("opening export " + e.path);
  }
  if (::mount("fsd-sandbox", base, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755") != 0)
    fail("mounting the new root");
  std::string root(base);
  std::string proc = root + "/proc";
  if (::mkdir(proc.c_str(), 0555) != 0) fail("mkdir /proc");
  // fsd names open files as /proc/self/fd/N. A /proc of the new pid
  // namespace shows fsd alone, with the thread ids it knows (the sanitizers'
  // leak checker stops threads by them); where the kernel refuses one (a
  // user namespace under a masked /proc), the host's is bound instead.
  if (::mount("proc", proc.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0 &&
      ::mount("/proc", proc.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0)
    fail("mounting /proc");
  if (!exports.empty() && ::mkdir((root + "/exports").c_str(), 0555) != 0) fail("mkdir /exports");
  for (size_t i = 0; i < exports.size(); i++) {
    std::string at = root + "/exports/" + std::to_string(i);
    std::string from = "/proc/self/fd/" + std::to_string(sources[i].get());
    if (::mkdir(at.c_str(), 0555) != 0) fail("mkdir " + at);
    if (::mount(from.c_str(), at.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0) fail("binding export " + exports[i].path);
    // Flags are only added (mount_setattr keeps what the host set, which a
    // user namespace could not clear anyway), on the export's submounts too.
    mount_attr attr{};
    attr.attr_set = MOUNT_ATTR_NOSUID | (exports[i].devices ? 0 : MOUNT_ATTR_NODEV) |
                    (exports[i].read_only ? MOUNT_ATTR_RDONLY : 0);
    if (::mount_setattr(AT_FDCWD, at.c_str(), AT_RECURSIVE, &attr, sizeof attr) != 0)
      fail("making export " + exports[i].path + (exports[i].devices ? " nosuid" : " nodev, nosuid") +
           (exports[i].read_only ? " and read-only" : ""));
  }
  sources.clear();
  if (::chdir(base) != 0) fail("chdir");
  if (::syscall(SYS_pivot_root, ".", ".") != 0) fail("pivot_root");
  if (::umount2(".", MNT_DETACH) != 0) fail("detaching the old root");
  if (::chdir("/") != 0) fail("chdir /");
  if (::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    fail("making the new root read-only");
  std::vector<Fd> roots;
  for (size_t i = 0; i < exports.size(); i++) {
    roots.emplace_back(::open(("/exports/" + std::to_string(i)).c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!roots.back()) fail("opening /exports/" + std::to_string(i));
  }
  return roots;
}

void drop_capabilities(uint64_t keep) {
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
  if (text == "landlock") return SandboxMode::kLandlock;
  // virtiofsd's chroot mode confines it to the shared directory without
  // namespaces; fsd's namespace sandbox confines it at least as much (an
  // empty root, its exports reached through fds), so it stands in.
  if (text == "chroot") return SandboxMode::kNamespace;
  throw std::invalid_argument("--sandbox " + std::string(text) + ": expected namespace, chroot (as namespace), landlock or none");
}

IdRange parse_namespace_map(std::string_view flag, std::string_view text) {
  std::string_view t = text;
  if (t.starts_with(':')) t.remove_prefix(1);
  if (t.ends_with(':')) t.remove_suffix(1);
  uint64_t v[3]{};
  for (int i = 0; i < 3; i++) {
    auto colon = t.find(':');
    std::string_view f = t.substr(0, colon);
    auto [end, ec] = std::from_chars(f.data(), f.data() + f.size(), v[i]);
    if (f.empty() || ec != std::errc() || end != f.data() + f.size() || v[i] > 0xffffffffu || (i < 2) == (colon == std::string_view::npos))
      throw std::invalid_argument(std::string(flag) + " '" + std::string(text) + "': expected :INSIDE:HOST:COUNT:");
    t = colon == std::string_view::npos ? std::string_view{} : t.substr(colon + 1);
  }
  constexpr uint64_t kIds = uint64_t{1} << 32;
  if (v[2] == 0 || v[0] + v[2] > kIds || v[1] + v[2] > kIds)
    throw std::invalid_argument(std::string(flag) + " '" + std::string(text) +
                                "': COUNT must be at least 1, and both ranges must end by 4294967295");
  return {static_cast<uint32_t>(v[0]), static_cast<uint32_t>(v[1]), static_cast<uint32_t>(v[2])};
}

void check_namespace_maps(std::string_view flag, const std::vector<IdRange>& ranges) {
  constexpr size_t kKernelMax = 340;
  if (ranges.size() > kKernelMax)
    throw std::invalid_argument(std::string(flag) + ": at most " + std::to_string(kKernelMax) + " ranges");
  auto overlap = [](uint64_t a, uint64_t b, uint64_t n, uint64_t m) { return a < b + m && b < a + n; };
  for (size_t i = 0; i < ranges.size(); i++)
    for (size_t j = 0; j < i; j++) {
      const IdRange& a = ranges[i];
      const IdRange& b = ranges[j];
      if (overlap(a.inside, b.inside, a.count, b.count) || overlap(a.host, b.host, a.count, b.count))
        throw std::invalid_argument(std::string(flag) + ": the ranges :" + std::to_string(b.inside) + ":" +
                                    std::to_string(b.host) + ":" + std::to_string(b.count) + ": and :" +
                                    std::to_string(a.inside) + ":" + std::to_string(a.host) + ":" +
                                    std::to_string(a.count) + ": overlap");
    }
}

bool maps_only(const std::vector<IdRange>& ranges, uint32_t own) {
  return ranges.empty() || (ranges.size() == 1 && ranges[0].host == own && ranges[0].count == 1);
}

uint64_t default_capabilities() {
  uint64_t keep = 0;
  for (int c : kKept) keep |= uint64_t{1} << c;
  return keep;
}

uint64_t parse_modcaps(std::string_view text, uint64_t base) {
  const std::string given(text);
  auto fail = [&](const std::string& why) { throw std::invalid_argument("--modcaps '" + given + "': " + why); };
  if (text.empty()) fail("expected +NAME or -NAME, separated by ':'");
  uint64_t keep = base;
  while (!text.empty()) {
    auto colon = text.find(':');
    std::string_view item = text.substr(0, colon);
    text = colon == std::string_view::npos ? std::string_view{} : text.substr(colon + 1);
    if (item.size() < 2 || (item[0] != '+' && item[0] != '-')) fail(std::string("'").append(item).append("' is not +NAME or -NAME"));
    std::string name(item.substr(1));
    for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (!name.starts_with("cap_")) name = "cap_" + name;
    cap_value_t cap;
    if (cap_from_name(name.c_str(), &cap) != 0 || cap < 0 || cap > CAP_LAST_CAP)
      fail(std::string("no capability '").append(item.substr(1)).append("'"));
    uint64_t bit = uint64_t{1} << cap;
    keep = item[0] == '+' ? keep | bit : keep & ~bit;
  }
  return keep;
}

std::string capability_names(uint64_t mask) {
  std::string out;
  for (int c = 0; c <= CAP_LAST_CAP; c++) {
    if (!(mask & (uint64_t{1} << c))) continue;
    char* name = cap_to_name(c);
    std::string n = name ? name : std::to_string(c);
    cap_free(name);
    if (n.starts_with("cap_")) n = n.substr(4);
    out += (out.empty() ? "" : ",") + n;
  }
  return out.empty() ? "none" : out;
}

std::vector<Fd> enter_sandbox(SandboxMode mode, SeccompAction waiter_seccomp, const std::vector<ExportMount>& exports,
                              NamespaceIds ids, uint64_t keep) {
  if (mode != SandboxMode::kNamespace) return {};
  if (::geteuid() != 0) enter_user_namespace(ids);
  if (::unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC) != 0) fail("unshare");
  split_off_waiter(waiter_seccomp);
  std::vector<Fd> roots = pivot_into_empty_root(exports);
  drop_capabilities(keep);
  return roots;
}

}  // namespace fsd
