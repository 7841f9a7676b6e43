// Unix sockets fsd listens on (9P listeners, vhost-user devices): who may
// connect is decided by the socket file's mode and group, set before anyone
// can connect, whatever the umask.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/fd.h"

namespace fsd {

struct SocketAccess {
  mode_t mode = 0600;                    // owner only, unless widened
  gid_t group = static_cast<gid_t>(-1);  // -1: the creator's group
};

// Parses --socket-mode's octal MODE (e.g. "0660"); throws
// std::invalid_argument naming the flag.
mode_t parse_socket_mode(const std::string& text);
// Parses --socket-group's GROUP, a group name or a number; throws
// std::invalid_argument naming the flag.
gid_t parse_socket_group(const std::string& text);

// Binds a unix socket at `path` and listens. A socket file left by a dead
// server is replaced; a live server there, a non-socket file, a missing
// directory or a path too long is an error. The socket is bound under a
// temporary name beside `path`, given `access`'s mode and group, and only
// then renamed to `path`, so it is never reachable with a wider mode.
// Throws std::runtime_error with a one-line reason (the caller names the
// socket).
Fd listen_unix(const std::string& path, const SocketAccess& access, int backlog);

// A socket file fsd made, removed when fsd is done with it, through an fd
// of its directory: that works from the sandbox too, where the path no
// longer leads there.
class SocketFile {
 public:
  SocketFile() = default;
  explicit SocketFile(const std::string& path);
  SocketFile(SocketFile&&) = default;
  SocketFile& operator=(SocketFile&&) = default;
  // Unlinks the name, if it is still a socket. Idempotent.
  void remove();

 private:
  Fd dir_;
  std::string name_;
};

}  // namespace fsd
