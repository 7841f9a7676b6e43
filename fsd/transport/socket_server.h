// SocketServer: serves a framed stream protocol (9P2000.L) on unix-socket and
// TCP listeners.
//
// N worker threads, each with its own Ring, all accept on every listener;
// a connection stays on the worker that accepted it. Bytes in, frames out:
// this layer knows only the length prefix (fsd/core/server.h), and hands
// each complete frame to the connection's StreamSession.
#pragma once

#include <atomic>
#include <memory>
#include <chrono>
#include <mutex>
#include <unordered_map>
#include <string>
#include <vector>

#include "common/fd.h"
#include "fsd/core/server.h"
#include "fsd/core/unix_socket.h"
#include "fsd/transport/listen_address.h"
#include "fsd/uring/ring.h"

namespace fsd {

struct SocketServerStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_dropped = 0;  // protocol errors
  uint64_t connections_refused = 0;  // over max_connections
};

class SocketServer {
 public:
  // poll_us: how long a connection that just had a request keeps looking for
  // the next one before it waits on io_uring (0: never poll).
  // max_connections: connections served at once; one more is accepted and
  // closed at once (the client sees its end), with a warning.
  SocketServer(StreamSessionFactory sessions, unsigned threads,
               Ring::MetadataIo metadata_io = Ring::MetadataIo::kRing, unsigned poll_us = 0,
               unsigned max_connections = kDefaultMaxConnections);
  static constexpr unsigned kDefaultMaxConnections = 1024;
  ~SocketServer();

  // Time rules for connections (0: none). A frame must arrive whole within
  // `frame` of its first byte (the first frame within that of the
  // connection); a connection that holds nothing (StreamSession::
  // holds_state) is closed once idle past `idle`. Set before start().
  struct Timeouts {
    std::chrono::seconds frame{30};
    std::chrono::seconds idle{300};
  };
  void set_timeouts(Timeouts t) { timeouts_ = t; }
  // The most connections one peer (a uid on unix sockets, an address on
  // TCP) has open at once: `per_peer`, or three quarters of
  // max_connections (at least 1). Past it, its next one is closed at once,
  // and other peers still get in. Set before start().
  void set_peer_share(unsigned per_peer) { per_peer_ = per_peer; }
  unsigned peer_share() const;

  // Binds and listens (throws std::runtime_error on failure). A port of 0
  // picks a free one; bound() tells which. A unix socket gets `access`'s
  // mode and group (default 0600).
  void listen(const ListenAddress& addr, const SocketAccess& access = {});
  // Serves on `listening`, a socket already listening (passed by socket
  // activation) for `addr` (whose inherited name it is); throws
  // std::runtime_error if it is not a listening stream socket.
  void adopt(Fd listening, const ListenAddress& addr);
  const std::vector<ListenAddress>& bound() const { return bound_; }

  // Starts the workers. Returns at once.
  void start();
  // Stops accepting, closes every connection once its in-flight requests are
  // done, joins the workers, removes unix socket files. Idempotent.
  void stop();

  SocketServerStats stats() const;

 private:
  class Worker;
  class Connection;

  StreamSessionFactory sessions_;
  unsigned max_connections_;
  std::atomic<unsigned> open_connections_{0};
  Timeouts timeouts_;
  unsigned per_peer_ = 0;
  std::mutex peers_mu_;  // guards peers_; taken alone
  std::unordered_map<std::string, unsigned> peers_;  // open connections by peer
  bool take_peer_slot(const std::string& key);
  void give_peer_slot(const std::string& key);
  std::atomic<int64_t> last_warning_{0};  // steady-clock seconds of the last rate-limited warning
  // True at most once a second: for warnings a client could repeat at will.
  bool may_warn();
  unsigned threads_;
  unsigned poll_us_;
  Ring::MetadataIo metadata_io_;
  std::vector<Fd> listeners_;
  std::vector<ListenAddress> bound_;
  std::vector<SocketFile> files_;  // the unix sockets' files, removed at stop
  std::vector<std::unique_ptr<Worker>> workers_;
  bool stopped_ = false;
};

}  // namespace fsd
