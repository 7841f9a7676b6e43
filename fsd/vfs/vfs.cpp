// Vfs: setting up an export, and the operations on names (lookup, open,
// create, link, unlink, rename, remove, setattr).
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
  if (config_.security_label && !config_.read_only) check_labels_fit();
  if (!config_.closure.empty()) {
    try {
      closure_ = Closure::load(config_.closure);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error("export '" + config_.tag + "': " + e.what());
    }
  }
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
  int r = co_await ring.statx(dirfd, cname.c_str(), AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, kNodeStatxMask, &st);
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
  r = co_await ring.statx(fd.get(), "", AT_EMPTY_PATH, kNodeStatxMask, &st);
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
  if (hidden(*dir, cname->view())) co_return Error{-ENOENT};
  auto pfd = path_fd(*dir);
  if (!pfd) co_return Error{pfd.error()};
  co_return co_await entry_at(ring, dir, pfd->get(), *cname);
}

Task<Result<struct statx>> Vfs::getattr(Ring& ring, Node& n) {
  auto pfd = path_fd(n);
  if (!pfd) co_return Error{pfd.error()};
  struct statx st{};
  int r = co_await ring.statx(pfd->get(), "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, kNodeStatxMask, &st);
  if (r < 0) co_return Error{r};
  // A root's link count tells how many directories it holds, hidden ones
  // too; 1 is what file systems that do not count them say.
  if (closure_ && n.is_root()) st.stx_nlink = 1;
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
                                       mode_t mode, const Label* label) {
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
  int r;
  if (!label) {
    r = co_await ring.openat2(at->dir.get(), at->name.c_str(), how);
  } else {
    // Made and labelled under a temporary name, then put in place. A name
    // that exists is opened without a label, as it would be without one.
    auto xattr = label_xattr(*label);
    struct statx existing{};
    if (!xattr) {
      r = xattr.error();
    } else if (!(flags & O_EXCL) &&
               ::statx(at->dir.get(), at->name.c_str(), AT_SYMLINK_NOFOLLOW, STATX_TYPE, &existing) == 0) {
      r = -EEXIST;
    } else {
      int made = -1;
      auto tmp = make_temporary([&](const char* t) {
        made = static_cast<int>(::syscall(SYS_openat2, at->dir.get(), t, &how, sizeof how));
        return made < 0 ? -errno : 0;
      });
      if (!tmp) {
        r = tmp.error();
      } else {
        auto placed = label_and_place(at->dir.get(), *tmp, at->name, *xattr, *label, made, false);
        r = placed ? made : placed.error();
        if (!placed) ::close(made);
      }
    }
  }
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
  r = co_await ring.statx(fd.get(), "", AT_EMPTY_PATH, kNodeStatxMask, &st);
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

Task<Result<Entry>> Vfs::mkdir(Ring& ring, NodeRef dir, std::string_view name, mode_t mode, const Label* label) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  if (label)
    co_return co_await make_labelled(ring, dir, *at, *label, true, [&](const char* tmp) {
      return ::mkdirat(at->dir.get(), tmp, mode & 07777) < 0 ? -errno : 0;
    });
  int r = co_await ring.mkdirat(at->dir.get(), at->name.c_str(), mode & 07777);
  if (r < 0) co_return Error{r};
  co_return co_await entry_at(ring, dir, at->dir.get(), at->name);
}

Task<Result<Entry>> Vfs::symlink(Ring& ring, NodeRef dir, std::string_view name,
                                 std::string_view target, const Label* label) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  if (target.empty() || target.size() >= PATH_MAX) co_return Error{-EINVAL};
  std::string ctarget(target);  // checked, then used: the copy
  if (ctarget.find('\0') != std::string::npos) co_return Error{-EINVAL};
  if (label)
    co_return co_await make_labelled(ring, dir, *at, *label, false, [&](const char* tmp) {
      return ::symlinkat(ctarget.c_str(), at->dir.get(), tmp) < 0 ? -errno : 0;
    });
  int r = co_await ring.symlinkat(ctarget.c_str(), at->dir.get(), at->name.c_str());
  if (r < 0) co_return Error{r};
  co_return co_await entry_at(ring, dir, at->dir.get(), at->name);
}

Task<Result<Entry>> Vfs::mknod(Ring& ring, NodeRef dir, std::string_view name, mode_t mode,
                               dev_t rdev, const Label* label) {
  auto at = dir_for_change(*dir, name);
  if (!at) co_return Error{at.error()};
  mode_t type = mode & S_IFMT;
  bool device = type == S_IFCHR || type == S_IFBLK;
  if (type != S_IFREG && type != S_IFIFO && type != S_IFSOCK && !(device && config_.devices)) co_return Error{-EPERM};
  if (label)
    co_return co_await make_labelled(ring, dir, *at, *label, false, [&](const char* tmp) {
      return ::mknodat(at->dir.get(), tmp, type | (mode & 07777), rdev) < 0 ? -errno : 0;
    });
  if (::mknodat(at->dir.get(), at->name.c_str(), type | (mode & 07777), rdev) < 0) co_return errno_error();
  co_return co_await entry_at(ring, dir, at->dir.get(), at->name);
}

// ---- labelled creation

namespace {
// A name no client picks by chance, in the directory of the file it stands for.
std::string temporary_name() {
  char tmp[40];
  std::snprintf(tmp, sizeof tmp, ".fsd-label.%08x%08x", arc4random(), arc4random());
  return tmp;
}
}  // namespace

Result<std::string> Vfs::label_xattr(const Label& label) const {
  // The labels Linux's LSMs give new files: any other name (trusted.*,
  // security.capability, an ACL) would let a client set on the host what
  // its callers may not.
  if (label.name != "security.selinux" && label.name != "security.SMACK64") return Error{-EOPNOTSUPP};
  if (label.value.size() > XATTR_SIZE_MAX) return Error{-E2BIG};
  return mapped_xattr_name(label.name);
}

Result<std::string> Vfs::make_temporary(FunctionRef<int(const char* tmp)> make) {
  for (int attempt = 0; attempt < 16; attempt++) {
    std::string tmp = temporary_name();
    int r = make(tmp.c_str());
    if (r == -EEXIST) continue;
    if (r < 0) return Error{r};
    return tmp;
  }
  return Error{-EEXIST};
}

Result<void> Vfs::label_and_place(int dirfd, const std::string& tmp, const Name& name, const std::string& xattr,
                                  const Label& label, int file_fd, bool is_dir) {
  int r;
  {
    Credentials::AsSelf self;  // the label is the client kernel's, set as fsd
    if (file_fd >= 0) {
      r = ::fsetxattr(file_fd, xattr.c_str(), label.value.data(), label.value.size(), 0);
    } else {
      std::string path = "/proc/self/fd/" + std::to_string(dirfd) + "/" + tmp;
      r = ::lsetxattr(path.c_str(), xattr.c_str(), label.value.data(), label.value.size(), 0);
    }
  }
  if (r == 0) r = ::renameat2(dirfd, tmp.c_str(), dirfd, name.c_str(), RENAME_NOREPLACE);
  if (r == 0) return {};
  int err = errno;
  ::unlinkat(dirfd, tmp.c_str(), is_dir ? AT_REMOVEDIR : 0);
  return Error{-err};
}

Task<Result<Entry>> Vfs::make_labelled(Ring& ring, const NodeRef& dir, Change& at, const Label& label, bool is_dir,
                                       FunctionRef<int(const char* tmp)> make) {
  auto xattr = label_xattr(label);
  if (!xattr) co_return Error{xattr.error()};
  auto tmp = make_temporary(make);
  if (!tmp) co_return Error{tmp.error()};
  if (auto placed = label_and_place(at.dir.get(), *tmp, at.name, *xattr, label, -1, is_dir); !placed)
    co_return Error{placed.error()};
  co_return co_await entry_at(ring, dir, at.dir.get(), at.name);
}

void Vfs::check_labels_fit() const {
  auto fail = [&](const std::string& why) {
    throw std::runtime_error("export '" + config_.tag + "': security-label: " + why);
  };
  Label probe{"security.selinux", "system_u:object_r:unlabeled_t:s0"};
  auto xattr = label_xattr(probe);
  if (!xattr) fail(std::string("the export's xattrmap refuses security.selinux: ") + std::strerror(-xattr.error()));
  Fd dir(::open(config_.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) fail("cannot open '" + config_.path + "': " + std::strerror(errno));
  // A file that never has a name; where the file system has no O_TMPFILE,
  // a named one, removed at once.
  std::string named;
  Fd f(::openat(dir.get(), ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (!f) {
    auto made = make_temporary([&](const char* tmp) {
      f.reset(::openat(dir.get(), tmp, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600));
      return f ? 0 : -errno;
    });
    if (!made) fail("cannot create a file in '" + config_.path + "' to try a label on: " + std::strerror(-made.error()));
    named = *made;
  }
  int r = ::fsetxattr(f.get(), xattr->c_str(), probe.value.data(), probe.value.size(), 0);
  int err = errno;
  if (!named.empty()) ::unlinkat(dir.get(), named.c_str(), 0);
  if (r < 0)
    fail("the host cannot hold security.selinux" + (*xattr != probe.name ? " (as " + *xattr + ")" : std::string()) +
         " on files in '" + config_.path + "': " + std::strerror(err) +
         "; map it to a name it can hold (xattrmap, e.g. to user.virtiofs.security.selinux), or leave security-label out");
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
    int r = ::utimensat(AT_FDCWD, path.c_str(), ts, 0);
    if (r < 0 && errno == EPERM && a.has(SetAttr::kTimesMayBeNow)) {
      // A caller who is not the owner may set both times to now (a touch),
      // and no other times; an mtime alone follows a write or truncation
      // of theirs, which set the host's times already.
      if (ts[0].tv_nsec == UTIME_OMIT || ts[1].tv_nsec == UTIME_OMIT) return {};
      timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
      r = ::utimensat(AT_FDCWD, path.c_str(), now, 0);
    }
    if (r < 0) return errno_error();
  } else if (a.valid == SetAttr::kCtime) {
    // Only "update ctime" was asked: a no-op chown does exactly that.
    if (::fchownat(pfd->get(), "", static_cast<uid_t>(-1), static_cast<gid_t>(-1), AT_EMPTY_PATH) < 0)
      return errno_error();
  }
  return {};
}

}  // namespace fsd
