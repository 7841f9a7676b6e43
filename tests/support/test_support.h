// Helpers shared by the tests: temporary trees and fsd child processes.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fsd::testing {

namespace fs = std::filesystem;

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/fsd-test-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

inline void write_file(const fs::path& p, const std::string& content) {
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << content;
}

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// The fsd binary next to the test binaries (set by CMake), or the one
// FSD_TEST_BINARY names (to run a test against another build, e.g. to see
// a regression test fail on the code before its fix).
inline std::string fsd_binary() {
  if (const char* other = std::getenv("FSD_TEST_BINARY"); other && *other) return other;
#ifdef FSD_BINARY
  return FSD_BINARY;
#else
  return "fsd";
#endif
}

// How spawn_logged starts a process.
struct SpawnOptions {
  std::optional<rlim_t> nofile;                 // RLIMIT_NOFILE (soft and hard)
  int stdin_fd = -1;                            // else /dev/null
  std::optional<std::pair<uid_t, gid_t>> user;  // run as this user, no other groups (needs root)
  // Files bound over others (source, target) in a mount namespace of the
  // child's own, so it sees them and the host does not (needs root).
  std::vector<std::pair<fs::path, fs::path>> bind_over;
  // Sockets handed over as socket activation does: they become fds 3, 4,
  // ... of the child, with LISTEN_FDS and LISTEN_PID set for it.
  std::vector<int> pass_fds;
  bool listen_fds_env = true;  // with pass_fds; false: plain fds 3, 4, ... (as libvirt's --fd=3)
  std::vector<std::pair<std::string, std::string>> env;  // set in the child
};

// Starts `argv` (looked up in PATH) with stdout and stderr to `log`. The
// child gets SIGKILL if the test process dies, so a timed-out test leaves
// nothing behind.
inline pid_t spawn_logged(std::vector<std::string> argv, const fs::path& log, const SpawnOptions& o = {}) {
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    if (o.nofile) {
      rlimit rl{*o.nofile, *o.nofile};
      if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) ::_exit(126);
    }
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int in = o.stdin_fd >= 0 ? o.stdin_fd : ::open("/dev/null", O_RDONLY);
    if (out < 0 || in < 0) ::_exit(125);
    if (!o.bind_over.empty()) {
      if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(123);
      for (const auto& [from, to] : o.bind_over)
        if (::mount(from.c_str(), to.c_str(), nullptr, MS_BIND, nullptr) != 0) ::_exit(123);
    }
    if (o.user && (::setgroups(0, nullptr) != 0 || ::setresgid(o.user->second, o.user->second, o.user->second) != 0 ||
                   ::setresuid(o.user->first, o.user->first, o.user->first) != 0))
      ::_exit(124);
    // After any change of user, which clears the death signal.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    for (const auto& [k, v] : o.env) ::setenv(k.c_str(), v.c_str(), 1);
    if (!o.pass_fds.empty()) {
      std::vector<int> high;  // out of the way of 3, 4, ... first
      for (int fd : o.pass_fds) high.push_back(::fcntl(fd, F_DUPFD_CLOEXEC, 100));
      for (size_t i = 0; i < high.size(); i++)
        if (high[i] < 0 || ::dup2(high[i], 3 + static_cast<int>(i)) < 0) ::_exit(122);
      if (o.listen_fds_env) {
        ::setenv("LISTEN_FDS", std::to_string(high.size()).c_str(), 1);
        ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
      }
    }
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(out, 2);
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    ::execvp(cargv[0], cargv.data());
    ::_exit(127);
  }
  return pid;
}

// Runs fsd as a child. The child gets SIGKILL if the test process dies (so a
// timed-out test leaves nothing behind); the destructor sends SIGTERM, then
// SIGKILL after a grace period, and reaps it.
class FsdProcess {
 public:
  struct Options {
    std::vector<std::string> args;
    std::optional<rlim_t> nofile;  // RLIMIT_NOFILE (soft and hard) for the child
    std::optional<std::pair<uid_t, gid_t>> user;  // run as this user (the test must be root)
    std::vector<std::pair<fs::path, fs::path>> bind_over;  // see SpawnOptions
    std::vector<int> pass_fds;                              // likewise
    bool listen_fds_env = true;                             // likewise
    std::vector<std::pair<std::string, std::string>> env;   // likewise
  };

  explicit FsdProcess(Options o) : log_(dir_.path() / "fsd.log") {
    std::vector<std::string> argv{fsd_binary()};
    argv.insert(argv.end(), o.args.begin(), o.args.end());
    pid_ = spawn_logged(argv, log_, {.nofile = o.nofile, .user = o.user, .bind_over = o.bind_over,
                                     .pass_fds = o.pass_fds, .listen_fds_env = o.listen_fds_env, .env = o.env});
  }
  ~FsdProcess() { stop(); }
  FsdProcess(const FsdProcess&) = delete;

  pid_t pid() const { return pid_; }
  // The process that serves: in the namespace sandbox, fsd's one child (the
  // process started waits outside the pid namespace); else fsd itself.
  // Measure this one (CPU, memory, fds); signal pid().
  pid_t server_pid() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) + "/children");
    pid_t child = 0;
    return in >> child && child > 0 ? child : pid_;
  }
  std::string log() const { return read_file(log_); }

  // Waits until the log says fsd listens on `prefix...`, and returns the
  // rest of that address (e.g. the port of "tcp:127.0.0.1:"). Throws if fsd
  // exits or nothing shows within the timeout.
  std::string wait_listening(const std::string& prefix, std::chrono::seconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::regex re("listening on " + std::regex_replace(prefix, std::regex(R"([.[\]])"), R"(\$&)") + R"((\S+))");
    while (std::chrono::steady_clock::now() < deadline) {
      std::smatch m;
      std::string text = log();
      if (std::regex_search(text, m, re)) return m[1];
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("fsd exited before listening:\n" + text);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw std::runtime_error("fsd did not start listening:\n" + log());
  }

  // Waits until fsd's log contains `needle` (throws if fsd exits first).
  void wait_for_log(const std::string& needle, std::chrono::seconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      std::string text = log();
      if (text.find(needle) != std::string::npos) return;
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("fsd exited early:\n" + text);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw std::runtime_error("fsd never logged '" + needle + "':\n" + log());
  }

  // Waits for fsd to exit by itself; its exit status, or nothing if it is
  // still running at the timeout.
  std::optional<int> wait_exit(std::chrono::seconds timeout = std::chrono::seconds(10)) {
    if (pid_ <= 0) return exit_status_;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return exit_status_;
  }

  // Sends SIGTERM and waits; returns the exit status (or -1 if killed).
  int stop(std::chrono::seconds grace = std::chrono::seconds(10)) {
    if (pid_ <= 0) return exit_status_;
    ::kill(pid_, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + grace;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return exit_status_;
  }

  // Number of open fds of the server (from /proc).
  size_t open_fds() const {
    size_t n = 0;
    for ([[maybe_unused]] auto& e : fs::directory_iterator("/proc/" + std::to_string(server_pid()) + "/fd")) n++;
    return n;
  }

 private:
  TempDir dir_;
  fs::path log_;
  pid_t pid_ = -1;
  int exit_status_ = -1;
};

// fsd started with `args` exits by itself with status 2 (a refused command
// line), and its message contains `needle` (the flag it names). Started as
// `user` if given.
inline void expect_fsd_refuses(const std::vector<std::string>& args, const std::string& needle,
                               std::optional<std::pair<uid_t, gid_t>> user = std::nullopt) {
  SCOPED_TRACE(needle);
  FsdProcess fsd({.args = args, .user = user});
  auto status = fsd.wait_exit();
  ASSERT_TRUE(status.has_value()) << "fsd kept running";
  EXPECT_EQ(*status, 2) << fsd.log();
  EXPECT_NE(fsd.log().find(needle), std::string::npos) << fsd.log();
}

// Runs a command through the shell; returns its stdout and sets *status.
inline std::string run_command(const std::string& cmd, int* status) {
  std::string out;
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) {
    *status = -1;
    return out;
  }
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

// Runs `body` in a forked child that has become uid:gid with no
// supplementary groups but `groups` (needs root), and returns what `body`
// returned (0-255), or -1 if the child could not switch or died. The child
// dies with the test process.
template <class F>
int run_as(uid_t uid, gid_t gid, F body, const std::vector<gid_t>& groups = {}) {
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setresgid(gid, gid, gid) != 0 ||
        ::setresuid(uid, uid, uid) != 0)
      ::_exit(255);
    ::_exit(body() & 0xff);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) == 255) return -1;
  return WEXITSTATUS(status);
}

}  // namespace fsd::testing

namespace fsd::testing {

// The guest kernel directory that scripts/setup unpacked (vmlinuz and
// lib/modules/VERSION), or "" if there is none.
// The cache's guest kernel (scripts/fetch-guest-kernel); `kind` "kernel-arm64"
// for the arm64 one.
inline std::string guest_kernel_dir(const std::string& kind = "kernel") {
  if (const char* d = std::getenv("FSD_GUEST_KERNEL_DIR"); d && *d && kind == "kernel") return d;
  std::string cache;
  if (const char* c = std::getenv("FSD_CACHE"); c && *c) cache = c;
  else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) cache = std::string(x) + "/fsd";
  else if (const char* h = std::getenv("HOME"); h && *h) cache = std::string(h) + "/.cache/fsd";
  std::error_code ec;
  for (auto& e : fs::directory_iterator(cache + "/" + kind, ec))
    if (fs::exists(e.path() / "vmlinuz")) return e.path().string();
  return "";
}

// Runs a program as a child whose stdout and stderr go to a file, killed
// with SIGKILL if the test process dies; the destructor kills and reaps it.
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> argv, const fs::path& log, int stdin_fd = -1)
      : pid_(spawn_logged(argv, log, {.stdin_fd = stdin_fd})) {}
  ~ChildProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  pid_t pid() const { return pid_; }
  // The process that serves: in the namespace sandbox, fsd's one child (the
  // process started waits outside the pid namespace); else fsd itself.
  // Measure this one (CPU, memory, fds); signal pid().
  pid_t server_pid() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) + "/children");
    pid_t child = 0;
    return in >> child && child > 0 ? child : pid_;
  }
  // Waits up to `timeout`; returns the exit status, or nullopt on timeout
  // (the child is then killed).
  std::optional<int> wait(std::chrono::seconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
        return std::nullopt;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

}  // namespace fsd::testing
