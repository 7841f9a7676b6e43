#include "fsd/transport/listen_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "fsd/core/credentials.h"

namespace fsd {

std::string ListenAddress::to_string() const {
  if (!inherited.empty()) return "systemd:" + inherited + (kind == Kind::kUnix ? " (unix)" : " (tcp)");
  if (kind == Kind::kUnix) return "unix:" + path;
  bool v6 = host.find(':') != std::string::npos;
  return "tcp:" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

ListenAddress parse_listen(std::string_view spec) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("--listen '" + std::string(spec) + "': " + why);
  };
  ListenAddress a;
  if (spec.starts_with("unix:")) {
    a.kind = ListenAddress::Kind::kUnix;
    a.path = std::string(spec.substr(5));
    if (a.path.empty()) fail("empty socket path");
    if (a.path.size() >= sizeof(sockaddr_un::sun_path)) fail("socket path too long");
    return a;
  }
  bool passed = spec.starts_with("systemd:");
  if (!passed && !spec.starts_with("tcp:")) fail("expected unix:PATH, tcp:[HOST:]PORT or systemd:NAME");
  a.kind = ListenAddress::Kind::kTcp;
  std::string_view rest = spec.substr(passed ? 8 : 4);
  if (auto comma = rest.find(','); comma != std::string_view::npos) {
    std::string_view opts = rest.substr(comma + 1);
    rest = rest.substr(0, comma);
    bool as_given = false;
    while (!opts.empty()) {
      auto next = opts.find(',');
      std::string_view opt = opts.substr(0, next);
      opts = next == std::string_view::npos ? std::string_view{} : opts.substr(next + 1);
      if (opt == "trusted") {
        a.trusted = true;
      } else if (opt.starts_with("as=")) {
        std::string ids(opt.substr(3));
        auto colon = ids.find(':');
        auto number = [](const std::string& t) {
          return !t.empty() && t.size() <= 10 && t.find_first_not_of("0123456789") == std::string::npos &&
                 std::stoull(t) < 0xffffffffull;
        };
        if (colon == std::string::npos || !number(ids.substr(0, colon)) || !number(ids.substr(colon + 1)))
          fail("as= takes UID:GID, two numbers (e.g. as=1000:100)");
        a.as_uid = static_cast<uid_t>(std::stoul(ids.substr(0, colon)));
        a.as_gid = static_cast<gid_t>(std::stoul(ids.substr(colon + 1)));
        as_given = true;
      } else {
        fail("unknown option '" + std::string(opt) + "' (a TCP or passed listener takes as=UID:GID and trusted)");
      }
    }
    if (as_given && a.trusted) fail("as= and trusted contradict each other: a trusted peer names its own user");
  }
  if (passed) {
    if (rest.empty() || rest.size() > 255 || rest.find_first_of(":/ ") != std::string_view::npos)
      fail("expected systemd:NAME, the FileDescriptorName of a passed socket");
    a.inherited = std::string(rest);
    return a;
  }
  std::string_view port;
  if (rest.starts_with("[")) {
    auto close = rest.find("]:");
    if (close == std::string_view::npos) fail("expected [ADDRESS]:PORT");
    a.host = std::string(rest.substr(1, close - 1));
    port = rest.substr(close + 2);
  } else if (auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    a.host = std::string(rest.substr(0, colon));
    port = rest.substr(colon + 1);
  } else {
    a.host = "127.0.0.1";
    port = rest;
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos)
    fail("bad port '" + std::string(port) + "'");
  unsigned long p = std::stoul(std::string(port));
  if (p > 65535) fail("port out of range");
  a.port = static_cast<uint16_t>(p);
  in6_addr tmp6;
  in_addr tmp4;
  if (inet_pton(AF_INET, a.host.c_str(), &tmp4) != 1 && inet_pton(AF_INET6, a.host.c_str(), &tmp6) != 1)
    fail("'" + a.host + "' is not a numeric IPv4 or IPv6 address");
  return a;
}

namespace {

Fd bind_unix(const std::string& path, const SocketAccess& access) {
  try {
    return listen_unix(path, access, 128);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("unix:" + path + ": " + e.what());
  }
}

Fd bind_tcp(ListenAddress& a) {
  sockaddr_storage ss{};
  socklen_t len;
  int family;
  if (a.host.find(':') != std::string::npos) {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = family = AF_INET6;
    s6->sin6_port = htons(a.port);
    inet_pton(AF_INET6, a.host.c_str(), &s6->sin6_addr);
    len = sizeof *s6;
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = family = AF_INET;
    s4->sin_port = htons(a.port);
    inet_pton(AF_INET, a.host.c_str(), &s4->sin_addr);
    len = sizeof *s4;
  }
  Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0)
    throw std::runtime_error(a.to_string() + ": " + std::strerror(errno));
  if (::listen(fd.get(), 128) < 0) throw std::runtime_error("listen: " + std::string(std::strerror(errno)));
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0)
    a.port = ntohs(family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                      : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return fd;
}

}  // namespace

Fd bind_listener(ListenAddress& a, const SocketAccess& access) {
  return a.kind == ListenAddress::Kind::kUnix ? bind_unix(a.path, access) : bind_tcp(a);
}

Peer peer_of(int fd, const ListenAddress& where) {
  if (!Credentials::switching()) return Peer{};  // fsd cannot act as anyone else
  if (where.kind == ListenAddress::Kind::kTcp)
    return Peer{.who = Credentials::get(where.as_uid, where.as_gid), .trusted = where.trusted};
  ucred uc{};
  socklen_t len = sizeof uc;
  // Without a verifiable identity, nobody.
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) return Peer{.who = Credentials::get(65534, 65534)};
  std::vector<gid_t> groups(Credentials::kMaxGroups);
  len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) len = 0;  // ERANGE: too many; none
  groups.resize(len / sizeof(gid_t));
  return Peer{.who = Credentials::get(uc.uid, uc.gid, groups), .trusted = uc.uid == 0};
}

std::string peer_key(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 && ss.ss_family != AF_UNIX) {
    char host[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_INET) ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, host, sizeof host);
    if (ss.ss_family == AF_INET6) ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, host, sizeof host);
    return std::string("address ") + host;
  }
  ucred uc{};
  len = sizeof uc;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) return "uid ?";
  return "uid " + std::to_string(uc.uid);
}

}  // namespace fsd
