#include "launcher/host_links.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/fd.h"

namespace fsd::launcher {
namespace {

// Connects to HOST:PORT over TCP; -1 with errno set on failure.
Fd connect_tcp(const std::string& host_port) {
  auto colon = host_port.rfind(':');
  if (colon == std::string::npos) return errno = EINVAL, Fd();
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host_port.substr(0, colon).c_str(), host_port.substr(colon + 1).c_str(), &hints, &res) != 0)
    return errno = EHOSTUNREACH, Fd();
  Fd fd;
  for (addrinfo* a = res; a && !fd; a = a->ai_next) {
    fd.reset(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (fd && ::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) fd.reset();
  }
  ::freeaddrinfo(res);
  return fd;
}

}  // namespace

// What QEMU runs for each guest->host forwarded connection (guestfwd=...-cmd:).
int relay(const std::string& to) {
  Fd owned = connect_tcp(to);
  int sock = owned.get();
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

bool qmp_powerdown(const std::string& socket_path) {
  Fd owned(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int fd = owned.get();
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
  return ok;
}

}  // namespace fsd::launcher
