#include "fsd/core/activation.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace fsd {

PassedSockets PassedSockets::take() {
  PassedSockets out;
  char** names = nullptr;
  // unset_environment: fsd's children (none today) must not take them too.
  int n = sd_listen_fds_with_names(1, &names);
  if (n < 0) throw std::runtime_error(std::string("socket activation: ") + std::strerror(-n));
  for (int i = 0; i < n; i++) {
    int fd = SD_LISTEN_FDS_START + i;
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    // systemd names every socket ("unknown" when its unit names none); a
    // name given twice keeps its first socket and closes the others.
    std::string name = names && names[i] ? names[i] : "unknown";
    if (!out.fds_.emplace(name, Fd(fd)).second) ::close(fd);
  }
  if (names) {
    for (int i = 0; i < n; i++) std::free(names[i]);
    std::free(names);
  }
  return out;
}

Fd PassedSockets::claim(std::string_view name, std::string_view flag) {
  auto it = fds_.find(name);
  if (it == fds_.end() || !it->second) {
    std::string passed;
    for (const auto& [n, fd] : fds_) passed += (passed.empty() ? "" : ", ") + n;
    throw std::invalid_argument(std::string(flag) + " systemd:" + std::string(name) + ": no socket of that name was " +
                                "passed (" + (passed.empty() ? "none was" : "passed: " + passed) +
                                "; the socket unit's FileDescriptorName= names them)");
  }
  return std::move(it->second);
}

std::vector<std::string> PassedSockets::unclaimed() const {
  std::vector<std::string> out;
  for (const auto& [name, fd] : fds_)
    if (fd) out.push_back(name);
  return out;
}

ReadyNotifier ReadyNotifier::from_environment() {
  ReadyNotifier r;
  const char* where = std::getenv("NOTIFY_SOCKET");
  if (where == nullptr || *where == 0) return r;
  std::string path = where;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path || (path[0] != '/' && path[0] != '@'))
    throw std::runtime_error("NOTIFY_SOCKET '" + path + "': not a socket path");
  std::memcpy(sa.sun_path, path.data(), path.size());
  if (path[0] == '@') sa.sun_path[0] = 0;  // abstract
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0)
    throw std::runtime_error("NOTIFY_SOCKET '" + path + "': " + std::strerror(errno));
  ::unsetenv("NOTIFY_SOCKET");
  r.fd_ = std::move(fd);
  return r;
}

void ReadyNotifier::notify(std::string_view state) const {
  if (fd_) (void)::send(fd_.get(), state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

}  // namespace fsd
