// fuse::Server: serves one export to a FUSE client (the host kernel through
// /dev/fuse, or a guest's virtiofs driver through virtqueues) on the shared
// Vfs backend.
//
// Protocol state lives here: node ids and their lookup counts (LOOKUP adds,
// FORGET removes), open file and directory handles, and the cache policy's
// timeouts and open flags. Transports hand in the request bytes and a list
// of buffers for the reply; file data is read straight into those buffers.
//
// Thread-safety: handle() may run on several threads at once (one Ring each).
#pragma once

#include <sys/uio.h>

#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>

#include "fsd/core/server.h"
#include "fsd/uring/ring.h"
#include "fsd/vfs/vfs.h"
#include "protocol/fuse/request.h"

namespace fsd::fuse {

struct ServerOptions {
  uint32_t max_write = 1 << 20;  // bytes per WRITE (FUSE_MAX_PAGES negotiates it)
  bool virtiofs = false;         // DESTROY and INIT differ slightly on /dev/fuse
};

class Server : public MessageServer {
 public:
  Server(Vfs& vfs, ServerOptions options);
  ~Server() override;

  // Handles the request in `in` (a WRITE's data may be anywhere in it and is
  // written to the file from where it lies). Returns the reply length written
  // to `out` (0 for requests that get no reply: FORGET, BATCH_FORGET,
  // INTERRUPT), or -EBADMSG for a malformed request.
  Task<Result<size_t>> handle(Ring& ring, const RequestBytes& in, std::span<const iovec> out) override;

  bool initialized() const { return initialized_; }
  size_t node_count() const;
  size_t handle_count() const;

 private:
  struct Handle {
    OpenFile file;
    bool dir = false;
  };
  struct Inode {
    NodeRef node;
    uint64_t nlookup = 0;
  };
  class Context;

  uint64_t remember(const NodeRef& node);  // +1 lookup; returns the node id
  void forget(uint64_t nodeid, uint64_t n);
  Result<NodeRef> node(uint64_t nodeid);
  uint64_t add_handle(std::shared_ptr<Handle> h);
  std::shared_ptr<Handle> handle_of(uint64_t fh);
  std::shared_ptr<Handle> take_handle(uint64_t fh);
  fuse_attr attr_of(const Node& n, const struct statx& st);
  fuse_entry_out entry_of(const NodeRef& n, const struct statx& st);

  Vfs& vfs_;
  ServerOptions options_;
  uint64_t entry_timeout_ = 0, attr_timeout_ = 0;
  bool initialized_ = false;
  bool apply_umask_ = false;  // FUSE_DONT_MASK agreed: the client leaves the umask to fsd
  bool submounts_ = false;    // FUSE_SUBMOUNTS agreed: mount points are announced
  bool labels_ = false;       // FUSE_SECURITY_CTX agreed: creations carry their security label
  bool writeback_ = false;    // FUSE_WRITEBACK_CACHE agreed: the client's page cache holds writes
  uint32_t minor_ = 0;

  mutable std::mutex mu_;  // guards the maps below; taken alone
  std::unordered_map<uint64_t, Inode> inodes_;
  std::unordered_map<const Node*, uint64_t> ids_;
  uint64_t next_id_ = FUSE_ROOT_ID + 1;
  std::unordered_map<uint64_t, std::shared_ptr<Handle>> handles_;
  uint64_t next_fh_ = 1;
};

// Servers for a transport: with `shared`, every client (a FUSE mount's
// threads) gets the same server; otherwise each client (a vhost-user
// front-end connection) a fresh one, with no state left from the last.
MessageServerFactory server_factory(Vfs& vfs, ServerOptions options, bool shared);

}  // namespace fsd::fuse
