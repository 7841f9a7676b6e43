// Socket activation and readiness, as systemd (or any supervisor speaking
// its protocol) offers them:
//   - the listening sockets a supervisor passes (LISTEN_FDS, LISTEN_PID,
//     LISTEN_FDNAMES), which the command line claims by name
//     (--listen systemd:NAME, --virtiofs-socket TAG=systemd:NAME);
//   - READY=1 on $NOTIFY_SOCKET once every socket is served. The socket is
//     connected at start, because the sandbox has no path to it and its
//     seccomp filter allows no new socket.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"

namespace fsd {

class PassedSockets {
 public:
  // Takes the sockets passed to this process, if any, and clears the
  // variables so children do not see them. Throws std::runtime_error if
  // the variables are inconsistent.
  static PassedSockets take();

  bool empty() const { return fds_.empty(); }
  // The socket passed as `name`; throws std::invalid_argument naming `flag`
  // and the names that were passed if there is none (or it was claimed).
  Fd claim(std::string_view name, std::string_view flag);
  // Names of the sockets no flag claimed.
  std::vector<std::string> unclaimed() const;

 private:
  std::map<std::string, Fd, std::less<>> fds_;
};

class ReadyNotifier {
 public:
  // Connects to $NOTIFY_SOCKET if it is set (a path, or "@name" for an
  // abstract socket); else notify() does nothing. Throws
  // std::runtime_error if it is set but cannot be reached.
  static ReadyNotifier from_environment();
  // Sends `state` (e.g. "READY=1"); failures are ignored, as sd_notify's are.
  void notify(std::string_view state) const;
  bool active() const { return static_cast<bool>(fd_); }

 private:
  Fd fd_;
};

}  // namespace fsd
