// Where a socket server listens, and who connects: listener addresses as
// the command line gives them, binding them, and the identity of a peer on
// an accepted socket.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "common/fd.h"
#include "fsd/core/server.h"
#include "fsd/core/unix_socket.h"

namespace fsd {

struct ListenAddress {
  enum class Kind { kUnix, kTcp } kind = Kind::kUnix;
  std::string path;  // unix
  std::string host;  // tcp, numeric
  uint16_t port = 0;
  // Who a TCP peer acts as: nothing vouches for its identity, so it is
  // `as_uid`:`as_gid` (default nobody), or, on a trusted listener, whoever
  // it names. A unix-socket peer is who the kernel says it is (SO_PEERCRED):
  // a root peer may name the user it acts as, any other acts as itself.
  uid_t as_uid = 65534;
  gid_t as_gid = 65534;
  bool trusted = false;
  // A socket passed by socket activation (systemd's LISTEN_FDS), by its
  // name; once adopted, kind says whether it is a unix or a TCP socket.
  std::string inherited;
  std::string to_string() const;  // without the identity options
};

// "unix:PATH", "tcp:PORT" (loopback), "tcp:HOST:PORT", "tcp:[V6]:PORT", or
// "systemd:NAME" (a socket passed by socket activation under that name);
// a TCP or passed address may end in ",as=UID:GID" and/or ",trusted" (which
// a passed unix socket ignores: its peers are who the kernel says).
// Throws std::invalid_argument with a one-line message.
ListenAddress parse_listen(std::string_view spec);

// Binds and listens on `a` (a unix socket made with `access`); fills in a
// TCP port of 0 with the one the kernel chose. Throws std::runtime_error
// naming the address.
Fd bind_listener(ListenAddress& a, const SocketAccess& access);

// Who the peer on a socket accepted from `where` is (see ListenAddress).
Peer peer_of(int fd, const ListenAddress& where);
// Who the peer is, for its share of the connections: its uid on a unix
// socket, its address on TCP.
std::string peer_key(int fd);

}  // namespace fsd
