// vmlaunch: spec.json -> fsd + QEMU -> a guest with the store, xchg, shared
// and a writable overlay store; runs one command and returns its status.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <netdb.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "launcher/initramfs.h"
#include "launcher/modules.h"
#include "launcher/plan.h"
#include "launcher/spec.h"

namespace fs = std::filesystem;
using namespace fsd::launcher;

namespace {

// Exit statuses of vmlaunch's own outcomes (else: the guest command's status).
constexpr int kExitUsage = 2;         // bad command line or spec
constexpr int kExitGuestPanic = 121;  // the guest kernel panicked
constexpr int kExitTimeout = 124;     // the spec's timeout passed
constexpr int kExitFsdFailed = 125;   // fsd failed to start or died
constexpr int kExitQemuFailed = 126;  // QEMU failed, or the guest stopped without a status
constexpr int kExitNoCommandStatus = 0;
// How long a guest asked to power off (SIGTERM) gets before it is killed.
constexpr auto kPowerdownGrace = std::chrono::seconds(20);

// Ends vmlaunch with `code` after unwinding, so every temp dir and child is cleaned up.
struct Exit {
  int code;
  std::string message;
};
[[noreturn]] void die(int code, const std::string& msg) { throw Exit{code, msg}; }

std::string self_dir() {
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec).parent_path().string();
}

std::string cache_root() {
  if (const char* c = std::getenv("FSD_CACHE"); c && *c) return c;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/fsd";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/fsd";
  return "/tmp/fsd-cache";
}

std::string default_kernel() {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(cache_root() + "/kernel", ec))
    if (fs::exists(e.path() / "vmlinuz")) return (e.path() / "vmlinuz").string();
  return "";
}

std::vector<std::string> split_words(const char* s) {
  std::vector<std::string> out;
  if (!s) return out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

void stop_child(pid_t pid, int& status);

// A child process that dies with vmlaunch (PDEATHSIG); stopped and reaped
// by its destructor if its owner has not done so.
struct Child {
  pid_t pid = -1;
  int pidfd = -1;
  int status = -1;  // once reaped
  Child() = default;
  Child(Child&& o) noexcept : pid(std::exchange(o.pid, -1)), pidfd(std::exchange(o.pidfd, -1)), status(o.status) {}
  Child& operator=(Child&& o) noexcept {
    if (this != &o) {
      release();
      pid = std::exchange(o.pid, -1);
      pidfd = std::exchange(o.pidfd, -1);
      status = o.status;
    }
    return *this;
  }
  ~Child() { release(); }
  void release() {
    if (pid > 0 && status < 0) stop_child(pid, status);
    if (pidfd >= 0) ::close(pidfd);
    pid = pidfd = -1;
  }
  bool reaped() const { return status >= 0; }
};

Child spawn(const std::vector<std::string>& argv, int in_fd, int out_fd, int err_fd, int keep_fd = -1) {
  pid_t parent = ::getpid();
  Child c;
  c.pid = ::fork();
  if (c.pid < 0) die(1, "fork failed");
  if (c.pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (in_fd >= 0) ::dup2(in_fd, 0);
    if (out_fd >= 0) ::dup2(out_fd, 1);
    if (err_fd >= 0) ::dup2(err_fd, 2);
    if (keep_fd >= 0) ::fcntl(keep_fd, F_SETFD, 0);
    std::vector<char*> a;
    for (auto& s : const_cast<std::vector<std::string>&>(argv)) a.push_back(s.data());
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    std::fprintf(stderr, "cannot run %s: %s\n", a[0], std::strerror(errno));
    ::_exit(127);
  }
  c.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, c.pid, 0));
  return c;
}

void reap(Child& c, bool block) {
  if (c.pid <= 0 || c.reaped()) return;
  int st;
  if (::waitpid(c.pid, &st, block ? 0 : WNOHANG) == c.pid)
    c.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void stop_child(pid_t pid, int& status) {
  ::kill(pid, SIGKILL);
  int st;
  if (::waitpid(pid, &st, 0) == pid) status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// SIGTERM, a grace period, then SIGKILL.
void stop(Child& c, std::chrono::milliseconds grace) {
  if (c.pid <= 0 || c.reaped()) return;
  ::kill(c.pid, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (!c.reaped() && std::chrono::steady_clock::now() < deadline) {
    pollfd p{c.pidfd, POLLIN, 0};
    ::poll(&p, 1, 50);
    reap(c, false);
  }
  if (!c.reaped()) {
    ::kill(c.pid, SIGKILL);
    reap(c, true);
  }
}

std::string read_text(const std::string& path, size_t max = 4096) {
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  return s.size() > max ? s.substr(s.size() - max) : s;
}

// busybox applets linked in the guest's /bin.
constexpr const char* kApplets[] = {
    "sh", "ls", "cat", "echo", "mkdir", "rm", "cp", "mv", "touch", "sync", "sleep", "true", "false", "test", "[",
    "env", "id", "uname", "grep", "wc", "find", "tar", "md5sum", "sha256sum", "dd", "head", "tail", "mount", "umount",
    "df", "du", "stat", "ln", "chmod", "readlink", "poweroff", "date", "seq", "sort", "tr", "cut", "xargs", "vi",
    "less", "ip", "nc", "wget", "ping", "hostname"};

// The cached part of the initramfs: init, busybox and modules. Keyed by
// the content of what goes in (and the applet list), so it is rebuilt
// exactly when one of them changes.
std::string base_initramfs(const std::vector<std::string>& modules, const std::string& init_binary) {
  std::string key = "layout 1;";
  for (const char* a : kApplets) key += std::string(a) + ",";
  auto add = [&](const std::string& p) {
    std::ifstream in(p, std::ios::binary | std::ios::ate);
    std::string content(static_cast<size_t>(std::max<std::streamoff>(0, in.tellg())), '\0');
    in.seekg(0).read(content.data(), static_cast<std::streamsize>(content.size()));
    char h[24];
    std::snprintf(h, sizeof h, "%016zx", std::hash<std::string>{}(content));
    key += fs::path(p).filename().string() + ":" + std::to_string(content.size()) + ":" + h + ";";
  };
  add(init_binary);
  add("/bin/busybox");
  for (auto& m : modules) add(m);
  char hex[32];
  std::snprintf(hex, sizeof hex, "%016zx", std::hash<std::string>{}(key));
  std::string dir = cache_root() + "/initramfs";
  fs::create_directories(dir);
  std::string path = dir + "/" + hex + ".img";
  if (fs::exists(path)) return path;
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    Initramfs ar(tmp);
    for (const char* d : {"bin", "dev", "proc", "sys", "run", "tmp", "mnt", "lib", "lib/modules", "nix", "root"}) ar.add_dir(d);
    ar.add_char_device("dev/console", 5, 1);
    ar.add_host_file("bin/busybox", "/bin/busybox", 0755);
    for (const char* applet : kApplets) ar.add_symlink(std::string("bin/") + applet, "busybox");
    ar.add_host_file("init", init_binary, 0755);
    for (auto& m : modules) ar.add_host_file("lib/modules/" + fs::path(m).filename().string(), m, 0644);
    ar.close();
  }
  fs::rename(tmp, path);
  return path;
}

void append_file(std::ofstream& out, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  out << in.rdbuf();
}

// Connects to HOST:PORT over TCP; -1 with errno set on failure.
int connect_tcp(const std::string& host_port) {
  auto colon = host_port.rfind(':');
  if (colon == std::string::npos) return errno = EINVAL, -1;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host_port.substr(0, colon).c_str(), host_port.substr(colon + 1).c_str(), &hints, &res) != 0)
    return errno = EHOSTUNREACH, -1;
  int fd = -1;
  for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) != 0) ::close(fd), fd = -1;
  }
  ::freeaddrinfo(res);
  return fd;
}

// `vmlaunch --relay-to HOST:PORT`: what QEMU runs for each guest->host
// forwarded connection (guestfwd=...-cmd:). Copies stdin to HOST:PORT and
// HOST:PORT to stdout, passing each side's end on (half-close), until both
// directions are done.
int relay(const std::string& to) {
  int sock = connect_tcp(to);
  if (sock < 0) {
    std::fprintf(stderr, "vmlaunch --relay-to %s: %s\n", to.c_str(), std::strerror(errno));
    return 1;
  }
  bool up = true, down = true;  // guest->host, host->guest still open
  char buf[65536];
  while (up || down) {
    pollfd p[2] = {{up ? 0 : -1, POLLIN, 0}, {down ? sock : -1, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0 && errno != EINTR) return 1;
    auto pump = [&](int from, int to_fd, bool& open, auto on_eof) {
      ssize_t n = ::read(from, buf, sizeof buf);
      if (n <= 0) {
        open = false;
        on_eof();
        return;
      }
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::write(to_fd, buf + off, static_cast<size_t>(n - off));
        if (w <= 0) {
          up = down = false;
          return;
        }
        off += w;
      }
    };
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) pump(0, sock, up, [&] { ::shutdown(sock, SHUT_WR); });
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) pump(sock, 1, down, [&] { ::shutdown(1, SHUT_WR), ::close(1); });
  }
  return 0;
}

// Asks QEMU to power the guest off, through its monitor (QMP): the guest
// sees an ACPI power-button press. False if the monitor did not take it.
bool qmp_powerdown(const std::string& socket_path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (fd < 0 || socket_path.size() >= sizeof a.sun_path) return false;
  std::memcpy(a.sun_path, socket_path.c_str(), socket_path.size() + 1);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string got;
  // Reads until a line holding `want` (QMP is one JSON object per line; events may come between).
  auto expect = [&](const char* want) {
    char b[1024];
    for (;;) {
      for (size_t nl; (nl = got.find('\n')) != std::string::npos; got.erase(0, nl + 1))
        if (got.compare(0, nl, want) == 0 || got.substr(0, nl).find(want) != std::string::npos) return got.erase(0, nl + 1), true;
      ssize_t n = ::read(fd, b, sizeof b);
      if (n <= 0) return false;
      got.append(b, static_cast<size_t>(n));
    }
  };
  auto send = [&](const std::string& cmd) { return ::write(fd, cmd.data(), cmd.size()) == static_cast<ssize_t>(cmd.size()); };
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && expect("\"QMP\"") &&
            send("{\"execute\":\"qmp_capabilities\"}\n") && expect("\"return\"") &&
            send("{\"execute\":\"system_powerdown\"}\n") && expect("\"return\"");
  ::close(fd);
  return ok;
}

struct Options {
  std::string spec_path, store, accel, fsd_binary, relay_to;
  bool dry_run = false, print_spec = false, keep = false;
  int timeout = -1;
  std::vector<std::string> command;
};

// The built-in demo: the demo store scripts/setup makes, the default kernel,
// and a command that shows the guest's view.
nlohmann::json demo_spec(const std::string& kernel) {
  return {{"name", "vmlaunch-demo"},
          {"memory", 512},
          {"console", "quiet"},
          {"kernel", kernel},
          {"store", {{"path", cache_root() + "/demo-store"}}},
          {"command",
           "echo '== the store (read-only, with a writable overlay):'; ls /nix/store; "
           "echo '== running a program from the store:'; /nix/store/*-hello-1.0/bin/hello; "
           "echo '== writing a new store path in the overlay:'; mkdir /nix/store/0000000000000000000000000000000n-new && "
           "ls -d /nix/store/*-new; echo '== writing to xchg:'; uname -a > /tmp/xchg/uname.txt && cat /tmp/xchg/uname.txt"}};
}

int run(Options& o) {
  // Where vmlaunch's own files go ($TMPDIR with USE_TMPDIR, as qemu-vm.nix).
  const char* tmpdir = std::getenv("TMPDIR");
  const char* use_tmpdir = std::getenv("USE_TMPDIR");
  std::string base = (tmpdir && *tmpdir && !(use_tmpdir && std::string(use_tmpdir) == "0")) ? tmpdir : "/tmp";
  std::string work = base + "/vmlaunch-XXXXXX";
  if (!::mkdtemp(work.data())) die(1, "cannot create a directory in " + base + ": " + std::strerror(errno));
  struct Cleanup {
    std::string dir;
    bool keep;
    ~Cleanup() {
      if (keep) {
        std::fprintf(stderr, "vmlaunch: kept %s\n", dir.c_str());
      } else {
        std::error_code ec;
        fs::remove_all(dir, ec);
      }
    }
  } cleanup{work, o.keep};
  std::string xchg = work + "/xchg", run_dir = work + "/run";
  fs::create_directories(xchg);
  fs::create_directories(run_dir);

  SpecContext ctx;
  ctx.store_override = o.store;
  ctx.xchg_dir = xchg;
  if (const char* sd = std::getenv("SHARED_DIR"); sd && *sd) ctx.shared_dir = sd;
  Spec spec;
  try {
    if (o.spec_path.empty()) {
      std::string kernel = default_kernel();
      if (kernel.empty()) die(kExitUsage, "no spec given and no default guest kernel: run scripts/setup");
      ctx.file = "(built-in demo)";
      spec = parse_spec(demo_spec(kernel), ctx);
    } else {
      spec = load_spec(o.spec_path, ctx);
    }
  } catch (const SpecError& e) {
    die(kExitUsage, e.what());
  }
  if (!o.command.empty()) {
    spec.command_shell.reset();
    spec.command_argv = o.command;
  }
  if (o.timeout >= 0) spec.timeout_s = static_cast<unsigned>(o.timeout);
  if (!o.accel.empty()) spec.accel = o.accel == "kvm" ? Accel::kKvm : o.accel == "tcg" ? Accel::kTcg : Accel::kAuto;
  if (o.print_spec) {
    std::printf("%s\n", to_json(spec).dump(2).c_str());
    return 0;
  }

  PlanInputs in;
  in.fsd_binary = o.fsd_binary.empty() ? (fs::exists(self_dir() + "/../fsd/fsd") ? self_dir() + "/../fsd/fsd" : "fsd") : o.fsd_binary;
  in.run_dir = run_dir;
  in.qmp_socket = run_dir + "/qmp.sock";
  in.relay_binary = fs::read_symlink("/proc/self/exe").string();
  in.initrd = work + "/initrd.img";
  in.module_dir = spec.modules.empty() ? default_module_dir(spec.kernel) : spec.modules;
  // auto: KVM when it can be opened, else TCG; a KVM guest that stays
  // silent is caught below and the user told to use TCG.
  bool kvm_ok = ::access("/dev/kvm", R_OK | W_OK) == 0;
  in.accel = spec.accel == Accel::kAuto ? (kvm_ok ? Accel::kKvm : Accel::kTcg) : spec.accel;
  in.extra_kernel_params = std::getenv("QEMU_KERNEL_PARAMS") ? std::getenv("QEMU_KERNEL_PARAMS") : "";
  in.extra_qemu_args = split_words(std::getenv("QEMU_OPTS"));
  for (auto& w : split_words(std::getenv("QEMU_NET_OPTS"))) in.extra_qemu_args.push_back(w);
  // Disks: create what is missing (qcow2), and the throw-away empty ones.
  auto qemu_img = [&](const std::string& file, uint64_t mib) {
    if (o.dry_run) return;
    std::string log = work + "/qemu-img.log";
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    Child c = spawn({"qemu-img", "create", "-q", "-f", "qcow2", file, std::to_string(mib) + "M"}, -1, fd, fd);
    ::close(fd);
    reap(c, true);
    if (c.status != 0) die(kExitQemuFailed, "qemu-img could not create " + file + ":\n" + read_text(log));
  };
  auto format_of = [](const std::string& file) {
    char magic[4] = {};
    std::ifstream(file, std::ios::binary).read(magic, 4);
    return std::string(magic, 4) == std::string("QFI\xfb", 4) ? "qcow2" : "raw";
  };
  for (const auto& d : spec.disks) {
    if (!fs::exists(d.file)) qemu_img(d.file, d.size_mib);
    in.disks.push_back({d.file, fs::exists(d.file) ? format_of(d.file) : "qcow2", d.read_only, d.snapshot});
  }
  for (size_t i = 0; i < spec.empty_disks_mib.size(); i++) {
    std::string file = work + "/empty-" + std::to_string(i) + ".qcow2";
    qemu_img(file, spec.empty_disks_mib[i]);
    in.disks.push_back({file, "qcow2", false, false});
  }

  Plan plan;
  try {
    plan = make_plan(spec, in);
  } catch (const SpecError& e) {
    die(kExitUsage, (o.spec_path.empty() ? "(built-in demo)" : o.spec_path) + ": " + e.what());
  }
  if (o.dry_run) {
    auto join = [](const std::vector<std::string>& v) {
      std::string s;
      for (auto& w : v) s += (s.empty() ? "" : " ") + (w.find(' ') != std::string::npos ? "'" + w + "'" : w);
      return s;
    };
    std::printf("fsd:\n  %s\nqemu:\n  %s\nguest mounts:\n", join(plan.fsd_argv).c_str(), join(plan.qemu_argv).c_str());
    for (auto& m : plan.mount_plan) std::printf("  %s\n", m.c_str());
    std::printf("guest command:\n  %s\n", plan.guest.contains("command") ? plan.guest["command"].dump().c_str() : "(interactive shell)");
    return 0;
  }
  if (in.module_dir.empty()) die(kExitUsage, "no kernel modules for " + spec.kernel + ": set \"modules\" in the spec");

  // The initramfs: [the spec's initrd] + the cached base + this run's plan.
  std::vector<std::string> mods;
  try {
    mods = resolve_modules(in.module_dir, plan.modules);
  } catch (const std::exception& e) {
    die(kExitUsage, e.what());
  }
  nlohmann::json guest = plan.guest;
  guest["modules"] = nlohmann::json::array();
  for (auto& m : mods) guest["modules"].push_back("/lib/modules/" + fs::path(m).filename().string());
  std::string init_binary = self_dir() + "/fsd-guest-init";
  if (!fs::exists(init_binary)) die(1, "fsd-guest-init is missing next to vmlaunch (" + init_binary + ")");
  std::string base_img = base_initramfs(mods, init_binary);
  {
    Initramfs ar(work + "/plan.img");
    ar.add_file("init.json", guest.dump(), 0644);
    ar.close();
    std::ofstream out(in.initrd, std::ios::binary);
    if (!spec.initrd.empty()) append_file(out, spec.initrd);
    append_file(out, base_img);
    append_file(out, work + "/plan.img");
  }

  // Signals are read from a signalfd in the loop below.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  ::sigprocmask(SIG_BLOCK, &sigs, nullptr);
  int sfd = ::signalfd(-1, &sigs, SFD_CLOEXEC);

  // fsd, and wait until every socket accepts (it says so on a pipe).
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) die(1, "pipe failed");
  std::vector<std::string> fsd_argv = plan.fsd_argv;
  fsd_argv.insert(fsd_argv.end(), {"--ready-fd", std::to_string(ready[1])});
  std::string fsd_log = work + "/fsd.log";
  int fsd_err = ::open(fsd_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  Child fsd = spawn(fsd_argv, -1, fsd_err, fsd_err, ready[1]);
  ::close(ready[1]);
  ::close(fsd_err);
  char buf[16];
  pollfd rp{ready[0], POLLIN, 0};
  if (::poll(&rp, 1, 30000) <= 0 || ::read(ready[0], buf, sizeof buf) <= 0) {
    stop(fsd, std::chrono::seconds(2));
    die(kExitFsdFailed, "fsd did not start:\n" + read_text(fsd_log));
  }
  ::close(ready[0]);

  // QEMU. With a command, its console is relayed (and watched for panics);
  // without one, the terminal is the guest's.
  bool interactive = !spec.has_command();
  int console[2] = {-1, -1};
  std::string qemu_log = work + "/qemu.log";
  auto start_qemu = [&] {
    if (console[0] >= 0) ::close(console[0]);
    if (!interactive && ::pipe2(console, O_CLOEXEC) != 0) die(1, "pipe failed");
    int err = ::open(qemu_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    Child c = spawn(plan.qemu_argv, interactive ? -1 : devnull, interactive ? -1 : console[1], err);
    ::close(err);
    ::close(devnull);
    if (!interactive) ::close(console[1]);
    return c;
  };
  Child qemu = start_qemu();

  auto started = std::chrono::steady_clock::now();
  auto deadline = spec.timeout_s ? started + std::chrono::seconds(spec.timeout_s) : std::chrono::steady_clock::time_point::max();
  bool seen_output = false, panicked = false, relaying = false, powering_down = false;
  std::string tail, quiet_line;
  int outcome = -1;
  std::string why;
  while (outcome < 0) {
    pollfd p[4] = {{sfd, POLLIN, 0}, {fsd.pidfd, POLLIN, 0}, {qemu.pidfd, POLLIN, 0}, {console[0], POLLIN, 0}};
    auto now = std::chrono::steady_clock::now();
    int wait_ms = deadline == std::chrono::steady_clock::time_point::max()
                      ? 1000 : static_cast<int>(std::max<long>(0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count()));
    ::poll(p, interactive ? 3 : 4, std::min(wait_ms, 1000));
    if (!interactive && (p[3].revents & (POLLIN | POLLHUP))) {
      char b[4096];
      ssize_t n = ::read(console[0], b, sizeof b);
      if (n > 0) {
        seen_output = true;
        std::string_view chunk(b, static_cast<size_t>(n));
        if (spec.console == Console::kSerial) {
          (void)!::write(1, chunk.data(), chunk.size());
        } else {
          // quiet: only the command's output, between the init's start and exit lines
          quiet_line += chunk;
          for (size_t nl; (nl = quiet_line.find('\n')) != std::string::npos; quiet_line.erase(0, nl + 1)) {
            std::string_view line(quiet_line.data(), nl + 1);
            auto has = [&](const char* s) { return line.find(s) != std::string_view::npos; };
            if (has("fsd-guest-init: started") || has("fsd-guest-init: exit")) {
              relaying = has("fsd-guest-init: started");
              continue;
            }
            if (relaying || has("fsd-guest-init:") || has("Kernel panic")) (void)!::write(1, line.data(), line.size());
          }
        }
        tail.append(b, static_cast<size_t>(n));
        if (tail.find("Kernel panic") != std::string::npos) panicked = true;
        if (tail.size() > 8192) tail.erase(0, tail.size() - 4096);
      } else if (n == 0) {
        ::close(console[0]);
        console[0] = -1;
      }
    }
    if (p[0].revents & POLLIN) {
      signalfd_siginfo si;
      (void)!::read(sfd, &si, sizeof si);
      int sig = static_cast<int>(si.ssi_signo);
      // SIGTERM: ask the guest to power off, and give it a grace period;
      // a second signal, or any other, stops it now.
      if (sig == SIGTERM && !powering_down && qmp_powerdown(in.qmp_socket)) {
        std::fprintf(stderr, "vmlaunch: %s: asking the guest to power off (%lld s before it is stopped)\n", strsignal(sig),
                     static_cast<long long>(kPowerdownGrace.count()));
        powering_down = true;
        deadline = std::min(deadline, std::chrono::steady_clock::now() + kPowerdownGrace);
        continue;
      }
      why = std::string(strsignal(sig)) + ": stopping the VM";
      outcome = 128 + sig;
      break;
    }
    reap(qemu, false);
    if (qemu.reaped()) {
      if (powering_down) {
        why = "the guest powered off as asked (SIGTERM)";
        outcome = 128 + SIGTERM;
      }
      break;
    }
    reap(fsd, false);
    if (fsd.reaped()) {
      why = "fsd exited unexpectedly (status " + std::to_string(fsd.status) + "); stopping the VM\n" + read_text(fsd_log);
      outcome = kExitFsdFailed;
      break;
    }
    now = std::chrono::steady_clock::now();
    if (now >= deadline && powering_down) {
      why = "the guest did not power off within " + std::to_string(kPowerdownGrace.count()) + " s of SIGTERM; stopped it";
      outcome = 128 + SIGTERM;
      break;
    }
    if (now >= deadline) {
      why = "timeout after " + std::to_string(spec.timeout_s) + " s; stopping the VM";
      outcome = kExitTimeout;
      break;
    }
    if (in.accel == Accel::kKvm && !interactive && !seen_output && now - started > std::chrono::seconds(20)) {
      if (spec.accel == Accel::kAuto) {
        // Nested KVM can hang a guest silently: fall back to TCG once.
        std::fprintf(stderr, "vmlaunch: the guest printed nothing in 20 s under KVM (nested KVM can hang); retrying with TCG\n");
        stop(qemu, std::chrono::seconds(5));
        in.accel = Accel::kTcg;
        plan = make_plan(spec, in);
        qemu = start_qemu();
        started = std::chrono::steady_clock::now();
        continue;
      }
      why = "the guest printed nothing in 20 s under KVM; nested KVM can hang silently. Rerun with --accel tcg";
      outcome = kExitQemuFailed;
      break;
    }
  }
  if (!qemu.reaped()) stop(qemu, std::chrono::seconds(10));
  stop(fsd, std::chrono::seconds(5));
  if (outcome < 0) {
    // QEMU is gone: what did the guest report?
    std::string status = read_text(xchg + "/.vmlaunch-status", 64);
    if (panicked) {
      why = "the guest kernel panicked";
      outcome = kExitGuestPanic;
    } else if (!status.empty()) {
      outcome = std::atoi(status.c_str());
    } else if (interactive && qemu.status == 0) {
      outcome = kExitNoCommandStatus;
    } else if (qemu.status != 0) {
      why = "QEMU failed (status " + std::to_string(qemu.status) + "):\n" + read_text(qemu_log);
      outcome = kExitQemuFailed;
    } else {
      why = "the guest powered off without reporting the command's status";
      outcome = kExitQemuFailed;
    }
  }
  if (!why.empty()) std::fprintf(stderr, "vmlaunch: %s\n", why.c_str());
  return outcome;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"vmlaunch [OPTIONS] [SPEC] [-- COMMAND...]: boots a QEMU guest with a host store shared by fsd,\n"
               "and runs a command in it (the spec's, or COMMAND).\n"
               "Without a spec it runs a built-in demo. Exit status: the guest command's; or 2 bad spec/usage,\n"
               "121 guest kernel panic, 124 timeout, 125 fsd failed, 126 QEMU failed, 128+N killed by signal N."};
  app.add_option("spec", o.spec_path, "The VM spec (JSON); see the README")->check(CLI::ExistingFile);
  app.add_option("--store", o.store, "The host store to share (overrides store.path)");
  app.add_option("--accel", o.accel, "auto, kvm or tcg (overrides the spec)")->check(CLI::IsMember({"auto", "kvm", "tcg"}));
  app.add_option("--timeout", o.timeout, "Seconds before the VM is stopped (overrides the spec; 0: none)");
  app.add_option("--fsd", o.fsd_binary, "The fsd binary to use");
  app.add_flag("--dry-run", o.dry_run, "Print the fsd and QEMU command lines and the guest's mount plan; start nothing");
  app.add_flag("--print-spec", o.print_spec, "Print the effective spec, defaults included");
  app.add_option("--relay-to", o.relay_to, "(internal) relay stdin/stdout to HOST:PORT, for guest->host port forwards")
      ->group("");
  app.add_flag("--keep", o.keep, "Keep the temporary directory (xchg, logs, initramfs)");
  // Everything after the first "--" is the guest command, taken verbatim.
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; i--) args.push_back(argv[i]);  // CLI11 wants them reversed
  for (int i = 1; i < argc; i++) {
    if (std::string(argv[i]) == "--") {
      o.command.assign(argv + i + 1, argv + argc);
      args.assign(std::make_reverse_iterator(argv + i), std::make_reverse_iterator(argv + 1));
      break;
    }
  }
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "vmlaunch: %s (see vmlaunch --help)\n", e.what());
    return kExitUsage;
  }
  if (!o.relay_to.empty()) return relay(o.relay_to);
  try {
    return run(o);
  } catch (const Exit& e) {
    std::fprintf(stderr, "vmlaunch: %s\n", e.message.c_str());
    return e.code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vmlaunch: %s\n", e.what());
    return 1;
  }
}
