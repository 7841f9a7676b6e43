// fsd-guest-init: PID 1 of vmlaunch's guests (a static binary).
//
// Reads its plan from /init.json in the initramfs, then:
//   1. mounts /proc, /sys, /dev (devtmpfs), /run and /tmp;
//   2. loads the kernel modules listed, in order (an optional one may fail);
//   3. writes the files listed and runs the set-up steps (the network);
//   4. performs the mounts listed (making their targets), in order (a 9P
//      mount over vsock on a socket it connects first), then
//      makes the symlinks and the missing files listed. In boot mode it then
//      moves every mount into the new root and runs the system's init there
//      (and stops here, after step 4b);
//   4b. loads the registration given into the guest's Nix database with
//      the system's nix-store (a failure stops the boot);
//   5. runs the command with the environment given, on the console, and
//      waits for it while reaping orphans. The ACPI power button (QMP
//      system_powerdown) stops the command: SIGTERM, then SIGKILL;
//   6. reports the exit status as a console line "fsd-guest-init: exit N"
//      and, if asked, on a file or serial port (vmlaunch: ttyS1); syncs; powers off.
// Without a command it runs the shell interactively. Any failure before the
// command is reported on the console, and the status is 255.
#include <fcntl.h>
#include <linux/reboot.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <linux/vm_sockets.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <dirent.h>
#include <linux/input.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/signals.h"
#include "launcher/guest/guest_plan.h"

using fsd::Fd;
using fsd::launcher::GuestMount;
using fsd::launcher::GuestPlan;

namespace {

[[noreturn]] void power_off(int status) {
  std::printf("fsd-guest-init: exit %d\n", status);
  std::fflush(stdout);
  ::sync();
  ::reboot(RB_POWER_OFF);
  for (;;) ::pause();
}

void say(const std::string& what) {
  std::fprintf(stderr, "fsd-guest-init: %s\n", what.c_str());
  std::fflush(stderr);
}

// Console "stage1": each step of the init told on the console, as a
// NixOS stage 1 tells its own.
bool g_narrate = false;
void step(const std::string& what) {
  if (g_narrate) std::printf("fsd-guest-init: %s\n", what.c_str());
}

bool mkdirs(const std::string& path) {
  for (size_t pos = 1; pos <= path.size(); pos++) {
    if (pos == path.size() || path[pos] == '/') {
      std::string part = path.substr(0, pos);
      if (::mkdir(part.c_str(), 0755) < 0 && errno != EEXIST) return false;
    }
  }
  return true;
}

unsigned long mount_flags(const std::vector<std::string>& flags) {
  unsigned long f = 0;
  for (const auto& v : flags) {
    if (v == "ro") f |= MS_RDONLY;
    else if (v == "nosuid") f |= MS_NOSUID;
    else if (v == "nodev") f |= MS_NODEV;
    else if (v == "noexec") f |= MS_NOEXEC;
    else if (v == "relatime") f |= MS_RELATIME;
  }
  return f;
}

// The event devices of the ACPI power button(s), opened non-blocking.
std::vector<Fd> open_power_buttons() {
  std::vector<Fd> fds;
  DIR* d = ::opendir("/sys/class/input");
  if (!d) return fds;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (!name.starts_with("event")) continue;
    std::ifstream in("/sys/class/input/" + name + "/device/name");
    std::string label;
    std::getline(in, label);
    if (label != "Power Button" && label != "gpio-keys") continue;  // ACPI's (x86), or aarch64 virt's GPIO key
    Fd fd(::open(("/dev/input/" + name).c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    if (fd) fds.push_back(std::move(fd));
  }
  ::closedir(d);
  return fds;
}

bool power_pressed(int fd) {
  input_event ev[16];
  bool pressed = false;
  for (ssize_t n; (n = ::read(fd, ev, sizeof ev)) > 0;)
    for (size_t i = 0; i < static_cast<size_t>(n) / sizeof ev[0]; i++)
      pressed |= ev[i].type == EV_KEY && ev[i].code == KEY_POWER && ev[i].value == 1;
  return pressed;
}

// Steps 1-4; each failure is said on the console and powers off with 255.
void mount_basics() {
  ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  ::mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  ::mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  ::mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  ::mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
}

GuestPlan read_plan() {
  try {
    std::ifstream in("/init.json");
    return nlohmann::json::parse(in).get<GuestPlan>();
  } catch (const std::exception& e) {
    say(std::string("cannot read /init.json: ") + e.what());
    power_off(255);
  }
}

// A module that fails stops the boot, unless it is optional (a soft
// dependency, such as a CPU-specific crc32c the guest's CPU cannot run).
void load_modules(const GuestPlan& plan) {
  for (const auto& path : plan.modules) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd && (::syscall(SYS_finit_module, fd.get(), "", 0) == 0 || errno == EEXIST)) {
      step("loaded module " + path.substr(path.rfind('/') + 1));
      continue;
    }
    bool optional = std::find(plan.optional_modules.begin(), plan.optional_modules.end(), path) != plan.optional_modules.end();
    say(std::string(optional ? "(optional) " : "") + "cannot load module " + path + ": " + std::strerror(errno));
    if (!optional) power_off(255);
  }
}

// The status as a line on a file or a serial port, drained before power-off.
void report_status(const std::string& where, int status) {
  Fd fd(::open(where.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOCTTY | O_CLOEXEC, 0644));
  if (!fd) return say("cannot report the status on " + where + ": " + std::strerror(errno));
  termios t{};
  if (::tcgetattr(fd.get(), &t) == 0) {  // a serial port: bytes as they are
    ::cfmakeraw(&t);
    ::tcsetattr(fd.get(), TCSANOW, &t);
  }
  std::string line = std::to_string(status) + "\n";
  (void)!::write(fd.get(), line.data(), line.size());
  ::tcdrain(fd.get());
}

// Files to write (e.g. /etc/resolv.conf), then set-up commands (e.g.
// bringing up the network), each of which must succeed.
void set_up(const GuestPlan& plan) {
  for (const auto& [path, content] : plan.files) {
    mkdirs(path.substr(0, path.rfind('/')));
    std::ofstream(path) << content;
  }
  for (const auto& step : plan.setup) {
    pid_t pid = ::fork();
    if (pid == 0) {
      std::vector<char*> ca;
      for (const auto& x : step) ca.push_back(const_cast<char*>(x.c_str()));
      ca.push_back(nullptr);
      ::execv(ca[0], ca.data());
      ::_exit(127);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      say("set-up step failed: " + nlohmann::json(step).dump());
      power_off(255);
    }
  }
}

// A stream to the host's vsock `port`, from the highest free reserved port
// (below 1024: only root can bind one, so fsd serves it as the guest's root).
// Non-blocking, as 9p's trans=fd wants; -1 with errno on failure.
int vsock_connect(unsigned port) {
  int fd = ::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int err = EADDRINUSE;
  for (unsigned local = 1023; local >= 512 && err == EADDRINUSE; local--) {
    sockaddr_vm me{};
    me.svm_family = AF_VSOCK;
    me.svm_cid = VMADDR_CID_ANY;
    me.svm_port = local;
    err = ::bind(fd, reinterpret_cast<sockaddr*>(&me), sizeof me) == 0 ? 0 : errno;
  }
  sockaddr_vm host{};
  host.svm_family = AF_VSOCK;
  host.svm_cid = VMADDR_CID_HOST;
  host.svm_port = port;
  if (err == 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&host), sizeof host) != 0) err = errno;
  if (err == 0 && ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) err = errno;
  if (err == 0) return fd;
  ::close(fd);
  errno = err;
  return -1;
}

// A mount's source "wwn:ID": the disk whose World Wide Name the kernel
// reports as ID (SCSI and ATA disks are found asynchronously, in no fixed
// order), once it is there (up to 30 s); any other source as it is.
std::string disk_source(const std::string& source) {
  if (!source.starts_with("wwn:")) return source;
  std::string want = source.substr(4);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  do {
    if (DIR* d = ::opendir("/sys/block")) {
      std::string found;
      while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::ifstream in(std::string("/sys/block/") + e->d_name + "/device/wwid");
        std::string id;
        if (std::getline(in, id) && id == want) found = std::string("/dev/") + e->d_name;
      }
      ::closedir(d);
      if (!found.empty()) return found;
    }
    ::usleep(20000);
  } while (std::chrono::steady_clock::now() < deadline);
  say("no disk with the WWN " + want + " appeared in 30 s");
  power_off(255);
}

void do_mounts(const std::vector<GuestMount>& mounts) {
  for (const auto& m : mounts) {
    const std::string& dir = m.mkdir.empty() ? m.target : m.mkdir;
    if (!mkdirs(dir)) {
      say("cannot create " + dir + ": " + std::strerror(errno));
      power_off(255);
    }
    if (!m.mkdir.empty()) continue;  // a directory to make between mounts (e.g. overlay upper/work)
    std::string options = m.options;
    int sock = -1;
    if (m.vsock_port) {
      sock = vsock_connect(m.vsock_port);
      if (sock < 0) {
        say("cannot connect to the host's vsock port " + std::to_string(m.vsock_port) + " for " + m.target + ": " +
            std::strerror(errno));
        power_off(255);
      }
      std::string fd = std::to_string(sock);
      options = "trans=fd,rfdno=" + fd + ",wfdno=" + fd + (options.empty() ? "" : "," + options);
    }
    std::string source = disk_source(m.source);
    int r = ::mount(source.c_str(), m.target.c_str(), m.fstype.c_str(), mount_flags(m.flags),
                    options.empty() ? nullptr : options.c_str());
    int err = errno;
    if (sock >= 0) ::close(sock);  // the mount holds its own reference
    if (r != 0) {
      say("cannot mount " + m.fstype + " " + source + " on " + m.target + " (" + options + "): " + std::strerror(err));
      power_off(255);
    }
    step("mounted " + m.fstype + " " + source + " on " + m.target);
  }
}

// After the mounts: symlinks (replacing a file or an empty directory), and
// files the mounted system does not have.
void finish_root(const GuestPlan& plan) {
  for (const auto& [path, target] : plan.links) {
    mkdirs(path.substr(0, path.rfind('/')));
    if (::unlink(path.c_str()) != 0 && errno == EISDIR) ::rmdir(path.c_str());
    if (::symlink(target.c_str(), path.c_str()) != 0) say("cannot link " + path + " to " + target + ": " + std::strerror(errno));
  }
  for (const auto& [path, content] : plan.late_files) {
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) continue;
    mkdirs(path.substr(0, path.rfind('/')));
    std::ofstream(path) << content;
  }
}

bool is_under(const std::string& path, const std::string& dir) {
  return path == dir || (path.size() > dir.size() && path.starts_with(dir) && path[dir.size()] == '/');
}

// Every mount of the plan (each subtree once), then /dev, /proc, /sys and
// /run move into the new root, which becomes /. False on failure.
bool enter_root(const GuestPlan& plan) {
  const std::string& root = plan.switch_root;
  std::vector<std::string> moved;
  std::vector<std::string> targets;
  for (const auto& m : plan.mounts)
    if (m.mkdir.empty() && !is_under(m.target, root)) targets.push_back(m.target);
  for (const char* fs : {"/dev", "/proc", "/sys", "/run"}) targets.emplace_back(fs);
  for (const auto& t : targets) {
    if (std::any_of(moved.begin(), moved.end(), [&](const std::string& m) { return is_under(t, m); })) continue;
    if (!mkdirs(root + t) || ::mount(t.c_str(), (root + t).c_str(), nullptr, MS_MOVE, nullptr) != 0) {
      say("cannot move " + t + " into " + root + ": " + std::strerror(errno));
      return false;
    }
    moved.push_back(t);
  }
  step("switching to the root " + root);
  if (::chdir(root.c_str()) != 0 || ::mount(".", "/", nullptr, MS_MOVE, nullptr) != 0 || ::chroot(".") != 0 ||
      ::chdir("/") != 0) {
    say("cannot switch to " + root + ": " + std::strerror(errno));
    return false;
  }
  return true;
}

// Step 4b: `nix-store --load-db`, fed the registration read from the
// initramfs before the root moved. True on success or with none to load.
bool register_store(const GuestPlan& plan, const std::string& registration) {
  if (plan.registration.empty()) return true;
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return say(std::string("pipe: ") + std::strerror(errno)), false;
  Fd rd(p[0]), wr(p[1]);
  std::string path = "PATH=" + plan.nix_store.substr(0, plan.nix_store.rfind('/')), home = "HOME=/root";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(rd.get(), 0);
    std::string tool = plan.nix_store, verb = "--load-db";
    char* argv[] = {tool.data(), verb.data(), nullptr};
    char* env[] = {path.data(), home.data(), nullptr};
    ::execve(tool.c_str(), argv, env);
    std::fprintf(stderr, "fsd-guest-init: cannot run %s: %s\n", tool.c_str(), std::strerror(errno));
    ::_exit(127);
  }
  if (pid < 0) return say(std::string("fork: ") + std::strerror(errno)), false;
  rd.reset();
  for (size_t done = 0; done < registration.size();) {  // PID 1 takes no SIGPIPE: a reader gone is EPIPE
    ssize_t n = ::write(wr.get(), registration.data() + done, registration.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += n;
  }
  wr.reset();
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    say(plan.nix_store + " --load-db failed (status " + std::to_string(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st)) +
        "): the store's registration is not loaded");
    return false;
  }
  std::printf("fsd-guest-init: loaded the store's registration into Nix's database\n");
  return true;
}

// Boot mode: the system's init, as PID 1 in the new root. Only returns on
// failure.
void run_init(const GuestPlan& plan) {
  std::vector<std::string> env;
  for (const auto& [k, v] : plan.env) env.push_back(k + "=" + v);
  std::vector<char*> cenv;
  for (auto& e : env) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  std::string init = plan.init;
  char* argv[] = {init.data(), nullptr};
  std::printf("fsd-guest-init: starting %s\n", init.c_str());
  std::fflush(stdout);
  ::execve(init.c_str(), argv, cenv.data());
  say("cannot run " + init + ": " + std::strerror(errno));
}

// Step 5: the command (or the shell) in its own session on the console.
pid_t start_command(const GuestPlan& plan, const sigset_t& blocked) {
  std::vector<std::string> argv = plan.command.empty() ? std::vector<std::string>{plan.shell} : plan.command;
  std::vector<std::string> env;
  for (const auto& [k, v] : plan.env) env.push_back(k + "=" + v);
  pid_t child = ::fork();
  if (child != 0) return child;
  ::sigprocmask(SIG_UNBLOCK, &blocked, nullptr);
  if (plan.command.empty()) {
    ::setsid();
    ::ioctl(0, TIOCSCTTY, 1);  // a controlling terminal, for job control in the shell
  } else {
    // A command gets its own process group (the power button signals it)
    // but not the console as its controlling terminal: when a session leader
    // exits, the kernel hangs up its serial terminal and drops what is still
    // queued for output, which lost a command's last lines under load.
    ::setpgid(0, 0);
  }
  if (::chdir(plan.workdir.c_str()) != 0) (void)!::chdir("/");
  std::vector<char*> cargv, cenv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : env) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  // A bare name is looked up in the command's PATH, as a shell would.
  if (auto path = plan.env.find("PATH"); path != plan.env.end()) ::setenv("PATH", path->second.c_str(), 1);
  ::execvpe(cargv[0], cargv.data(), cenv.data());
  std::fprintf(stderr, "fsd-guest-init: cannot run %s: %s\n", cargv[0], std::strerror(errno));
  ::_exit(127);
}

// Waits for the command while reaping every orphan (PID 1's duty); the
// power button stops it: SIGTERM now, SIGHUP at 2 s (an interactive shell
// ignores SIGTERM), SIGKILL at 5 s. Returns the command's status.
int wait_for(pid_t child, int sfd) {
  std::vector<Fd> buttons = open_power_buttons();
  int status = 255;
  using Clock = std::chrono::steady_clock;
  constexpr auto kNever = Clock::time_point::max();
  auto hup_at = kNever, kill_at = kNever;
  bool done = false, stopping = false;
  while (!done) {
    std::vector<pollfd> p{{sfd, POLLIN, 0}};
    for (const Fd& b : buttons) p.push_back({b.get(), POLLIN, 0});
    int n = ::poll(p.data(), p.size(), stopping ? 100 : -1);
    for (size_t i = 1; n > 0 && i < p.size(); i++) {
      if ((p[i].revents & POLLIN) && power_pressed(p[i].fd) && !stopping) {
        say("power button: stopping the command");
        ::kill(-child, SIGTERM);
        stopping = true;
        hup_at = Clock::now() + std::chrono::seconds(2);
        kill_at = Clock::now() + std::chrono::seconds(5);
      }
    }
    auto now = Clock::now();
    if (now >= hup_at) {
      ::kill(-child, SIGHUP);
      hup_at = kNever;
    }
    if (now >= kill_at) {
      ::kill(-child, SIGKILL);
      ::kill(child, SIGKILL);
      kill_at = kNever;
    }
    signalfd_siginfo si;
    while (::read(sfd, &si, sizeof si) > 0) {}
    for (int st; !done;) {
      pid_t pid = ::waitpid(-1, &st, WNOHANG);
      if (pid <= 0) {
        if (pid < 0 && errno == ECHILD) done = true;
        break;
      }
      if (pid == child) {
        status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        done = true;
      }
    }
  }
  return status;
}

}  // namespace

int run();

int main() {
  // PID 1 must never die: a crash here is a kernel panic. Report and power off.
  try {
    return run();
  } catch (const std::exception& e) {
    say(std::string("failed: ") + e.what());
  } catch (...) {
    say("failed");
  }
  power_off(255);
}

int run() {
  // The kernel gives PID 1 the console on fds 0-2 (from /dev/console).
  ::setvbuf(stdout, nullptr, _IOLBF, 0);
  mount_basics();
  std::printf("fsd-guest-init: started\n");  // vmlaunch shows the console from here in quiet mode
  GuestPlan plan = read_plan();
  g_narrate = plan.narrate;
  std::string registration;  // read now: the initramfs is out of reach once the root moves
  if (!plan.registration.empty()) {
    std::ifstream in(plan.registration, std::ios::binary);
    registration.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (!in) say("cannot read " + plan.registration), power_off(255);
  }
  load_modules(plan);
  set_up(plan);
  do_mounts(plan.mounts);
  if (!plan.switch_root.empty()) {
    if (!enter_root(plan)) power_off(255);
    if (!plan.init.empty()) {
      if (register_store(plan, registration)) run_init(plan);
      power_off(255);
    }
  }
  finish_root(plan);
  if (!register_store(plan, registration)) {
    if (!plan.status_file.empty()) report_status(plan.status_file, 255);
    power_off(255);
  }
  sigset_t chld = fsd::block_signals({SIGCHLD});
  Fd sfd(::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK));
  int status = wait_for(start_command(plan, chld), sfd.get());
  if (!plan.status_file.empty()) report_status(plan.status_file, status);
  power_off(status);
}
