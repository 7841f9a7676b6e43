#include "fsd/fuse/server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/container/small_vector.hpp>

#include <algorithm>
#include <cstddef>
#include <array>
#include <climits>
#include <vector>

#include "fsd/core/iovec.h"
#include "protocol/fuse/reply.h"

namespace fsd::fuse {
namespace {

constexpr uint64_t kAlwaysTimeout = 24 * 3600;  // seconds: store contents do not change
constexpr uint64_t kAutoTimeout = 1;
constexpr size_t kMaxReaddirBuffer = 1 << 20;
constexpr size_t kMaxIovecs = 272;  // a 1 MiB read into 4 KiB guest pages, plus slack
constexpr size_t kWriteHead = sizeof(fuse_in_header) + sizeof(fuse_write_in);
constexpr size_t kMaxRequestHead = 4096;  // a request's bytes besides a WRITE's data
constexpr uint64_t kMaxCopy = 1u << 30;   // per COPY_FILE_RANGE: fits fuse_write_out's 32-bit size
// A request's bytes, copied out of guest memory: most fit without a heap
// allocation (a header, a struct and a name or two).
using RequestCopy = boost::container::small_vector<std::byte, 512>;

}  // namespace

// One request being handled: the dispatch target for every argument type.
class Server::Context {
 public:
  Context(Server& s, Ring& ring, const fuse_in_header& h, ScatterWriter& w, std::span<const iovec> payload)
      : s(s), vfs(s.vfs_), ring(ring), h(h), w(w), payload(payload) {}

  Server& s;
  Vfs& vfs;
  Ring& ring;
  const fuse_in_header& h;
  ScatterWriter& w;
  std::span<const iovec> payload;  // a WRITE's data not among the request's bytes

  template <class T>
  Result<void> reply(const T& v) {
    if (!w.write(v)) return Error{-ERANGE};
    return {};
  }
  Result<void> reply_entry(const Entry& e) { return reply(s.entry_of(e.node, e.st)); }
  Task<Result<void>> reply_entry_of(Result<Entry> e) {
    if (!e) co_return Error{e.error()};
    co_return reply_entry(*e);
  }
  Result<NodeRef> node() { return s.node(h.nodeid); }
  // A new object's mode: with FUSE_DONT_MASK agreed, the client sent the
  // umask rather than applying it; otherwise the mode is as sent.
  mode_t mode_of(Node& dir, mode_t mode, mode_t umask) {
    return s.apply_umask_ ? vfs.creation_mode(dir, mode, umask) : mode;
  }
  bool read_only() const { return vfs.read_only(); }

  uint32_t open_flags(bool dir) const {
    switch (vfs.config().cache) {
      case CachePolicy::kNever: return dir ? 0 : FOPEN_DIRECT_IO;
      case CachePolicy::kAuto: return 0;
      case CachePolicy::kAlways: return dir ? (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR) : FOPEN_KEEP_CACHE;
    }
    return 0;
  }

  // ---- session

  Task<Result<void>> op(const Init& a) {
    if (a.in.major < 7) co_return Error{-EPROTO};
    fuse_init_out out{};
    out.major = FUSE_KERNEL_VERSION;
    out.minor = std::min<uint32_t>(a.in.minor, kMinor);
    s.minor_ = out.minor;
    if (a.in.major > 7) {  // the client will retry with our major
      out.minor = kMinor;
      co_return reply(out);
    }
    uint64_t want = a.in.flags | (a.in.flags & FUSE_INIT_EXT ? uint64_t{a.in.flags2} << 32 : 0);
    uint64_t offer = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES |
                     FUSE_ATOMIC_O_TRUNC | FUSE_EXPORT_SUPPORT | FUSE_INIT_EXT |
                     // Set-id bits are cleared here, after the change the
                     // caller makes, rather than by the client asking for a
                     // mode change that a non-owner may not make.
                     FUSE_HANDLE_KILLPRIV_V2;
    // READDIRPLUS looks up every entry so the client can cache it; with
    // zero timeouts it cannot, and plain READDIR is several times cheaper.
    if (vfs.config().cache != CachePolicy::kNever && vfs.config().readdirplus)
      offer |= FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO;
    // With cache=never files are opened FOPEN_DIRECT_IO, which keeps them
    // from being mmapped unless this is granted (Linux 6.6's flag).
    constexpr uint64_t kDirectIoAllowMmap = uint64_t{1} << 36;
    if (vfs.config().allow_mmap) offer |= kDirectIoAllowMmap;
    // The client checks ACLs, and sends the umask rather than applying it
    // (FUSE_DONT_MASK): fsd applies it where no default ACL applies instead.
    if (vfs.config().posix_acl) offer |= FUSE_POSIX_ACL | FUSE_DONT_MASK;
    if (vfs.config().submounts) offer |= FUSE_SUBMOUNTS;
    if (vfs.config().cache == CachePolicy::kAlways) offer |= FUSE_CACHE_SYMLINKS;
    if (vfs.config().cache == CachePolicy::kAuto) offer |= FUSE_AUTO_INVAL_DATA;
    if (vfs.config().writeback) offer |= FUSE_WRITEBACK_CACHE;
    if (vfs.config().security_label && !vfs.read_only()) offer |= FUSE_SECURITY_CTX;
    uint64_t flags = want & offer;
    s.writeback_ = (flags & FUSE_WRITEBACK_CACHE) != 0;
    s.labels_ = (flags & FUSE_SECURITY_CTX) != 0;
    s.apply_umask_ = (flags & FUSE_DONT_MASK) != 0;
    s.submounts_ = (flags & FUSE_SUBMOUNTS) != 0;
    out.flags = static_cast<uint32_t>(flags);
    out.flags2 = static_cast<uint32_t>(flags >> 32);
    out.max_readahead = a.in.max_readahead;
    out.max_background = 64;
    out.congestion_threshold = 48;
    out.max_write = s.options_.max_write;
    out.time_gran = 1;
    out.max_pages = static_cast<uint16_t>(std::min<uint32_t>(s.options_.max_write / 4096, 256));
    s.initialized_ = true;
    if (out.minor < 23) {
      if (!w.write(&out, FUSE_COMPAT_22_INIT_OUT_SIZE)) co_return Error{-ERANGE};
      co_return Result<void>{};
    }
    co_return reply(out);
  }
  Task<Result<void>> op(const Destroy&) { co_return Result<void>{}; }
  Task<Result<void>> op(const Unknown&) { co_return Error{-ENOSYS}; }
  Task<Result<void>> op(const Interrupt&) { co_return Result<void>{}; }  // no reply; see handle()

  // ---- names

  Task<Result<void>> op(const Lookup& a) {
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    auto e = co_await vfs.lookup(ring, *dir, a.name);
    if (!e && e.error() == -ENOENT && vfs.config().cache == CachePolicy::kAlways) {
      // A negative entry the client may cache: the store does not change.
      fuse_entry_out neg{};
      neg.entry_valid = kAlwaysTimeout;
      co_return reply(neg);
    }
    co_return co_await reply_entry_of(std::move(e));
  }
  Task<Result<void>> op(const Forget& a) {
    s.forget(h.nodeid, a.in.nlookup);
    co_return Result<void>{};
  }
  Task<Result<void>> op(const BatchForget& a) {
    for (uint32_t i = 0; i < a.count; i++) {
      fuse_forget_one f;
      std::memcpy(&f, a.entries.data() + i * sizeof f, sizeof f);
      s.forget(f.nodeid, f.nlookup);
    }
    co_return Result<void>{};
  }
  Task<Result<void>> op(const Getattr&) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    auto st = co_await vfs.getattr(ring, **n);
    if (!st) co_return Error{st.error()};
    fuse_attr_out out{};
    out.attr_valid = s.attr_timeout_;
    out.attr = s.attr_of(**n, *st);
    co_return reply(out);
  }
  Task<Result<void>> op(const Setattr& a) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    const fuse_setattr_in& in = a.in;
    static_assert(FATTR_MODE == SetAttr::kMode && FATTR_UID == SetAttr::kUid && FATTR_GID == SetAttr::kGid &&
                  FATTR_SIZE == SetAttr::kSize && FATTR_ATIME == SetAttr::kAtime && FATTR_MTIME == SetAttr::kMtime);
    uint32_t valid = in.valid & SetAttr::kWireBits;
    if (in.valid & FATTR_ATIME_NOW) valid |= SetAttr::kAtimeNow;
    if (in.valid & FATTR_MTIME_NOW) valid |= SetAttr::kMtimeNow;
    if (in.valid & FATTR_CTIME) valid |= SetAttr::kCtime;
    if (s.writeback_) valid |= SetAttr::kTimesMayBeNow;  // the client keeps c/mtime and sends "now" as a value
    SetAttr sa{.valid = valid, .mode = in.mode, .uid = in.uid, .gid = in.gid, .size = in.size,
               .atime = {static_cast<time_t>(in.atime), static_cast<long>(in.atimensec)},
               .mtime = {static_cast<time_t>(in.mtime), static_cast<long>(in.mtimensec)}};
    std::shared_ptr<Handle> hd = (in.valid & FATTR_FH) ? s.handle_of(in.fh) : nullptr;
    if (auto r = vfs.setattr(**n, sa, hd && !hd->dir ? &hd->file : nullptr); !r) co_return Error{r.error()};
    if (in.valid & FATTR_KILL_SUIDGID) {
      if (auto r = vfs.drop_setid(**n); !r) co_return Error{r.error()};
    }
    co_return co_await op(Getattr{});
  }
  Task<Result<void>> op(const Readlink&) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    auto t = vfs.readlink(**n);
    if (!t) co_return Error{t.error()};
    if (!w.write(t->data(), t->size())) co_return Error{-ERANGE};
    co_return Result<void>{};
  }
  // The label a creation carries (FUSE_SECURITY_CTX, where agreed): its
  // copy, or none; EINVAL for a malformed one.
  Result<std::optional<Label>> label_of(Bytes extra) const {
    if (!s.labels_) return std::optional<Label>{};
    auto sc = security_context(extra);
    if (!sc) return Error{-EINVAL};
    if (!*sc) return std::optional<Label>{};
    const auto& [name, value] = **sc;
    return std::optional<Label>{Label{std::string(name), std::string(reinterpret_cast<const char*>(value.data()), value.size())}};
  }
  static const Label* ptr(const std::optional<Label>& l) { return l ? &*l : nullptr; }

  Task<Result<void>> op(const Symlink& a) {
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    auto label = label_of(a.extra);
    if (!label) co_return Error{label.error()};
    co_return co_await reply_entry_of(co_await vfs.symlink(ring, *dir, a.name, a.target, ptr(*label)));
  }
  Task<Result<void>> op(const Mknod& a) {
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    auto label = label_of(a.extra);
    if (!label) co_return Error{label.error()};
    co_return co_await reply_entry_of(
        co_await vfs.mknod(ring, *dir, a.name, mode_of(**dir, a.in.mode, a.in.umask), a.in.rdev, ptr(*label)));
  }
  Task<Result<void>> op(const Mkdir& a) {
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    auto label = label_of(a.extra);
    if (!label) co_return Error{label.error()};
    co_return co_await reply_entry_of(
        co_await vfs.mkdir(ring, *dir, a.name, mode_of(**dir, a.in.mode, a.in.umask), ptr(*label)));
  }
  Task<Result<void>> op(const Unlink& a) {
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    co_return co_await vfs.unlink(ring, *dir, a.name, 0);
  }
  Task<Result<void>> op(const Rmdir& a) {
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    co_return co_await vfs.unlink(ring, *dir, a.name, AT_REMOVEDIR);
  }
  Task<Result<void>> move_entry(uint64_t newdir, std::string_view oldname, std::string_view newname, unsigned flags) {
    auto from = node();
    if (!from) co_return Error{from.error()};
    auto to = s.node(newdir);
    if (!to) co_return Error{to.error()};
    co_return co_await vfs.rename(ring, *from, oldname, *to, newname, flags);
  }
  Task<Result<void>> op(const Rename& a) { return move_entry(a.in.newdir, a.oldname, a.newname, 0); }
  Task<Result<void>> op(const Rename2& a) { return move_entry(a.in.newdir, a.oldname, a.newname, a.in.flags); }
  Task<Result<void>> op(const Link& a) {
    auto target = s.node(a.in.oldnodeid);
    if (!target) co_return Error{target.error()};
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    if (auto r = co_await vfs.link(ring, **target, *dir, a.newname); !r) co_return Error{r.error()};
    co_return co_await reply_entry_of(co_await vfs.lookup(ring, *dir, a.newname));
  }

  // ---- files

  // With the writeback cache the client writes whole pages, so it reads
  // pages of files opened write-only, and it places appends itself: a
  // write-only open is made read-write where the caller may read (else it
  // stays write-only, and only partial pages can fail), and O_APPEND is
  // dropped so that writes land at the offsets the client gives.
  int writeback_flags(int flags, bool read_too) const {
    if (!s.writeback_) return flags;
    flags &= ~O_APPEND;
    if (read_too && (flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
    return flags;
  }

  Task<Result<void>> open_handle(uint32_t flags, bool dir, bool drop_setid = false) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    if (dir && !(*n)->is_dir()) co_return Error{-ENOTDIR};
    int want = dir ? (O_RDONLY | O_DIRECTORY) : writeback_flags(static_cast<int>(flags), true);
    auto f = co_await vfs.open(ring, **n, want);
    if (!f && f.error() == -EACCES && want != writeback_flags(static_cast<int>(flags), false))
      f = co_await vfs.open(ring, **n, writeback_flags(static_cast<int>(flags), false));
    if (!f) co_return Error{f.error()};
    if (drop_setid && (flags & O_TRUNC)) {
      if (auto r = vfs.drop_setid(**n); !r) co_return Error{r.error()};
    }
    auto hd = std::make_shared<Handle>();
    hd->file = std::move(*f);
    hd->dir = dir;
    fuse_open_out out{};
    out.fh = s.add_handle(std::move(hd));
    out.open_flags = open_flags(dir);
    co_return reply(out);
  }
  Task<Result<void>> op(const Open& a) {
    return open_handle(a.in.flags, false, (a.in.open_flags & FUSE_OPEN_KILL_SUIDGID) != 0);
  }
  Task<Result<void>> op(const Opendir&) { return open_handle(0, true); }
  Task<Result<void>> op(const Create& a) {
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    // The creator of a new file may read it whatever its mode; an existing
    // one (a race with the host) may refuse that.
    int flags = static_cast<int>(a.in.flags);
    mode_t mode = mode_of(**dir, a.in.mode, a.in.umask);
    auto label = label_of(a.extra);
    if (!label) co_return Error{label.error()};
    auto c = co_await vfs.create(ring, *dir, a.name, writeback_flags(flags, true), mode, ptr(*label));
    if (!c && c.error() == -EACCES && writeback_flags(flags, true) != writeback_flags(flags, false))
      c = co_await vfs.create(ring, *dir, a.name, writeback_flags(flags, false), mode, ptr(*label));
    if (!c) co_return Error{c.error()};
    auto hd = std::make_shared<Handle>();
    hd->file = std::move(c->file);
    fuse_open_out open_out{};
    open_out.open_flags = open_flags(false);
    fuse_entry_out entry = s.entry_of(c->entry.node, c->entry.st);
    open_out.fh = s.add_handle(std::move(hd));
    if (auto r = reply(entry); !r) co_return r;
    co_return reply(open_out);
  }
  Task<Result<void>> op(const Read& a) {
    auto hd = s.handle_of(a.in.fh);
    if (!hd || hd->dir) co_return Error{-EBADF};
    size_t n = std::min<size_t>(a.in.size, w.room());
    std::array<iovec, kMaxIovecs> iov;
    size_t cnt = w.next_iovecs(n, iov);
    // Straight into the reply buffers (guest memory for virtiofs).
    auto r = co_await vfs.read(ring, hd->file, {iov.data(), cnt}, a.in.offset);
    if (!r) co_return Error{r.error()};
    w.skip(*r);
    co_return Result<void>{};
  }
  Task<Result<void>> op(const Write& a) {
    auto hd = s.handle_of(a.in.fh);
    if (!hd || hd->dir) co_return Error{-EBADF};
    if (a.in.size > s.options_.max_write) co_return Error{-EINVAL};
    // Part of the payload (or none) is in the request's bytes; the rest is
    // still in the transport's buffers (guest memory).
    std::array<iovec, kMaxIovecs> iov;
    size_t cnt = 0;
    if (!a.data.empty()) iov[cnt++] = iovec{const_cast<std::byte*>(a.data.data()), a.data.size()};
    for (const auto& v : payload) {
      if (cnt == iov.size()) co_return Error{-EINVAL};
      iov[cnt++] = v;
    }
    auto r = co_await vfs.write(ring, hd->file, {iov.data(), cnt}, a.in.offset,
                                (a.in.write_flags & FUSE_WRITE_KILL_SUIDGID) != 0);
    if (!r) co_return Error{r.error()};
    fuse_write_out out{};
    out.size = static_cast<uint32_t>(*r);
    co_return reply(out);
  }
  Task<Result<void>> op(const Release& a) {
    s.take_handle(a.in.fh);
    co_return Result<void>{};
  }
  Task<Result<void>> op(const Releasedir& a) {
    s.take_handle(a.in.fh);
    co_return Result<void>{};
  }
  Task<Result<void>> op(const Flush&) { co_return Result<void>{}; }
  Task<Result<void>> fsync_handle(uint64_t fh, uint32_t flags) {
    auto hd = s.handle_of(fh);
    if (!hd) co_return Error{-EBADF};
    co_return co_await vfs.fsync(ring, hd->file, flags & 1);
  }
  Task<Result<void>> op(const Fsync& a) { return fsync_handle(a.in.fh, a.in.fsync_flags); }
  Task<Result<void>> op(const Fsyncdir& a) { return fsync_handle(a.in.fh, a.in.fsync_flags); }
  Task<Result<void>> op(const Fallocate& a) {
    auto hd = s.handle_of(a.in.fh);
    if (!hd || hd->dir) co_return Error{-EBADF};
    co_return co_await vfs.fallocate(ring, hd->file, static_cast<int>(a.in.mode), a.in.offset, a.in.length);
  }
  Task<Result<void>> op(const Lseek& a) {
    auto hd = s.handle_of(a.in.fh);
    if (!hd) co_return Error{-EBADF};
    auto r = vfs.lseek(hd->file, a.in.offset, static_cast<int>(a.in.whence));
    if (!r) co_return Error{r.error()};
    fuse_lseek_out out{};
    out.offset = *r;
    co_return reply(out);
  }
  Task<Result<void>> op(const CopyFileRange& a) {
    auto in = s.handle_of(a.in.fh_in);
    auto out_h = s.handle_of(a.in.fh_out);
    if (!in || !out_h || in->dir || out_h->dir) co_return Error{-EBADF};
    // The reply's size is 32 bits: copy at most that much; the client
    // asks again for the rest.
    size_t len = std::min<uint64_t>(a.in.len, kMaxCopy);
    auto r = co_await vfs.copy_file_range(ring, in->file, a.in.off_in, out_h->file, a.in.off_out, len);
    if (!r) co_return Error{r.error()};
    fuse_write_out out{};
    out.size = static_cast<uint32_t>(*r);
    co_return reply(out);
  }

  // ---- directories

  Task<Result<void>> list_dir(const fuse_read_in& in, bool plus) {
    auto hd = s.handle_of(in.fh);
    if (!hd || !hd->dir) co_return Error{-EBADF};
    auto dir = node();
    if (!dir) co_return Error{dir.error()};
    size_t size = std::min<size_t>({in.size, w.room(), kMaxReaddirBuffer});
    std::vector<std::byte> packed(size);
    DirentPacker p(packed);
    if (!plus) {
      auto r = co_await vfs.read_dir(ring, hd->file, in.offset, size,
                                     [&](const DirEntry& d) { return p.add(d.ino, d.next, d.type, d.name); });
      if (!r) co_return Error{r.error()};
    } else {
      // Take the entries that fit first, then look each up (which may wait
      // on the ring, so it cannot happen inside the listing's callback).
      struct Pending {
        uint64_t ino, next;
        uint8_t type;
        std::string name;
      };
      std::vector<Pending> entries;
      size_t used = 0;
      auto r = co_await vfs.read_dir(ring, hd->file, in.offset, size, [&](const DirEntry& d) {
        used += DirentPacker::direntplus_size(d.name);
        if (used > size) return false;
        entries.push_back({d.ino, d.next, d.type, std::string(d.name)});
        return true;
      });
      if (!r) co_return Error{r.error()};
      for (const auto& e : entries) p.add_plus(co_await plus_entry(*dir, e.ino, e.name), e.next, e.type, e.name);
    }
    if (!w.write(packed.data(), p.size())) co_return Error{-ERANGE};
    co_return Result<void>{};
  }
  // READDIRPLUS's entry for one name: looked up (counted, like LOOKUP), or
  // only its inode number for "." and "..", which the kernel ignores, and for
  // a name that vanished meanwhile.
  Task<fuse_entry_out> plus_entry(const NodeRef& dir, uint64_t ino, std::string_view name) {
    fuse_entry_out entry{};
    entry.attr.ino = ino;
    if (name == "." || name == "..") co_return entry;
    auto e = co_await vfs.lookup(ring, dir, name);
    if (e) entry = s.entry_of(e->node, e->st);
    co_return entry;
  }
  Task<Result<void>> op(const Readdir& a) { return list_dir(a.in, false); }
  Task<Result<void>> op(const Readdirplus& a) { return list_dir(a.in, true); }

  // ---- xattrs and the rest

  // GETXATTR / LISTXATTR: size 0 asks for the size only; otherwise the value,
  // or ERANGE if it does not fit in `want`.
  template <class Fetch>
  Result<void> xattr_reply(uint32_t want, Fetch fetch) {
    if (want == 0) {
      auto size = fetch(std::span<std::byte>{});
      if (!size) return Error{size.error()};
      fuse_getxattr_out out{};
      out.size = static_cast<uint32_t>(*size);
      return reply(out);
    }
    std::vector<std::byte> buf(std::min<size_t>(want, w.room()));
    auto got = fetch(std::span<std::byte>(buf));
    if (!got) return Error{got.error()};
    if (!w.write(buf.data(), *got)) return Error{-ERANGE};
    return {};
  }
  Task<Result<void>> op(const Getxattr& a) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    std::string name(a.name);
    co_return xattr_reply(a.in.size, [&](std::span<std::byte> b) { return vfs.getxattr(**n, name, b); });
  }
  Task<Result<void>> op(const Listxattr& a) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    co_return xattr_reply(a.in.size, [&](std::span<std::byte> b) { return vfs.listxattr(**n, b); });
  }
  Task<Result<void>> op(const Setxattr& a) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    co_return vfs.setxattr(**n, std::string(a.name), a.value, static_cast<int>(a.in.flags));
  }
  Task<Result<void>> op(const Removexattr& a) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    co_return vfs.removexattr(**n, std::string(a.name));
  }
  Task<Result<void>> op(const Statfs&) {
    auto st = vfs.statfs(*vfs.root());
    if (!st) co_return Error{st.error()};
    fuse_statfs_out out{};
    out.st.blocks = st->f_blocks;
    out.st.bfree = st->f_bfree;
    out.st.bavail = st->f_bavail;
    out.st.files = st->f_files;
    out.st.ffree = st->f_ffree;
    out.st.bsize = static_cast<uint32_t>(st->f_bsize);
    out.st.namelen = static_cast<uint32_t>(st->f_namelen);
    out.st.frsize = static_cast<uint32_t>(st->f_frsize);
    co_return reply(out);
  }
  Task<Result<void>> op(const Access& a) {
    auto n = node();
    if (!n) co_return Error{n.error()};
    co_return vfs.access(**n, static_cast<int>(a.in.mask));
  }
  Task<Result<void>> op(const Syncfs&) { co_return co_await vfs.syncfs(ring); }
};

Server::Server(Vfs& vfs, ServerOptions options) : vfs_(vfs), options_(options) {
  switch (vfs.config().cache) {
    case CachePolicy::kNever: entry_timeout_ = attr_timeout_ = 0; break;
    case CachePolicy::kAuto: entry_timeout_ = attr_timeout_ = kAutoTimeout; break;
    case CachePolicy::kAlways: entry_timeout_ = attr_timeout_ = kAlwaysTimeout; break;
  }
}

Server::~Server() = default;

MessageServerFactory server_factory(Vfs& vfs, ServerOptions options, bool shared) {
  if (shared) {
    auto server = std::make_shared<Server>(vfs, options);
    return [server](Ring&) -> std::shared_ptr<MessageServer> { return server; };
  }
  return [&vfs, options](Ring&) -> std::shared_ptr<MessageServer> { return std::make_shared<Server>(vfs, options); };
}

size_t Server::node_count() const {
  std::lock_guard g(mu_);
  return inodes_.size();
}
size_t Server::handle_count() const {
  std::lock_guard g(mu_);
  return handles_.size();
}

uint64_t Server::remember(const NodeRef& node) {
  if (node->is_root()) return FUSE_ROOT_ID;
  std::lock_guard g(mu_);
  if (auto it = ids_.find(node.get()); it != ids_.end()) {
    inodes_[it->second].nlookup++;
    return it->second;
  }
  uint64_t id = next_id_++;
  inodes_.emplace(id, Inode{node, 1});
  ids_.emplace(node.get(), id);
  return id;
}

void Server::forget(uint64_t nodeid, uint64_t n) {
  NodeRef dropped;  // released after the lock
  std::lock_guard g(mu_);
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end()) return;
  it->second.nlookup -= std::min(n, it->second.nlookup);
  if (it->second.nlookup == 0) {
    dropped = std::move(it->second.node);
    ids_.erase(dropped.get());
    inodes_.erase(it);
  }
}

Result<NodeRef> Server::node(uint64_t nodeid) {
  if (nodeid == FUSE_ROOT_ID) return vfs_.root();
  std::lock_guard g(mu_);
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end()) return Error{-ESTALE};
  return it->second.node;
}

uint64_t Server::add_handle(std::shared_ptr<Handle> h) {
  std::lock_guard g(mu_);
  uint64_t fh = next_fh_++;
  handles_.emplace(fh, std::move(h));
  return fh;
}

std::shared_ptr<Server::Handle> Server::handle_of(uint64_t fh) {
  std::lock_guard g(mu_);
  auto it = handles_.find(fh);
  return it == handles_.end() ? nullptr : it->second;
}

std::shared_ptr<Server::Handle> Server::take_handle(uint64_t fh) {
  std::lock_guard g(mu_);
  auto it = handles_.find(fh);
  if (it == handles_.end()) return nullptr;
  auto h = std::move(it->second);
  handles_.erase(it);
  return h;
}

fuse_attr Server::attr_of(const Node& n, const struct statx& st) {
  fuse_attr a{};
  a.ino = vfs_.unique_ino(n.dev, n.ino);
  a.size = st.stx_size;
  a.blocks = st.stx_blocks;
  a.atime = static_cast<uint64_t>(st.stx_atime.tv_sec);
  a.atimensec = st.stx_atime.tv_nsec;
  a.mtime = static_cast<uint64_t>(st.stx_mtime.tv_sec);
  a.mtimensec = st.stx_mtime.tv_nsec;
  a.ctime = static_cast<uint64_t>(st.stx_ctime.tv_sec);
  a.ctimensec = st.stx_ctime.tv_nsec;
  a.mode = st.stx_mode;
  a.nlink = st.stx_nlink;
  a.uid = st.stx_uid;
  a.gid = st.stx_gid;
  a.rdev = static_cast<uint32_t>(Vfs::rdev_of(st));
  a.blksize = st.stx_blksize;
  return a;
}

fuse_entry_out Server::entry_of(const NodeRef& n, const struct statx& st) {
  fuse_entry_out e{};
  e.nodeid = remember(n);
  e.entry_valid = entry_timeout_;
  e.attr_valid = attr_timeout_;
  e.attr = attr_of(*n, st);
  // A directory the host has something mounted on: the guest gives it its
  // own mount (and device number) when it agreed to submounts.
  if (submounts_ && S_ISDIR(st.stx_mode) && (st.stx_attributes & STATX_ATTR_MOUNT_ROOT) && n.get() != vfs_.root().get())
    e.attr.flags |= FUSE_ATTR_SUBMOUNT;
  return e;
}

Task<Result<size_t>> Server::handle(Ring& ring, const RequestBytes& in, std::span<const iovec> out) {
  size_t total = in.size();
  if (total < sizeof(fuse_in_header) || total > options_.max_write + kMaxRequestHead) co_return Error{-EBADMSG};
  // What is decoded is in fsd's memory: in place when the transport read it
  // there (/dev/fuse), else copied out of guest memory once, header first
  // (it says whether this is a WRITE), then the rest after it. A WRITE's
  // payload stays where it is and goes to the file from there unread.
  RequestCopy copy;
  std::vector<iovec> payload;
  Bytes bytes;
  if (auto mine = in.private_view()) {
    bytes = *mine;
  } else {
    copy.resize(sizeof(fuse_in_header));
    in.copy_to(0, {copy.data(), copy.size()});
    uint32_t opcode;
    std::memcpy(&opcode, copy.data() + offsetof(fuse_in_header, opcode), sizeof opcode);
    size_t head = total;
    if (opcode == FUSE_WRITE && total > kWriteHead) {
      head = kWriteHead;
      in.payload(kWriteHead, payload);
    }
    copy.resize(head);
    in.copy_to(sizeof(fuse_in_header), {copy.data() + sizeof(fuse_in_header), head - sizeof(fuse_in_header)});
    bytes = {copy.data(), copy.size()};
  }
  auto req = decode(bytes, total);
  if (!req) co_return Error{-EBADMSG};
  const fuse_in_header& h = req->header;
  bool no_reply = std::holds_alternative<Forget>(req->args) || std::holds_alternative<BatchForget>(req->args) ||
                  std::holds_alternative<Interrupt>(req->args);
  ScatterWriter w(out);
  if (!no_reply && !w.write(fuse_out_header{})) co_return Error{-EBADMSG};  // no room even for a header
  Context ctx(*this, ring, h, w, payload);
  // A guest's supplementary groups are unknown (as with virtiofsd); on the
  // host, the caller's process has them.
  auto who = vfs_.caller(h.uid, h.gid, options_.virtiofs ? 0 : static_cast<pid_t>(h.pid));
  ring.act_as(who ? who->get() : nullptr);
  Result<void> r;
  if (!initialized_ && !std::holds_alternative<Init>(req->args)) {
    r = Error{-EIO};
  } else if (!who && !no_reply && !std::holds_alternative<Init>(req->args) && !std::holds_alternative<Destroy>(req->args)) {
    r = Error{who.error()};  // a forbidden id (forgets are still done, as fsd)
  } else {
    r = co_await std::visit([&](const auto& a) { return ctx.op(a); }, req->args);
  }
  if (no_reply) co_return size_t{0};
  if (!r) {
    w = ScatterWriter(out);
    w.write(fuse_out_header{});
  }
  fuse_out_header oh{};
  oh.len = static_cast<uint32_t>(w.written());
  oh.error = r.error();
  oh.unique = h.unique;
  w.write_at(0, &oh, sizeof oh);
  co_return w.written();
}

}  // namespace fsd::fuse
