#include "launcher/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <utility>

namespace fsd::launcher {
namespace {
int status_of(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }
}  // namespace

Child::Child(Child&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)), pidfd_(std::move(o.pidfd_)), status_(std::exchange(o.status_, -1)) {}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    kill_and_reap();
    pid_ = std::exchange(o.pid_, -1);
    pidfd_ = std::move(o.pidfd_);
    status_ = std::exchange(o.status_, -1);
  }
  return *this;
}

Child::~Child() { kill_and_reap(); }

void Child::kill_and_reap() {
  if (pid_ > 0 && !reaped()) {
    ::kill(pid_, SIGKILL);
    reap(true);
  }
}

Child Child::spawn(const std::vector<std::string>& argv, int in, int out, int err, int keep) {
  pid_t parent = ::getpid();
  Child c;
  c.pid_ = ::fork();
  if (c.pid_ < 0) throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
  if (c.pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (in >= 0) ::dup2(in, 0);
    if (out >= 0) ::dup2(out, 1);
    if (err >= 0) ::dup2(err, 2);
    if (keep >= 0) ::fcntl(keep, F_SETFD, 0);
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    std::fprintf(stderr, "cannot run %s: %s\n", a[0], std::strerror(errno));
    ::_exit(127);
  }
  c.pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, c.pid_, 0)));
  return c;
}

void Child::reap(bool block) {
  if (pid_ <= 0 || reaped()) return;
  int st;
  if (::waitpid(pid_, &st, block ? 0 : WNOHANG) == pid_) status_ = status_of(st);
}

void Child::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0 || reaped()) return;
  ::kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (!reaped() && std::chrono::steady_clock::now() < deadline) {
    pollfd p{pidfd_.get(), POLLIN, 0};
    ::poll(&p, 1, 50);
    reap();
  }
  kill_and_reap();
}

int run_logged(const std::vector<std::string>& argv, const std::string& log) {
  Fd out = open_log(log);
  Fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  Child c = Child::spawn(argv, devnull.get(), out.get(), out.get());
  c.reap(true);
  return c.status();
}

std::string system_tool(const std::string& name) {
  for (const char* dir : {"/usr/sbin/", "/sbin/"})
    if (::access((dir + name).c_str(), X_OK) == 0) return dir + name;
  return name;
}

Fd open_log(const std::string& path) {
  return Fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
}

std::string read_tail(const std::string& path, size_t max) {
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  return s.size() > max ? s.substr(s.size() - max) : s;
}

}  // namespace fsd::launcher
