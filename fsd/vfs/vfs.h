// Vfs: the backend of one export. Knows no protocol.
//
// Contract for every operation:
//  - names are single path components; "", ".", ".." and names containing
//    '/' or NUL are EINVAL (lookup handles "." and ".." itself);
//  - nothing is resolved outside the export: every host call is relative to
//    a directory fd of the export, with RESOLVE_BENEATH / O_NOFOLLOW, and no
//    symlink is followed on the host;
//  - a read-only export answers every mutating operation with EROFS before
//    touching the host;
//  - errors are positive errno values in Result.
//
// Thread-safety: a Vfs is shared by all worker threads. Operations take a
// Ring, which must belong to the calling thread.
#pragma once

#include <sys/stat.h>
#include <sys/statfs.h>

#include <atomic>
#include <boost/intrusive/list.hpp>
#include <boost/intrusive/set.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

#include "fsd/util/fd.h"
#include "fsd/uring/ring.h"
#include "fsd/vfs/export.h"
#include "fsd/vfs/node.h"
#include "protocol/result.h"

namespace fsd {

struct VfsOptions {
  // Most O_PATH fds the node cache keeps open (per export).
  unsigned path_fd_cache = 256;
  // Most files clients may hold open at once (per export); beyond it, EMFILE.
  unsigned open_files = 512;
  // Use file handles (needs CAP_DAC_READ_SEARCH) when the filesystem has them.
  bool use_handles = true;
};

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

// A file opened for I/O; counts against VfsOptions::open_files.
class OpenFile {
 public:
  OpenFile() = default;
  OpenFile(Vfs* vfs, Fd fd, int flags) : vfs_(vfs), fd_(std::move(fd)), flags_(flags) {}
  OpenFile(OpenFile&& o) noexcept
      : vfs_(std::exchange(o.vfs_, nullptr)), fd_(std::move(o.fd_)), flags_(o.flags_) {}
  OpenFile& operator=(OpenFile&& o) noexcept;
  ~OpenFile();
  int get() const { return fd_.get(); }
  int flags() const { return flags_; }
  bool valid() const { return fd_.valid(); }
  bool readable() const { return (flags_ & O_ACCMODE) != O_WRONLY; }
  bool writable() const { return (flags_ & O_ACCMODE) != O_RDONLY; }

 private:
  Vfs* vfs_ = nullptr;
  Fd fd_;
  int flags_ = 0;
};

struct Entry {
  NodeRef node;
  struct statx st{};
};

struct SetAttr {
  bool mode = false, uid = false, gid = false, size = false;
  mode_t mode_value = 0;
  uid_t uid_value = 0;
  gid_t gid_value = 0;
  uint64_t size_value = 0;
  enum class Time { kOmit, kNow, kSet };
  Time atime = Time::kOmit, mtime = Time::kOmit;
  timespec atime_value{}, mtime_value{};
  bool ctime = false;  // only "touch ctime"
};

// Owner to give new objects (applied when fsd runs as root).
struct Creds {
  uid_t uid = 0;
  gid_t gid = 0;
};

struct VfsStats {
  uint64_t nodes = 0;
  uint64_t path_fds = 0;
  uint64_t open_files = 0;
  uint64_t reopen_by_handle = 0;
  uint64_t reopen_by_name = 0;
};

class Vfs {
 public:
  // Opens the export root. Throws std::runtime_error with a one-line message
  // (missing path, not a directory, permission).
  Vfs(ExportConfig config, VfsOptions options);
  ~Vfs();
  Vfs(const Vfs&) = delete;
  Vfs& operator=(const Vfs&) = delete;

  const ExportConfig& config() const { return config_; }
  bool read_only() const { return config_.read_only; }
  const NodeRef& root() const { return root_; }
  bool uses_handles() const { return handles_ok_; }
  VfsStats stats() const;

  // A unique, stable inode number across submounts of this export (st_dev
  // mixed into st_ino). Equal to st_ino on the export root's device.
  uint64_t unique_ino(uint64_t dev, uint64_t ino);
  // Changes when content or metadata changes (mtime, ctime, size).
  static uint32_t version_of(const struct statx& st);

  // Pins and returns an O_PATH fd for the node, re-opening it if evicted.
  Result<PathFd> path_fd(Node& n);

  // ".", "..", or a child. ".." of the root is the root.
  Task<Result<Entry>> lookup(Ring& ring, NodeRef dir, std::string_view name);
  Task<Result<struct statx>> getattr(Ring& ring, Node& n);
  // Opens for I/O. flags: O_ACCMODE plus O_APPEND/O_TRUNC/O_NONBLOCK/O_DIRECTORY/O_SYNC/O_DSYNC.
  Task<Result<OpenFile>> open(Ring& ring, Node& n, int flags);
  struct Created {
    Entry entry;
    OpenFile file;
  };
  Task<Result<Created>> create(Ring& ring, NodeRef dir, std::string_view name, int flags,
                               mode_t mode, Creds creds);
  Task<Result<Entry>> mkdir(Ring& ring, NodeRef dir, std::string_view name, mode_t mode, Creds creds);
  Task<Result<Entry>> symlink(Ring& ring, NodeRef dir, std::string_view name,
                              std::string_view target, Creds creds);
  Task<Result<Entry>> mknod(Ring& ring, NodeRef dir, std::string_view name, mode_t mode,
                            dev_t rdev, Creds creds);
  Task<Result<void>> link(Ring& ring, Node& target, NodeRef dir, std::string_view name);
  // flags: AT_REMOVEDIR to remove a directory.
  Task<Result<void>> unlink(Ring& ring, NodeRef dir, std::string_view name, int flags);
  Task<Result<void>> rename(Ring& ring, NodeRef olddir, std::string_view oldname, NodeRef newdir,
                            std::string_view newname, unsigned flags);
  // Removes the node by the name it was last seen under.
  Task<Result<void>> remove(Ring& ring, Node& n);
  // Renames the node (by the name it was last seen under) into dir/name.
  Task<Result<void>> rename_node(Ring& ring, Node& n, NodeRef newdir, std::string_view newname);

  Result<std::string> readlink(Node& n);
  Result<struct statfs> statfs(Node& n);
  // `file`, if given, is an open fd of the node (used for truncation).
  Result<void> setattr(Node& n, const SetAttr& a, const OpenFile* file);
  // Returns the value size; with an empty `out`, only the size.
  Result<size_t> getxattr(Node& n, const std::string& name, std::span<std::byte> out);
  Result<size_t> listxattr(Node& n, std::span<std::byte> out);
  Result<void> setxattr(Node& n, const std::string& name, std::span<const std::byte> value, int flags);
  Result<void> removexattr(Node& n, const std::string& name);

  // Checks that a client-supplied name is one plain path component.
  static bool valid_name(std::string_view name);

 private:
  friend class NodeRef;
  friend class PathFd;
  friend class OpenFile;

  // Finds or inserts the node for a freshly opened path fd (whose statx is
  // `st`); the fd becomes the node's cached fd if it has none.
  NodeRef intern(Fd fd, const struct statx& st, const NodeRef& parent, std::string_view name);
  Result<Fd> reopen(Node& n);
  // Where the node was last seen: (parent, name); no parent for the root.
  std::pair<NodeRef, std::string> location(Node& n);
  // For a change to `name` in `dir`: EROFS on a read-only export, EINVAL for
  // a bad name, ENOTDIR; else the directory's pinned fd.
  Result<PathFd> dir_for_change(Node& dir, std::string_view name);
  Task<Result<Entry>> entry_at(Ring& ring, const NodeRef& dir, int dirfd, std::string_view name);
  void release(Node* n);  // the last reference went away
  void unpin(Node* n);
  void evict_locked();
  Result<void> reserve_open_file();
  void release_open_file() { open_files_.fetch_sub(1, std::memory_order_relaxed); }
  void chown_new(int dirfd, const std::string& name, Creds creds);

  ExportConfig config_;
  VfsOptions options_;
  bool handles_ok_ = false;
  bool am_root_ = false;
  Fd root_fd_;
  uint64_t root_dev_ = 0;

  // Lock order: table_mu_ before fd_mu_ before dev_mu_.
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
  std::map<int, Fd> mount_fds_;  // mount id -> an O_PATH fd on that mount
  uint64_t reopen_by_handle_ = 0, reopen_by_name_ = 0;

  std::mutex dev_mu_;
  std::map<uint64_t, uint64_t> dev_index_;  // st_dev -> small index for unique_ino

  std::atomic<unsigned> open_files_{0};
};

}  // namespace fsd
