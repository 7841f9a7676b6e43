// NodeTable: the nodes of one export, and the bounded cache of their O_PATH
// fds. A node is found by (dev, ino) and lives while a NodeRef to it
// exists; its fd is opened again on demand after eviction (by file handle
// where the file system has them and fsd may use them, else by its last
// known (parent, name), checked to be the same inode).
//
// Thread-safety: every member may be called from any thread.
// Lock order: table_mu_ before fd_mu_ before dev_mu_.
#pragma once

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <boost/intrusive/list.hpp>
#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "common/fd.h"
#include "common/result.h"
#include "fsd/vfs/node.h"

namespace fsd {

// Whether evicted nodes are opened again by file handle (which needs
// CAP_DAC_READ_SEARCH): kNever (the default, as virtiofsd's) re-resolves
// the node's name and checks it is the same inode; kPrefer uses handles
// when the file system has them, else names; kMandatory never uses names:
// the table fails to open without handles, and a node without one may not
// be used (NodeTable::handle_allowed). A handle reopens an inode wherever
// it now is, even moved out of the export on the host; a name cannot.
// virtiofsd's --inode-file-handles.
enum class FileHandles { kNever, kPrefer, kMandatory };

// A pinned O_PATH fd of a node; valid until this object is destroyed.
class PathFd {
 public:
  PathFd() = default;
  PathFd(Node* n, int fd) : node_(n), fd_(fd) {}
  PathFd(PathFd&& o) noexcept : node_(std::exchange(o.node_, nullptr)), fd_(std::exchange(o.fd_, -1)) {}
  PathFd& operator=(PathFd&& o) noexcept;
  PathFd(const PathFd&) = delete;
  ~PathFd();
  int get() const { return fd_; }
  // "/proc/self/fd/N": names this node for calls that take no fd.
  std::string proc_path() const;

 private:
  Node* node_ = nullptr;
  int fd_ = -1;
};

struct NodeTableStats {
  uint64_t nodes = 0;
  uint64_t path_fds = 0;
  uint64_t reopen_by_handle = 0;
  uint64_t reopen_by_name = 0;
};

// The statx fields every node lookup asks for.
inline constexpr unsigned kNodeStatxMask = STATX_BASIC_STATS | STATX_BTIME;
// The st_dev of a statx, as stat(2) would give it.
inline uint64_t dev_of(const struct statx& st) { return makedev(st.stx_dev_major, st.stx_dev_minor); }

class NodeTable {
 public:
  struct Options {
    unsigned path_fd_cache = 256;  // most O_PATH fds kept open (the root's aside)
    FileHandles handles = FileHandles::kNever;
  };
  // Takes the export's root directory (an O_PATH fd, never evicted), which
  // errors call `name`. Throws std::runtime_error with a one-line reason
  // when the root cannot be stat'ed or is no directory, or handles are
  // mandatory and unusable.
  NodeTable(Fd root, Options options, std::string_view name);
  ~NodeTable();
  NodeTable(const NodeTable&) = delete;
  NodeTable& operator=(const NodeTable&) = delete;

  const NodeRef& root() const { return root_; }
  int root_fd() const { return root_fd_.get(); }
  uint64_t root_dev() const { return root_dev_; }
  bool uses_handles() const { return handles_ok_; }
  // False for a node without a file handle when handles are mandatory.
  bool handle_allowed(const Node& n) const {
    return options_.handles != FileHandles::kMandatory || n.is_root() || n.handle_ != nullptr;
  }
  // From now on `dir` (an O_PATH fd of the same directory, e.g. its mount
  // in the sandbox) is the root; only while the table holds the root alone.
  // Throws std::runtime_error with the reason otherwise.
  void move_root(Fd dir);

  // Finds or inserts the node of a freshly opened O_PATH fd (whose statx is
  // `st`), seen as `name` in `parent`; the fd becomes the node's cached fd
  // if it has none (else it is closed).
  NodeRef intern(Fd fd, const struct statx& st, const NodeRef& parent, std::string_view name);
  // The node of (dev, ino), if there is one.
  NodeRef find(Node::Key key);
  // find(), and where there is a node (not the root), records that it was
  // seen as `name` in `dir` (a lookup, a rename's new name).
  NodeRef seen(Node::Key key, const NodeRef& dir, std::string_view name);
  // Where the node was last seen: (parent, name); no parent for the root.
  std::pair<NodeRef, std::string> location(const Node& n) const;
  NodeRef parent(const Node& n) const;

  // Pins and returns the node's O_PATH fd, opening it again if evicted
  // (ESTALE: its name no longer leads to it; EOPNOTSUPP: handles are
  // mandatory and it has none).
  Result<PathFd> path_fd(Node& n);

  // A unique, stable inode number across the submounts below the root
  // (st_dev mixed into st_ino); st_ino itself on the root's device.
  uint64_t unique_ino(uint64_t dev, uint64_t ino);

  NodeTableStats stats() const;

 private:
  friend class NodeRef;
  friend class PathFd;

  void release(Node* n);  // the last reference went away
  void unpin(Node* n);
  void evict_locked();
  Result<Fd> reopen(Node& n);
  static Fd mount_fd_of(int dir);

  Options options_;
  std::string name_;
  Fd root_fd_;
  uint64_t root_dev_ = 0;
  bool handles_ok_ = false;

  mutable std::mutex table_mu_;
  boost::intrusive::set<Node, boost::intrusive::base_hook<NodeSetHook>,
                        boost::intrusive::key_of_value<NodeKeyOf>>
      table_;
  NodeRef root_;

  mutable std::mutex fd_mu_;
  boost::intrusive::list<Node, boost::intrusive::base_hook<NodeLruHook>,
                         boost::intrusive::constant_time_size<false>>
      lru_;  // nodes with a cached fd, most recent first
  unsigned path_fds_ = 0;
  std::map<int, Fd> mount_fds_;  // mount id -> an fd on that mount, for open_by_handle_at
  uint64_t reopen_by_handle_ = 0, reopen_by_name_ = 0;

  std::mutex dev_mu_;
  std::map<uint64_t, uint64_t> dev_index_;  // st_dev -> small index for unique_ino
};

}  // namespace fsd
