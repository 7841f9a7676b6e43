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
//  - errors are negative errno values in Result (common/result.h);
//  - the protocol servers (fsd/p9, fsd/fuse) make no host calls of their
//    own: every read, write, directory listing, xattr, lock and sync on an
//    exported file happens here, so that confinement, read-only and the fd
//    budget are enforced in one place.
//
// Identity: every operation runs as the identity the calling thread (and
// its Ring) acts as (Ring::act_as), so the host kernel checks permissions,
// and new files, directories, symlinks and nodes are made owned by that
// identity (set-group-ID directories and the mode asked for behave as on a
// local file system). Housekeeping of the Vfs's own (reopening a cached fd)
// runs as fsd itself.
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

#include "common/closure.h"
#include "fsd/core/credentials.h"
#include "common/fd.h"
#include "common/function_ref.h"
#include "common/result.h"
#include "fsd/uring/ring.h"
#include "fsd/vfs/export.h"
#include "fsd/vfs/fd_budget.h"
#include "fsd/vfs/name.h"
#include "fsd/vfs/node.h"
#include "fsd/vfs/node_table.h"

namespace fsd {

class Vfs;

struct VfsOptions {
  // Most O_PATH fds the node cache keeps open (per export).
  unsigned path_fd_cache = 256;
  // Most files clients may hold open at once (per export); beyond it, EMFILE.
  unsigned open_files = 512;
  // File handles to reopen nodes whose O_PATH fd was evicted (FileHandles,
  // fsd/vfs/node_table.h); a lookup of a node without one, where they are
  // mandatory, fails (EOPNOTSUPP).
  using Handles = FileHandles;
  Handles handles = Handles::kNever;
};

// One entry of a directory listing. `name` is valid only during the
// callback that receives it.
struct DirEntry {
  uint64_t ino = 0;   // Vfs::unique_ino
  uint64_t next = 0;  // the offset that resumes the listing after this entry
  uint8_t type = 0;   // DT_*
  std::string_view name;
};

// A POSIX record lock, owned by the open file (an OFD lock): locks of two
// OpenFiles conflict even within fsd, as two clients' locks must.
struct FileLock {
  enum class Type { kRead, kWrite, kUnlock } type = Type::kUnlock;
  uint64_t start = 0;
  uint64_t length = 0;  // 0: to the end of the file
  pid_t pid = 0;        // get_lock: the holder's pid as the host reports it
};

struct Entry {
  NodeRef node;
  struct statx st{};
};

// The security label a client's LSM gives a file it creates (FUSE_SECURITY_CTX,
// with the export's security-label): an xattr, set on the new file before
// its name appears (Vfs::create and the other creations).
struct Label {
  std::string name;   // the client's xattr name: security.selinux or security.SMACK64
  std::string value;
};

// What setattr changes, as the kernel's iattr bits: the low six (mode, uid,
// gid, size, atime, mtime) agree with FUSE's FATTR_* and 9P's P9_ATTR_*.
// A time is set to the given value unless its *Now bit asks for "now".
struct SetAttr {
  enum : uint32_t {
    kMode = 1 << 0, kUid = 1 << 1, kGid = 1 << 2, kSize = 1 << 3, kAtime = 1 << 4, kMtime = 1 << 5,
    kCtime = 1 << 6, kAtimeNow = 1 << 7, kMtimeNow = 1 << 8,
    // The explicit times may be the client's own "now" (a FUSE client with
    // the writeback cache sends the time of a touch, a write or a
    // truncation as a value): for a caller who may only set times to now
    // (one with write permission, not the owner), both times become now,
    // and an mtime alone is left to the host (its write or truncation set
    // it), rather than EPERM.
    kTimesMayBeNow = 1 << 9,
    kWireBits = kMode | kUid | kGid | kSize | kAtime | kMtime,  // the bits FUSE and 9P share
  };
  uint32_t valid = 0;
  mode_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  uint64_t size = 0;
  timespec atime{}, mtime{};
  bool has(uint32_t bit) const { return (valid & bit) != 0; }
};

struct VfsStats {
  uint64_t nodes = 0;
  uint64_t path_fds = 0;
  uint64_t open_files = 0;
  uint64_t reopen_by_handle = 0;
  uint64_t reopen_by_name = 0;
  uint64_t files_reclaimed = 0;  // open files whose fd was closed for another's use
  uint64_t files_reopened = 0;
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
  // The open(2) flags a client's open or create keeps (O_DIRECT only on an
  // export with direct-io); fsd adds O_CLOEXEC and drops the rest.
  int open_flags_allowed() const;
  // The mode a client's create, mkdir or mknod asks for, given the umask it
  // sent (FUSE with POSIX ACLs leaves the umask to the file system): the
  // umask applies unless `dir` has a default ACL, which the host kernel
  // then applies instead, as a local file system does.
  mode_t creation_mode(Node& dir, mode_t mode, mode_t umask);
  const NodeRef& root() const { return nodes_.root(); }
  // The sandbox reaches the export through a mount of its own: from now
  // on, `dir` (an O_PATH fd) is the export's root. It must be the same
  // directory (device and inode) the export opened; called before any
  // request is served. Throws std::runtime_error naming the export.
  void move_root(Fd dir);
  // The export's root directory (an O_PATH fd), for the sandbox's rules.
  int root_dir() const { return nodes_.root_fd(); }
  bool uses_handles() const { return nodes_.uses_handles(); }
  VfsStats stats() const;

  // A unique, stable inode number across submounts of this export (st_dev
  // mixed into st_ino). Equal to st_ino on the export root's device.
  uint64_t unique_ino(uint64_t dev, uint64_t ino) { return nodes_.unique_ino(dev, ino); }
  // Changes when content or metadata changes (mtime, ctime, size).
  static uint32_t version_of(const struct statx& st);
  // The device number a device node's statx names, and one made of parts.
  static dev_t rdev_of(const struct statx& st);
  static dev_t device_number(uint32_t major, uint32_t minor);

  // ".", "..", or a child. ".." of the root is the root.
  Task<Result<Entry>> lookup(Ring& ring, NodeRef dir, std::string_view name);
  Task<Result<struct statx>> getattr(Ring& ring, Node& n);
  // Opens for I/O. flags: O_ACCMODE plus O_APPEND/O_TRUNC/O_NONBLOCK/O_DIRECTORY/O_SYNC/O_DSYNC.
  // Anything but a regular file or a directory follows one rule: a device
  // node is EACCES unless the export allows `devices`; FIFOs, sockets and
  // character devices are opened and used without ever waiting.
  Task<Result<OpenFile>> open(Ring& ring, Node& n, int flags);
  // Creates and opens `name`; where it exists already (and O_EXCL is not
  // asked for) it is opened by open()'s rule, never in place.
  struct Created {
    Entry entry;
    OpenFile file;
  };
  //
  // With a `label` (null: none), each creation makes its file under a
  // temporary name in the same directory (".fsd-label.*"), sets the label
  // on it (through the xattr map, as fsd itself: the label is the client
  // kernel's, not its caller's), and renames it into place only if the
  // name is still free: under its name the file is never unlabelled. Only
  // the two labels Linux's LSMs give new files are taken (security.selinux,
  // security.SMACK64); any other is EOPNOTSUPP, and a label the host
  // refuses fails the creation, leaving nothing behind.
  Task<Result<Created>> create(Ring& ring, NodeRef dir, std::string_view name, int flags,
                               mode_t mode, const Label* label = nullptr);
  Task<Result<Entry>> mkdir(Ring& ring, NodeRef dir, std::string_view name, mode_t mode, const Label* label = nullptr);
  Task<Result<Entry>> symlink(Ring& ring, NodeRef dir, std::string_view name,
                              std::string_view target, const Label* label = nullptr);
  Task<Result<Entry>> mknod(Ring& ring, NodeRef dir, std::string_view name, mode_t mode,
                            dev_t rdev, const Label* label = nullptr);
  Task<Result<void>> link(Ring& ring, Node& target, NodeRef dir, std::string_view name);
  // flags: AT_REMOVEDIR to remove a directory.
  Task<Result<void>> unlink(Ring& ring, NodeRef dir, std::string_view name, int flags);
  Task<Result<void>> rename(Ring& ring, NodeRef olddir, std::string_view oldname, NodeRef newdir,
                            std::string_view newname, unsigned flags);
  // Removes the node by its name `name` in `parent`, the name the client
  // reached it by, never by another link of the same inode. Where that
  // name is gone or no longer the node, or there is no parent (the
  // client's name for it is unknown): by the name it was last seen under,
  // if it has no other link; else ESTALE.
  Task<Result<void>> remove(Ring& ring, Node& n, const NodeRef& parent, std::string_view name);
  // Renames the node, named as remove() names it, into newdir/newname.
  Task<Result<void>> rename_node(Ring& ring, Node& n, const NodeRef& parent, std::string_view name, NodeRef newdir,
                                 std::string_view newname);

  Result<std::string> readlink(Node& n);
  Result<struct statfs> statfs(Node& n);
  // `file`, if given, is an open fd of the node (used for truncation).
  Result<void> setattr(Node& n, const SetAttr& a, const OpenFile* file);
  // Clears set-user-ID, and set-group-ID where the group may execute, as
  // the kernel does after a write, truncation or chown by a caller without
  // CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2 leaves that to the server). Done as
  // fsd itself, since the kernel's own clearing is not a permission check.
  Result<void> drop_setid(Node& n);
  // access(2) for the calling identity; W_OK on a read-only export is EROFS.
  Result<void> access(Node& n, int mask);

  // ---- ids: a client's (config().uids/gids) and the host's
  // The attributes a client sees: the host's, with uid and gid mapped.
  struct statx shown(struct statx st) const;
  // EPERM for an id the export forbids.
  Result<uid_t> host_uid(uid_t client) const;
  Result<gid_t> host_gid(gid_t client) const;
  // Who a request acts as, from the client's ids (EPERM if the export
  // forbids one, or fsd's user namespace does not map it). Null: fsd
  // itself, when it cannot act as others.
  // A caller named by uid and gid, with the supplementary groups of process
  // `groups_of` (0: none, as for a guest's caller). Kept per thread for a
  // second, so the fast path is a lookup.
  Result<Credentials::Ref> caller(uid_t uid, gid_t gid, pid_t groups_of = 0) const;
  // A user of the host's user database (a trusted 9P peer's n_uname).
  Result<Credentials::Ref> user(uid_t uid) const;
  // `who` (null: fsd), creating with the client's group `gid` instead of its
  // own when it is in that group or `trusted` (a 9P create's group).
  Result<Credentials::Ref> creator(const Credentials* who, gid_t gid, bool trusted) const;

  // ---- extended attributes, by the client's names (config().xattrs maps
  // them to the host's)
  // Returns the value size; with an empty `out`, only the size.
  Result<size_t> getxattr(Node& n, const std::string& name, std::span<std::byte> out);
  Result<size_t> listxattr(Node& n, std::span<std::byte> out);
  Result<void> setxattr(Node& n, const std::string& name, std::span<const std::byte> value, int flags);
  Result<void> removexattr(Node& n, const std::string& name);

  // ---- file data, through io_uring, into or out of any memory (a 9P
  // buffer, a FUSE reply buffer, guest memory)
  // Reads at `offset` into `to`; returns the bytes read (0 at the end).
  // EBADF unless the file is open for reading; EINVAL past INT64_MAX.
  // A FIFO, socket or character device answers EAGAIN rather than wait for
  // data (or room, for write): a request that waits for a partner would hold
  // its queue or connection, and no guest sends these (guest kernels serve
  // their special files themselves).
  Task<Result<size_t>> read(Ring& ring, const OpenFile& f, std::span<const iovec> to, uint64_t offset);
  // Writes `from` at `offset`; returns the bytes written. With
  // `drop_setid` (the client's kernel asks, as FUSE_WRITE_KILL_SUIDGID does
  // for a writer without CAP_FSETID), the write clears the file's
  // set-user-ID bit, and set-group-ID where the group may execute: the host
  // kernel does so for a caller without the capability; fsd does it for a
  // root caller.
  Task<Result<size_t>> write(Ring& ring, const OpenFile& f, std::span<const iovec> from, uint64_t offset,
                             bool drop_setid = false);
  Task<Result<void>> fsync(Ring& ring, const OpenFile& f, bool datasync);
  // Through io_uring: allocating can take long on a large range.
  Task<Result<void>> fallocate(Ring& ring, const OpenFile& f, int mode, uint64_t offset, uint64_t length);
  // SEEK_SET/CUR/END/DATA/HOLE; returns the new offset.
  Result<uint64_t> lseek(const OpenFile& f, uint64_t offset, int whence);
  // At most 1 GiB per call (the caller asks again for the rest). Runs on
  // the blocking pool: a large copy takes long.
  Task<Result<size_t>> copy_file_range(Ring& ring, const OpenFile& in, uint64_t off_in, const OpenFile& out,
                                       uint64_t off_out, size_t length);
  // Syncs the file system the export is on (on the blocking pool).
  Task<Result<void>> syncfs(Ring& ring);

  // ---- directories (one listing code for every protocol)
  // Calls `emit` for each entry of the open directory, from `offset` (0, or
  // an entry's `next`), until `emit` returns false or the listing ends.
  // Entries are read from the host about `bytes_hint` bytes at a time.
  // While other requests are in flight on `ring`, the listing (and `emit`)
  // runs on the blocking pool, so a slow directory holds no one else up.
  Task<Result<void>> read_dir(Ring& ring, const OpenFile& dir, uint64_t offset, size_t bytes_hint,
                              FunctionRef<bool(const DirEntry&)> emit);

  // ---- locks (never wait: a worker thread must not block)
  // Takes or releases a lock; EAGAIN when a conflicting lock is held. A
  // file keeps its fd while it holds any lock, counted in the client's
  // `account`: ENOLCK when the client keeps lock_share() files already, or
  // a file's locks are split into more than kMaxLockRanges pieces.
  Result<void> set_lock(const OpenFile& f, const FileLock& lock, const std::shared_ptr<LockAccount>& account);
  // How many files one client may keep open for its locks: an eighth of
  // the budget (at least 8).
  unsigned lock_share() const { return std::max(8u, options_.open_files / 8); }
  static constexpr size_t kMaxLockRanges = 256;
  // The first lock that conflicts with `want`, or one of type kUnlock.
  Result<FileLock> get_lock(const OpenFile& f, const FileLock& want);

 private:
  Result<PathFd> path_fd(Node& n) { return nodes_.path_fd(n); }
  static NodeTable open_nodes(const ExportConfig& config, const VfsOptions& options);
  // For a change to `name` in `dir`: EROFS on a read-only export, EINVAL
  // or ENAMETOOLONG for a bad name (Name::of), ENOTDIR; else the
  // directory's pinned fd and the checked copy of the name.
  struct Change {
    PathFd dir;
    Name name;
  };
  Result<Change> dir_for_change(Node& dir, std::string_view name);
  Task<Result<Entry>> entry_at(Ring& ring, const NodeRef& dir, int dirfd, const Name& name);
  struct Named {
    NodeRef parent;
    std::string name;
    PathFd dir;  // parent's, pinned
  };
  Result<Named> named(Node& n, const NodeRef& parent, std::string_view name);
  Task<Result<Created>> open_existing(Ring& ring, const NodeRef& dir, int dirfd, const Name& name, int flags);
  // Labelled creation (see create()): the host's name for the label's
  // xattr; a free temporary name made by `make` (0 or -errno), labelled
  // and renamed to `name`.
  Result<std::string> label_xattr(const Label& label) const;
  static Result<std::string> make_temporary(FunctionRef<int(const char* tmp)> make);
  Result<void> label_and_place(int dirfd, const std::string& tmp, const Name& name, const std::string& xattr,
                               const Label& label, int file_fd, bool is_dir);
  Task<Result<Entry>> make_labelled(Ring& ring, const NodeRef& dir, Change& at, const Label& label, bool is_dir,
                                    FunctionRef<int(const char* tmp)> make);
  // --security-label: the host can hold security.selinux (as the xattr map
  // names it) on a new file of the export; throws saying why not.
  void check_labels_fit() const;
  using FileUse = FileBudget::Use;
  // read/write after their checks: `iov` at `offset`, through io_uring (or
  // non-blocking syscalls for special files).
  Task<Result<size_t>> transfer(Ring& ring, const OpenFile& f, std::span<const iovec> iov, uint64_t offset, bool write);
  Result<FileUse> use(const OpenFile& f) { return files_.use(f); }

  // The host's name for a client's xattr name, or why it may not be used
  // (`changing`: set or remove).
  Result<std::string> host_xattr_name(const std::string& name, bool changing) const;
  // The client's name through the xattr map (config().xattrs), if any:
  // what host_xattr_name and label_xattr start from.
  Result<std::string> mapped_xattr_name(const std::string& name) const;
  // When the export's xattr map renames security.capability: removes the
  // renamed one, as the kernel removes the real one on write, truncate, chown.
  void drop_mapped_capability(const std::string& path);

  ExportConfig config_;
  VfsOptions options_;
  std::string mapped_capability_;  // the host name of security.capability, if renamed
  // The root's names a client may reach (config().closure), if limited.
  std::optional<Closure> closure_;
  bool hidden(const Node& dir, std::string_view name) const {
    return closure_ && dir.is_root() && !closure_->shows(name);
  }
  bool am_root_ = false;
  NodeTable nodes_;

  FileBudget files_;
};

}  // namespace fsd
