#include "fsd/vfs/vfs.h"
#include "fsd/vfs/name.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace fsd {
namespace {

constexpr int kAllowedOpenFlags = O_ACCMODE | O_APPEND | O_TRUNC | O_NONBLOCK | O_DIRECTORY |
                                  O_SYNC | O_DSYNC | O_LARGEFILE | O_NOATIME;
constexpr unsigned kResolveChild = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
constexpr unsigned kStatxMask = kNodeStatxMask;

// The export's root directory, opened for the node table.
Fd open_root(const ExportConfig& config) {
  Fd fd(::open(config.path.c_str(), O_PATH | O_CLOEXEC));
  if (!fd)
    throw std::runtime_error("export '" + config.tag + "': cannot open '" + config.path + "': " + std::strerror(errno));
  return fd;
}

}  // namespace

// ---- Vfs: set-up

Vfs::Vfs(ExportConfig config, VfsOptions options)
    : config_(std::move(config)), options_(options), nodes_(open_nodes(config_, options_)),
      files_(nodes_, options_.open_files) {
  am_root_ = ::geteuid() == 0;
  if (config_.xattrs) {
    // The kernel drops security.capability when a file is written, truncated
    // or chowned; renamed to something else on the host, fsd does that.
    auto cap = config_.xattrs->to_host("security.capability");
    if (cap && *cap != "security.capability") mapped_capability_ = *cap;
  }
}

NodeTable Vfs::open_nodes(const ExportConfig& config, const VfsOptions& options) {
  Fd root = open_root(config);
  try {
    return NodeTable(std::move(root), {.path_fd_cache = options.path_fd_cache, .handles = options.handles},
                     "'" + config.path + "'");
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("export '" + config.tag + "': " + e.what());
  }
}

Vfs::~Vfs() = default;

void Vfs::move_root(Fd dir) {
  try {
    nodes_.move_root(std::move(dir));
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("export '" + config_.tag + "': " + e.what());
  }
}

VfsStats Vfs::stats() const {
  NodeTableStats n = nodes_.stats();
  return {.nodes = n.nodes,
          .path_fds = n.path_fds,
          .open_files = files_.open(),
          .reopen_by_handle = n.reopen_by_handle,
          .reopen_by_name = n.reopen_by_name,
          .files_reclaimed = files_.reclaimed(),
          .files_reopened = files_.reopened()};
}

dev_t Vfs::rdev_of(const struct statx& st) { return makedev(st.stx_rdev_major, st.stx_rdev_minor); }
dev_t Vfs::device_number(uint32_t major, uint32_t minor) { return makedev(major, minor); }

uint32_t Vfs::version_of(const struct statx& st) {
  uint64_t v = static_cast<uint64_t>(st.stx_mtime.tv_sec) * 1000000000ull + st.stx_mtime.tv_nsec;
  v ^= st.stx_size * 0x9E3779B97F4A7C15ull;
  return static_cast<uint32_t>(v ^ (v >> 32));
}

// ---- operations

Result<Vfs::Change> Vfs::dir_for_change(Node& dir, std::string_view name) {
  if (read_only()) return Error{-EROFS};
  auto checked = Name::of(name);
  if (!checked) return Error{checked.error()};
  if (!dir.is_dir()) return Error{-ENOTDIR};
  auto pfd = path_fd(dir);
  if (!pfd) return Error{pfd.error()};
  return Change{std::move(*pfd), *checked};
}

Task<Result<Entry>> Vfs::entry_at(Ring& ring, const NodeRef& dir, int dirfd, const Name& cname) {
  std::string_view name = cname.view();
  struct statx st{};
  // Known node? Then a stat is enough and nothing is opened.
  int r = co_await ring.statx(dirfd, cname.c_str(), AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, kStatxMask, &st);
  if (r < 0) co_return Error{r};
  if (NodeRef found = nodes_.seen(Node::Key{dev_of(st), st.stx_ino}, dir, name)) {
    if (!nodes_.handle_allowed(*found)) co_return Error{-EOPNOTSUPP};
    co_return Entry{std::move(found), shown(st)};
  }
  open_how how{};
  how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = kResolveChild;
  r = co_await ring.openat2(dirfd, cname.c_str(), how);
  if (r < 0) co_return Error{r};
  Fd fd(r);
  // Stat what was opened: the name may have changed since the first stat.
  r = co_await ring.statx(fd.get(), "", AT_EMPTY_PATH, kStatxMask, &st);
  if (r < 0) co_return Error{r};
  NodeRef node = nodes_.intern(std::move(fd), st, dir, name);
  if (!nodes_.handle_allowed(*node)) co_return Error{-EOPNOTSUPP};
  co_return Entry{std::move(node), shown(st)};
}

Task<Result<Entry>> Vfs::lookup(Ring& ring, NodeRef dir, std::string_view name) {
  if (name == "." || name == "..") {
    NodeRef target;
    if (name == ".." && !dir->is_root()) {
      target = nodes_.parent(*dir);
    } else {
      target = dir;
    }
    if (!target) co_return Error{-ESTALE};
    auto st = co_await getattr(ring, *target);
    if (!st) co_return Error{st.error()};
    co_return Entry{std::move(target), *st};
  }
  auto cname = Name::of(name);
  if (!cname) co_return Error{cname.error()};
  if (!dir->is_dir()) co_return Error{-ENOTDIR};
  auto pfd = path_fd(*dir);
  if (!pfd) co_return Error{pfd.error()};
  co_return co_await entry_at(ring, dir, pfd->get(), *cname);
}

Task<Result<struct statx>> Vfs::getattr(Ring& ring, Node& n) {
  auto pfd = path_fd(n);
  if (!pfd) co_return Error{pfd.error()};
  struct statx st{};
  int r = co_await ring.statx(pfd->get(), "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, kStatxMask, &st);
  if (r < 0) co_return Error{r};
  co_return shown(st);
}

Task<Result<OpenFile>> Vfs::open(Ring& ring, Node& n, int flags) {
  if (n.is_symlink()) co_return Error{-ELOOP};
  bool writes = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
  if (read_only() && writes) co_return Error{-EROFS};
  if (n.is_dir() && writes) co_return Error{-EISDIR};
  // The one rule for what is neither a regular file nor a directory. The
  // node's type is its inode's (fixed for the inode's life), and the open
  // below reaches exactly that inode, so no other file can be swapped in
  // between the check and the open.
  //  - A device node opens a host device as fsd: only where the export says
  //    `devices`, and then as the caller, whom the device's own mode checks.
  //  - A FIFO, socket or character device may wait in open() for a partner
  //    (a FIFO's writer, say), which would park this worker thread, and its
  //    reads may wait forever (io_uring would wait without a thread, but
  //    the request would still hold its queue): such a file is opened and
  //    used without waiting, ever. Block devices are read like files.
  mode_t type = n.type & S_IFMT;
  if ((type == S_IFCHR || type == S_IFBLK) && !config_.devices) co_return Error{-EACCES};
  bool special = type == S_IFIFO || type == S_IFSOCK || type == S_IFCHR;
  flags = (flags & open_flags_allowed()) | O_CLOEXEC | O_NOCTTY;
  if (auto r = files_.reserve(); !r) co_return Error{r.error()};
  auto pfd = path_fd(n);
  if (!pfd) {
    files_.unreserve();
    co_return Error{pfd.error()};
  }
  // Re-opening through /proc/self/fd reaches exactly this inode, whatever
  // has happened to its name since.
  std::string path = pfd->proc_path();
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | (special ? O_NONBLOCK : 0));
  int r = co_await ring.openat2(AT_FDCWD, path.c_str(), how);
  if (r < 0 && (flags & O_NOATIME) && r == -EPERM) {
    how.flags &= ~static_cast<uint64_t>(O_NOATIME);
    r = co_await ring.openat2(AT_FDCWD, path.c_str(), how);
  }
  if (r < 0) {
    files_.unreserve();
    co_return Error{r};
  }
  co_return files_.adopt(Fd(r), NodeRef(&n), flags, n.dev, special);
}

mode_t Vfs::creation_mode(Node& dir, mode_t mode, mode_t umask) {
  auto pfd = path_fd(dir);
  if (!pfd) return mode & ~umask;
  Credentials::AsSelf self;
  bool inherits = ::getxattr(pfd->proc_path().c_str(), "system.posix_acl_default", nullptr, 0) > 0;
  return inherits ? mode : mode & ~umask;
}

int Vfs::open_flags_allowed() const { return kAllowedOpenFlags | (config_.direct_io ? O_DIRECT : 0); }

Task<Result<Vfs::Created>> Vfs::create(Ring& ring, NodeRef dir, std::string_view name, int flags,
                                       mode_t mode) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  if (auto r = files_.reserve(); !r) co_return Error{r.error()};
  // Only a new file is opened here (O_EXCL). A name that exists already is
  // looked up and opened as open() opens any node, by the rule for its type:
  // opened in place, an existing FIFO would park this worker until a writer
  // came, and a device node would open the host's device.
  open_how how{};
  int oflags = (flags & open_flags_allowed() & ~O_DIRECTORY) | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC |
               O_NOCTTY;
  how.flags = static_cast<uint64_t>(oflags);
  how.mode = mode & 07777;
  how.resolve = kResolveChild;
  int r = co_await ring.openat2(at->dir.get(), at->name.c_str(), how);
  if (r == -EEXIST && !(flags & O_EXCL)) {
    files_.unreserve();
    co_return co_await open_existing(ring, dir, at->dir.get(), at->name, flags);
  }
  if (r < 0) {
    files_.unreserve();
    co_return Error{r};
  }
  Fd fd(r);
  struct statx st{};
  r = co_await ring.statx(fd.get(), "", AT_EMPTY_PATH, kStatxMask, &st);
  int dupfd = r < 0 ? r : ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0);
  if (r < 0 || dupfd < 0) {
    files_.unreserve();
    co_return Error{r < 0 ? r : -errno};
  }
  NodeRef node = nodes_.intern(Fd(dupfd), st, dir, at->name.view());
  if (!nodes_.handle_allowed(*node)) {
    files_.unreserve();
    co_return Error{-EOPNOTSUPP};
  }
  // Reopened, it must not be truncated or created again.
  OpenFile file = files_.adopt(std::move(fd), node, oflags & ~(O_CREAT | O_EXCL | O_TRUNC), dir->dev, false);
  co_return Created{Entry{std::move(node), shown(st)}, std::move(file)};
}

// create() of a name that exists, without O_EXCL: what open(2) with O_CREAT
// does to an existing name, through open()'s rule.
Task<Result<Vfs::Created>> Vfs::open_existing(Ring& ring, const NodeRef& dir, int dirfd, const Name& name, int flags) {
  auto e = co_await entry_at(ring, dir, dirfd, name);
  if (!e) co_return Error{e.error()};
  if (e->node->is_dir()) co_return Error{-EISDIR};
  if (e->node->is_symlink()) co_return Error{-ELOOP};  // O_CREAT | O_NOFOLLOW
  auto file = co_await open(ring, *e->node, flags & ~(O_CREAT | O_EXCL | O_DIRECTORY));
  if (!file) co_return Error{file.error()};
  co_return Created{std::move(*e), std::move(*file)};
}

Task<Result<Entry>> Vfs::mkdir(Ring& ring, NodeRef dir, std::string_view name, mode_t mode) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  int r = co_await ring.mkdirat(at->dir.get(), at->name.c_str(), mode & 07777);
  if (r < 0) co_return Error{r};
  co_return co_await entry_at(ring, dir, at->dir.get(), at->name);
}

Task<Result<Entry>> Vfs::symlink(Ring& ring, NodeRef dir, std::string_view name,
                                 std::string_view target) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  if (target.empty() || target.size() >= PATH_MAX) co_return Error{-EINVAL};
  std::string ctarget(target);  // checked, then used: the copy
  if (ctarget.find('\0') != std::string::npos) co_return Error{-EINVAL};
  int r = co_await ring.symlinkat(ctarget.c_str(), at->dir.get(), at->name.c_str());
  if (r < 0) co_return Error{r};
  co_return co_await entry_at(ring, dir, at->dir.get(), at->name);
}

Task<Result<Entry>> Vfs::mknod(Ring& ring, NodeRef dir, std::string_view name, mode_t mode,
                               dev_t rdev) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  mode_t type = mode & S_IFMT;
  bool device = type == S_IFCHR || type == S_IFBLK;
  if (type != S_IFREG && type != S_IFIFO && type != S_IFSOCK && !(device && config_.devices)) co_return Error{-EPERM};
  if (::mknodat(at->dir.get(), at->name.c_str(), type | (mode & 07777), rdev) < 0) co_return errno_error();
  co_return co_await entry_at(ring, dir, at->dir.get(), at->name);
}

Task<Result<void>> Vfs::link(Ring& ring, Node& target, NodeRef dir, std::string_view name) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  if (target.is_dir()) co_return Error{-EPERM};
  auto tfd = path_fd(target);
  if (!tfd) co_return Error{tfd.error()};
  int r;
  // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; others link through /proc,
  // which checks what linking by name would.
  const Credentials* who = Credentials::applied();
  if (am_root_ && (who == nullptr || who->uid() == 0)) {
    r = co_await ring.linkat(tfd->get(), "", at->dir.get(), at->name.c_str(), AT_EMPTY_PATH);
  } else {
    std::string path = tfd->proc_path();
    r = co_await ring.linkat(AT_FDCWD, path.c_str(), at->dir.get(), at->name.c_str(), AT_SYMLINK_FOLLOW);
  }
  co_return from_res(r);
}

Task<Result<void>> Vfs::unlink(Ring& ring, NodeRef dir, std::string_view name, int flags) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  files_.keep_files_of(at->dir.get(), at->name.c_str());
  co_return from_res(co_await ring.unlinkat(at->dir.get(), at->name.c_str(), flags & AT_REMOVEDIR));
}

Task<Result<void>> Vfs::rename(Ring& ring, NodeRef olddir, std::string_view oldname, NodeRef newdir,
                               std::string_view newname, unsigned flags) {
  if (read_only()) co_return Error{-EROFS};
  auto cold = Name::of(oldname);
  if (!cold) co_return Error{cold.error()};
  auto cnew = Name::of(newname);
  if (!cnew) co_return Error{cnew.error()};
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) co_return Error{-EINVAL};
  if (!olddir->is_dir() || !newdir->is_dir()) co_return Error{-ENOTDIR};
  auto ofd = path_fd(*olddir);
  if (!ofd) co_return Error{ofd.error()};
  auto nfd = path_fd(*newdir);
  if (!nfd) co_return Error{nfd.error()};
  if (!(flags & RENAME_EXCHANGE)) files_.keep_files_of(nfd->get(), cnew->c_str());  // it may replace a file
  int r = co_await ring.renameat(ofd->get(), cold->c_str(), nfd->get(), cnew->c_str(), flags);
  if (r < 0) co_return Error{r};
  // Keep the moved node's remembered location current, for re-resolution.
  struct statx st{};
  if (::statx(nfd->get(), cnew->c_str(), AT_SYMLINK_NOFOLLOW, STATX_INO, &st) == 0)
    nodes_.seen(Node::Key{dev_of(st), st.stx_ino}, newdir, cnew->view());
  co_return Result<void>{};
}

// Where a client's remove or rename finds the node: by the name the client
// reached it by, checked to still be this inode. Where that name has gone
// (renamed since), or the client's name is unknown, by the name the node
// was last seen under, but only while it has no other link: that name
// could be another link's.
Result<Vfs::Named> Vfs::named(Node& n, const NodeRef& parent, std::string_view name) {
  if (n.is_root()) return Error{-EBUSY};
  auto at = [&](NodeRef dir, std::string nm) -> Result<Named> {
    auto pfd = path_fd(*dir);
    if (!pfd) return Error{pfd.error()};
    struct statx st{};
    if (::statx(pfd->get(), nm.c_str(), AT_SYMLINK_NOFOLLOW, STATX_INO, &st) < 0) return errno_error();
    if (dev_of(st) != n.dev || st.stx_ino != n.ino) return Error{-ESTALE};
    return Named{std::move(dir), std::move(nm), std::move(*pfd)};
  };
  if (parent) {
    auto checked = Name::of(name);
    if (!checked) return Error{checked.error()};
    auto given = at(parent, std::string(checked->view()));
    if (given || n.is_dir()) return given;  // a directory has one name
    auto self = path_fd(n);
    if (!self) return Error{self.error()};
    struct statx st{};
    if (::statx(self->get(), "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_NLINK, &st) < 0) return errno_error();
    if (st.stx_nlink > 1) return Error{given.error()};
  }
  auto [dir, nm] = nodes_.location(n);
  if (!dir) return Error{-ESTALE};
  return at(std::move(dir), std::move(nm));
}

Task<Result<void>> Vfs::remove(Ring& ring, Node& n, const NodeRef& parent, std::string_view name) {
  if (read_only()) co_return Error{-EROFS};
  auto at = named(n, parent, name);
  if (!at) co_return Error{at.error()};
  files_.keep_files_of(at->dir.get(), at->name.c_str());
  co_return from_res(co_await ring.unlinkat(at->dir.get(), at->name.c_str(), n.is_dir() ? AT_REMOVEDIR : 0));
}

Task<Result<void>> Vfs::rename_node(Ring& ring, Node& n, const NodeRef& parent, std::string_view name, NodeRef newdir,
                                    std::string_view newname) {
  if (read_only()) co_return Error{-EROFS};
  auto at = named(n, parent, name);
  if (!at) co_return Error{at.error()};
  co_return co_await rename(ring, at->parent, at->name, std::move(newdir), newname, 0);
}

Result<std::string> Vfs::readlink(Node& n) {
  if (!n.is_symlink()) return Error{-EINVAL};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string buf(PATH_MAX, '\0');
  ssize_t len = ::readlinkat(pfd->get(), "", buf.data(), buf.size());
  if (len < 0) return errno_error();
  buf.resize(static_cast<size_t>(len));
  return buf;
}

Result<struct statfs> Vfs::statfs(Node& n) {
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  struct statfs s{};
  if (::fstatfs(pfd->get(), &s) < 0) return errno_error();
  return s;
}

Result<void> Vfs::setattr(Node& n, const SetAttr& a, const OpenFile* file) {
  if (read_only()) return Error{-EROFS};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  if (a.has(SetAttr::kMode)) {
    if (n.is_symlink()) return Error{-EOPNOTSUPP};
    if (::fchmodat(AT_FDCWD, path.c_str(), a.mode & 07777, 0) < 0) return errno_error();
  }
  if (a.has(SetAttr::kUid) || a.has(SetAttr::kGid)) {
    auto uid = a.has(SetAttr::kUid) ? host_uid(a.uid) : Result<uid_t>(static_cast<uid_t>(-1));
    auto gid = a.has(SetAttr::kGid) ? host_gid(a.gid) : Result<gid_t>(static_cast<gid_t>(-1));
    if (!uid || !gid) return Error{-EPERM};
    if (::fchownat(pfd->get(), "", *uid, *gid, AT_EMPTY_PATH) < 0) return errno_error();
  }
  if (a.has(SetAttr::kUid) || a.has(SetAttr::kGid) || a.has(SetAttr::kSize)) drop_mapped_capability(path);
  if (a.has(SetAttr::kSize)) {
    if (a.size > static_cast<uint64_t>(INT64_MAX)) return Error{-EFBIG};
    int r;
    if (file && file->writable()) {
      auto u = use(*file);
      if (!u) return Error{u.error()};
      r = ::ftruncate(u->fd(), static_cast<off_t>(a.size));
    } else {
      r = ::truncate(path.c_str(), static_cast<off_t>(a.size));
    }
    if (r < 0) return errno_error();
  }
  if (a.has(SetAttr::kAtime) || a.has(SetAttr::kMtime)) {
    auto when = [&](uint32_t bit, uint32_t now, timespec v) {
      return !a.has(bit) ? timespec{0, UTIME_OMIT} : a.has(now) ? timespec{0, UTIME_NOW} : v;
    };
    timespec ts[2] = {when(SetAttr::kAtime, SetAttr::kAtimeNow, a.atime),
                      when(SetAttr::kMtime, SetAttr::kMtimeNow, a.mtime)};
    if (::utimensat(AT_FDCWD, path.c_str(), ts, 0) < 0) return errno_error();
  } else if (a.valid == SetAttr::kCtime) {
    // Only "update ctime" was asked: a no-op chown does exactly that.
    if (::fchownat(pfd->get(), "", static_cast<uid_t>(-1), static_cast<gid_t>(-1), AT_EMPTY_PATH) < 0)
      return errno_error();
  }
  return {};
}

namespace {
// fsd keeps CAP_SYS_ADMIN and CAP_SETFCAP while it acts as a client (only
// the file-system capabilities follow fsuid), so the kernel would let any
// client at the privileged xattr namespaces: fsd applies the local rules
// itself. Only a caller acting as root may set or remove trusted.* and
// security.* (file capabilities among them) or see trusted.*.
bool privileged_caller() {
  const Credentials* who = Credentials::applied();
  return (who ? who->uid() : Credentials::self()->uid()) == 0;
}
// What a write, truncation or chown by a caller without CAP_FSETID takes
// away: set-user-ID, and set-group-ID if the group may execute (without
// group execute, set-group-ID means mandatory locking and stays).
mode_t setid_bits_to_drop(mode_t mode) {
  if (!S_ISREG(mode)) return 0;
  mode_t drop = mode & S_ISUID;
  if ((mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP)) drop |= S_ISGID;
  return drop;
}
bool is_trusted_xattr(std::string_view name) { return name.starts_with("trusted."); }
bool is_privileged_xattr(std::string_view name) { return is_trusted_xattr(name) || name.starts_with("security."); }
}  // namespace

// Names are the client's: mapped to the host's (config().xattrs) before a
// host call, and the host's listed names mapped back (or hidden).
Result<std::string> Vfs::host_xattr_name(const std::string& name, bool changing) const {
  if (name.empty() || name.size() > XATTR_NAME_MAX) return Error{-ERANGE};
  // ACLs hold ids: with ids translated, the host would read a client's ids as its own.
  if ((!config_.uids.empty() || !config_.gids.empty()) && name.starts_with("system.posix_acl_")) return Error{-EOPNOTSUPP};
  std::string host = name;
  if (config_.xattrs) {
    auto mapped = config_.xattrs->to_host(name);
    if (!mapped) return Error{mapped.error()};
    host = std::move(*mapped);
    if (host.size() > XATTR_NAME_MAX) return Error{-ERANGE};
  }
  // The privileged namespaces guard the host: they are checked on the host's
  // name. (A client's security.* renamed into user.* is only as safe as the
  // host file's permissions make it, as it would be with virtiofsd.)
  if (!privileged_caller()) {
    if (changing && is_privileged_xattr(host)) return Error{-EPERM};
    if (!changing && is_trusted_xattr(host)) return Error{-ENODATA};
  }
  return host;
}

Result<size_t> Vfs::getxattr(Node& n, const std::string& name, std::span<std::byte> out) {
  auto host = host_xattr_name(name, false);
  if (!host) return Error{host.error()};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  ssize_t r = ::getxattr(path.c_str(), host->c_str(), out.data(), out.size());
  if (r < 0) return errno_error();
  return static_cast<size_t>(r);
}

Result<size_t> Vfs::listxattr(Node& n, std::span<std::byte> out) {
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  bool privileged = privileged_caller();
  if (privileged && !config_.xattrs) {
    ssize_t r = ::listxattr(path.c_str(), reinterpret_cast<char*>(out.data()), out.size());
    if (r < 0) return errno_error();
    return static_cast<size_t>(r);
  }
  // Listed whole, then mapped and filtered (a size-only query still needs
  // the names, to count what the client will see).
  std::vector<char> all;
  for (;;) {
    ssize_t size = ::listxattr(path.c_str(), nullptr, 0);
    if (size < 0) return errno_error();
    all.resize(static_cast<size_t>(size));
    ssize_t r = ::listxattr(path.c_str(), all.data(), all.size());
    if (r >= 0) {
      all.resize(static_cast<size_t>(r));
      break;
    }
    if (errno != ERANGE) return errno_error();  // grew meanwhile: again
  }
  size_t used = 0;
  for (size_t at = 0; at < all.size();) {
    std::string_view host(all.data() + at);
    at += host.size() + 1;
    std::optional<std::string> mapped;
    std::string_view shown = host;
    if (config_.xattrs) {
      mapped = config_.xattrs->to_client(host);
      if (!mapped || mapped->empty()) continue;
      shown = *mapped;
    }
    if (!privileged && is_trusted_xattr(host)) continue;
    size_t len = shown.size() + 1;
    if (!out.empty()) {
      if (used + len > out.size()) return Error{-ERANGE};
      std::memcpy(out.data() + used, shown.data(), shown.size());
      out[used + shown.size()] = std::byte{0};
    }
    used += len;
  }
  return used;
}

Result<void> Vfs::setxattr(Node& n, const std::string& name, std::span<const std::byte> value, int flags) {
  if (read_only()) return Error{-EROFS};
  if (value.size() > XATTR_SIZE_MAX) return Error{-E2BIG};
  auto host = host_xattr_name(name, true);
  if (!host) return Error{host.error()};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  if (::setxattr(path.c_str(), host->c_str(), value.data(), value.size(), flags) < 0) return errno_error();
  return {};
}

Result<void> Vfs::removexattr(Node& n, const std::string& name) {
  if (read_only()) return Error{-EROFS};
  auto host = host_xattr_name(name, true);
  if (!host) return Error{host.error()};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  if (::removexattr(path.c_str(), host->c_str()) < 0) return errno_error();
  return {};
}

void Vfs::drop_mapped_capability(const std::string& path) {
  if (mapped_capability_.empty()) return;
  Credentials::AsSelf self;
  (void)::removexattr(path.c_str(), mapped_capability_.c_str());  // ENODATA: none to drop
}

// ---- ids

struct statx Vfs::shown(struct statx st) const {
  st.stx_uid = config_.uids.to_client(st.stx_uid);
  st.stx_gid = config_.gids.to_client(st.stx_gid);
  return st;
}

Result<uid_t> Vfs::host_uid(uid_t client) const {
  auto id = config_.uids.to_host(client);
  if (!id) return Error{-EPERM};
  return *id;
}

Result<gid_t> Vfs::host_gid(gid_t client) const {
  auto id = config_.gids.to_host(client);
  if (!id) return Error{-EPERM};
  return *id;
}

Result<Credentials::Ref> Vfs::caller(uid_t uid, gid_t gid, pid_t groups_of) const {
  auto u = host_uid(uid);
  auto g = host_gid(gid);
  if (!u || !g) return Error{-EPERM};
  if (!Credentials::switching()) return Credentials::Ref{};  // acts as fsd; forbidden ids stay forbidden
  struct Known {
    const Vfs* vfs;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    std::chrono::steady_clock::time_point at;
    Credentials::Ref who;
  };
  constexpr size_t kKept = 16;
  thread_local std::vector<Known> known;
  auto now = std::chrono::steady_clock::now();
  for (auto& k : known)
    if (k.vfs == this && k.uid == uid && k.gid == gid && k.pid == groups_of && now - k.at < std::chrono::seconds(1))
      return k.who;
  std::vector<gid_t> groups;
  if (groups_of != 0) {
    for (gid_t one : Credentials::groups_of_process(groups_of)) {
      auto h = host_gid(one);
      if (!h) return Error{-EPERM};
      groups.push_back(*h);
    }
  }
  auto who = Credentials::get(*u, *g, groups);
  if (!who->mapped()) return Error{-EPERM};  // fsd's user namespace has no such id
  if (known.size() == kKept) known.erase(known.begin());
  known.push_back({this, uid, gid, groups_of, now, who});
  return who;
}

Result<Credentials::Ref> Vfs::user(uid_t uid) const {
  auto u = host_uid(uid);
  if (!u) return Error{-EPERM};
  if (!Credentials::switching()) return Credentials::Ref{};
  auto who = Credentials::of_user(*u);
  if (!who->mapped()) return Error{-EPERM};
  return who;
}

Result<Credentials::Ref> Vfs::creator(const Credentials* who, gid_t gid, bool trusted) const {
  auto g = host_gid(gid);
  if (!g) return Error{-EPERM};
  const Credentials& base = who ? *who : *Credentials::self();
  if (*g == base.gid() || !(trusted || base.in_group(*g))) return Credentials::Ref(who);
  auto as = Credentials::get(base.uid(), *g, base.groups());
  if (!as->mapped()) return Error{-EPERM};
  return as;
}

Result<void> Vfs::drop_setid(Node& n) {
  if (read_only()) return Error{-EROFS};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  Credentials::AsSelf self;
  struct statx st{};
  if (::statx(pfd->get(), "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MODE, &st) < 0) return errno_error();
  mode_t drop = setid_bits_to_drop(st.stx_mode);
  if (drop == 0) return {};
  std::string path = pfd->proc_path();
  if (::fchmodat(AT_FDCWD, path.c_str(), st.stx_mode & 07777 & ~drop, 0) < 0) return errno_error();
  return {};
}

Result<void> Vfs::access(Node& n, int mask) {
  if ((mask & W_OK) && read_only()) return Error{-EROFS};
  auto pfd = path_fd(n);
  if (!pfd) return Error{pfd.error()};
  std::string path = pfd->proc_path();
  if (::faccessat(AT_FDCWD, path.c_str(), mask, AT_EACCESS) < 0) return errno_error();
  return {};
}

// ---- file data

namespace {
constexpr uint64_t kMaxOffset = static_cast<uint64_t>(INT64_MAX);
// A directory's getdents buffer (OpenState::DirCursor), per open directory
// that has been read: what is left of it after one reply serves the next.
constexpr size_t kDirBuffer = 8192;
constexpr size_t kMaxCopy = size_t{1} << 30;  // per copy_file_range call

// I/O on an O_NONBLOCK special file: at the offset where the file has one
// (a character device), else at its current position (a FIFO or socket).
Result<size_t> nonblocking_io(int fd, std::span<const iovec> iov, uint64_t offset, bool write) {
  int n = static_cast<int>(std::min<size_t>(iov.size(), IOV_MAX));
  auto off = static_cast<off_t>(offset);
  ssize_t r = write ? ::pwritev(fd, iov.data(), n, off) : ::preadv(fd, iov.data(), n, off);
  if (r < 0 && errno == ESPIPE) r = write ? ::writev(fd, iov.data(), n) : ::readv(fd, iov.data(), n);
  if (r < 0) return errno_error();
  return static_cast<size_t>(r);
}
}  // namespace

Task<Result<size_t>> Vfs::read(Ring& ring, const OpenFile& f, std::span<const iovec> to, uint64_t offset) {
  if (!f.valid() || !f.readable()) co_return Error{-EBADF};
  co_return co_await transfer(ring, f, to, offset, false);
}

Task<Result<size_t>> Vfs::write(Ring& ring, const OpenFile& f, std::span<const iovec> from, uint64_t offset,
                                bool drop_setid) {
  if (!f.valid() || !f.writable()) co_return Error{-EBADF};
  if (read_only()) co_return Error{-EROFS};
  auto r = co_await transfer(ring, f, from, offset, true);
  if (r && *r > 0 && !mapped_capability_.empty()) {
    if (auto u = use(f)) drop_mapped_capability("/proc/self/fd/" + std::to_string(u->fd()));
  }
  // A caller without CAP_FSETID had its write clear the bits in the host
  // kernel already; a root one did not.
  if (r && drop_setid && privileged_caller()) {
    if (auto u = use(f)) {
      Credentials::AsSelf self;
      struct stat st{};
      if (::fstat(u->fd(), &st) == 0 && setid_bits_to_drop(st.st_mode))
        (void)::fchmod(u->fd(), st.st_mode & 07777 & ~setid_bits_to_drop(st.st_mode));
    }
  }
  co_return r;
}

Task<Result<size_t>> Vfs::transfer(Ring& ring, const OpenFile& f, std::span<const iovec> iov, uint64_t offset,
                                   bool write) {
  if (offset > kMaxOffset) co_return Error{-EINVAL};
  if (iov.empty()) co_return size_t{0};
  auto u = use(f);
  if (!u) co_return Error{u.error()};
  int fd = u->fd();
  if (u->state().never_wait) co_return nonblocking_io(fd, iov, offset, write);
  auto n = static_cast<unsigned>(iov.size());
  int r;
  if (write && !(u->state().flags & (O_DIRECT | O_DSYNC))) {  // O_SYNC includes O_DSYNC
    r = co_await ring.write_cached(fd, iov.data(), n, offset);
  } else if (iov.size() == 1) {
    auto len = static_cast<unsigned>(iov[0].iov_len);
    r = write ? co_await ring.write(fd, iov[0].iov_base, len, offset) : co_await ring.read(fd, iov[0].iov_base, len, offset);
  } else {
    r = write ? co_await ring.writev(fd, iov.data(), n, offset) : co_await ring.readv(fd, iov.data(), n, offset);
  }
  co_return count_of(r);
}

Task<Result<void>> Vfs::fsync(Ring& ring, const OpenFile& f, bool datasync) {
  auto u = use(f);
  if (!u) co_return Error{u.error()};
  co_return from_res(co_await ring.fsync(u->fd(), datasync));
}

Task<Result<void>> Vfs::fallocate(Ring& ring, const OpenFile& f, int mode, uint64_t offset, uint64_t length) {
  if (!f.valid() || !f.writable()) co_return Error{-EBADF};
  if (read_only()) co_return Error{-EROFS};
  if (offset > kMaxOffset || length > kMaxOffset) co_return Error{-EINVAL};
  auto u = use(f);
  if (!u) co_return Error{u.error()};
  co_return from_res(co_await ring.fallocate(u->fd(), mode, offset, length));
}

Result<uint64_t> Vfs::lseek(const OpenFile& f, uint64_t offset, int whence) {
  if (offset > kMaxOffset) return Error{-EINVAL};
  auto u = use(f);
  if (!u) return Error{u.error()};
  off_t r = ::lseek(u->fd(), static_cast<off_t>(offset), whence);
  if (r < 0) return errno_error();
  return static_cast<uint64_t>(r);
}

Task<Result<size_t>> Vfs::copy_file_range(Ring& ring, const OpenFile& in, uint64_t off_in, const OpenFile& out,
                                          uint64_t off_out, size_t length) {
  if (!in.valid() || !in.readable() || !out.valid() || !out.writable()) co_return Error{-EBADF};
  if (read_only()) co_return Error{-EROFS};
  if (off_in > kMaxOffset || off_out > kMaxOffset) co_return Error{-EINVAL};
  auto ui = use(in);
  if (!ui) co_return Error{ui.error()};
  auto uo = use(out);
  if (!uo) co_return Error{uo.error()};
  loff_t oi = static_cast<loff_t>(off_in), oo = static_cast<loff_t>(off_out);
  size_t len = std::min<size_t>(length, kMaxCopy);
  auto copy = [&]() -> int {
    ssize_t r = ::copy_file_range(ui->fd(), &oi, uo->fd(), &oo, len, 0);
    return r < 0 ? -errno : static_cast<int>(r);
  };
  co_return count_of(co_await ring.blocking(copy, Ring::Offload::kAlways));
}

Task<Result<void>> Vfs::syncfs(Ring& ring) {
  auto sync = [&]() -> int {
    // syncfs(2) refuses O_PATH fds (EBADF): open the root for it.
    Fd dir(::openat(nodes_.root_fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir) return -errno;
    return ::syncfs(dir.get()) < 0 ? -errno : 0;
  };
  co_return from_res(co_await ring.blocking(sync, Ring::Offload::kAlways));
}

// ---- directories

Task<Result<void>> Vfs::read_dir(Ring& ring, const OpenFile& dir, uint64_t offset, size_t bytes_hint,
                                 FunctionRef<bool(const DirEntry&)> emit) {
  if (offset > kMaxOffset) co_return Error{-EINVAL};
  auto u = use(dir);
  if (!u) co_return Error{u.error()};
  detail::OpenState& st = u->state();
  auto list = [&]() -> int {
    int fd = u->fd();
    uint32_t gen;
    {
      std::lock_guard g(st.mu);
      gen = st.fd_gen;
    }
    // One reader at a time: the fd's position and the cursor go together.
    std::lock_guard g(st.dir_mu);
    auto& c = st.dir;
    if (!c.valid || c.gen != gen || c.offset != offset) {
      // Anywhere else than where the last read stopped: seek there.
      c.valid = false;
      if (::lseek(fd, static_cast<off_t>(offset), SEEK_SET) < 0) return -errno;
      c.pos = c.len = 0;
      c.offset = offset;
      c.gen = gen;
      c.valid = true;
    }
    if (!c.buf) c.buf = std::make_unique_for_overwrite<std::byte[]>(kDirBuffer);
    // Entries that fit the reply become its part; the rest stay for the
    // next read, which resumes at c.offset.
    size_t want = std::clamp<size_t>(bytes_hint, 512, kDirBuffer);
    for (;;) {
      while (c.pos < c.len) {
        dirent64 d;
        std::memcpy(&d, c.buf.get() + c.pos, offsetof(dirent64, d_name));
        DirEntry e{.ino = unique_ino(st.dev, d.d_ino),
                   .next = static_cast<uint64_t>(d.d_off),
                   .type = d.d_type,
                   .name = reinterpret_cast<const char*>(c.buf.get() + c.pos + offsetof(dirent64, d_name))};
        if (!emit(e)) return 0;
        c.pos += d.d_reclen;
        c.offset = e.next;
      }
      long n = ::syscall(SYS_getdents64, fd, c.buf.get(), want);
      if (n < 0) {
        c.valid = false;
        return -errno;
      }
      c.pos = 0;
      c.len = static_cast<size_t>(n);
      if (n == 0) {
        c.buf.reset();  // the end: a reader that finished holds no buffer
        return 0;
      }
    }
  };
  co_return from_res(co_await ring.blocking(list, Ring::Offload::kWhenBusy));
}

// ---- locks

namespace {
Result<struct flock> to_flock(const FileLock& l) {
  if (l.start > kMaxOffset || l.length > kMaxOffset) return Error{-EINVAL};
  struct flock fl{};
  fl.l_type = l.type == FileLock::Type::kRead ? F_RDLCK : l.type == FileLock::Type::kWrite ? F_WRLCK : F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(l.start);
  fl.l_len = static_cast<off_t>(l.length);
  return fl;
}

// Adds [start, end) to a set of ranges, merging what touches it.
void cover(std::map<uint64_t, uint64_t>& ranges, uint64_t start, uint64_t end) {
  auto it = ranges.upper_bound(start);
  if (it != ranges.begin() && std::prev(it)->second >= start) --it;
  while (it != ranges.end() && it->first <= end) {
    start = std::min(start, it->first);
    end = std::max(end, it->second);
    it = ranges.erase(it);
  }
  ranges.emplace(start, end);
}
// Takes [start, end) out of a set of ranges, splitting what straddles it.
void uncover(std::map<uint64_t, uint64_t>& ranges, uint64_t start, uint64_t end) {
  auto it = ranges.upper_bound(start);
  if (it != ranges.begin() && std::prev(it)->second > start) --it;
  while (it != ranges.end() && it->first < end) {
    auto [a, b] = *it;
    it = ranges.erase(it);
    if (a < start) ranges.emplace(a, start);
    if (b > end) it = ranges.emplace(end, b).first;
  }
}

}  // namespace

Result<void> Vfs::set_lock(const OpenFile& f, const FileLock& lock, const std::shared_ptr<LockAccount>& account) {
  auto fl = to_flock(lock);
  if (!fl) return Error{fl.error()};
  auto u = use(f);
  if (!u) return Error{u.error()};
  detail::OpenState& s = u->state();
  bool locking = lock.type != FileLock::Type::kUnlock;
  uint64_t end = lock.length == 0 ? UINT64_MAX : lock.start + lock.length;
  bool took = false;
  if (locking) {
    std::lock_guard g(s.mu);
    if (s.locked.size() >= kMaxLockRanges) return Error{-ENOLCK};
    if (s.locked.empty()) {  // its first lock keeps its fd
      if (!account || !account->take(lock_share())) return Error{-ENOLCK};
      took = true;
    }
  }
  int r = ::fcntl(u->fd(), F_OFD_SETLK, &*fl);
  int err = errno;
  std::lock_guard g(s.mu);
  if (r < 0) {
    if (took) account->give_back();  // a failed lock keeps nothing
    return errno_error(err == EACCES ? EAGAIN : err);
  }
  if (locking) {
    cover(s.locked, lock.start, end);
    if (took) s.locker = account;
  } else {
    uncover(s.locked, lock.start, end);
    if (s.locked.empty() && s.locker) std::exchange(s.locker, nullptr)->give_back();
  }
  return {};
}

Result<FileLock> Vfs::get_lock(const OpenFile& f, const FileLock& want) {
  auto fl = to_flock(want);
  if (!fl) return Error{fl.error()};
  auto u = use(f);
  if (!u) return Error{u.error()};
  if (::fcntl(u->fd(), F_OFD_GETLK, &*fl) < 0) return errno_error();
  FileLock held;
  held.type = fl->l_type == F_RDLCK ? FileLock::Type::kRead
              : fl->l_type == F_WRLCK ? FileLock::Type::kWrite
                                      : FileLock::Type::kUnlock;
  held.start = static_cast<uint64_t>(fl->l_start);
  held.length = static_cast<uint64_t>(fl->l_len);
  held.pid = fl->l_pid;
  return held;
}

}  // namespace fsd
