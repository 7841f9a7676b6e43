// Child processes for vmlaunch: each is owned by a Child, which kills and
// reaps it when dropped, and dies with vmlaunch itself (PDEATHSIG), so no
// exit path leaves fsd or QEMU behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/fd.h"

namespace fsd::launcher {

class Child {
 public:
  Child() = default;
  Child(Child&& o) noexcept;
  Child& operator=(Child&& o) noexcept;
  Child(const Child&) = delete;
  ~Child();  // SIGKILL and reap, unless already reaped

  // Runs argv[0] (found on PATH) with stdin/stdout/stderr from the given fds
  // (-1: inherited) and `keep` left open across exec. Throws
  // std::runtime_error if it cannot fork; a program that cannot be run
  // exits 127.
  static Child spawn(const std::vector<std::string>& argv, int in, int out, int err, int keep = -1);

  pid_t pid() const { return pid_; }
  // Readable once the child has exited (for poll).
  int pidfd() const { return pidfd_.get(); }
  bool reaped() const { return status_ >= 0; }
  // The exit status, or 128+N for signal N; -1 until reaped.
  int status() const { return status_; }
  // Collects the exit status if the child has exited (or waits, with block).
  void reap(bool block = false);
  // SIGTERM, up to `grace` to exit, then SIGKILL.
  void stop(std::chrono::milliseconds grace);

 private:
  void kill_and_reap();

  pid_t pid_ = -1;
  Fd pidfd_;
  int status_ = -1;
};

// Runs argv to completion, stdin from /dev/null and its output into `log`;
// returns its exit status (127: it could not be run).
int run_logged(const std::vector<std::string>& argv, const std::string& log);

// A system tool (depmod, mkfs.ext4, blkid): from /usr/sbin or /sbin, which
// are not on an ordinary user's PATH on Debian, else the name, for PATH.
std::string system_tool(const std::string& name);

// A file opened for a child's output (created or truncated), close-on-exec.
Fd open_log(const std::string& path);
// The last `max` bytes of a (log) file.
std::string read_tail(const std::string& path, size_t max = 4096);

}  // namespace fsd::launcher
