// Vfs: file data (through io_uring, into or out of any memory), directory
// listings and record locks.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <map>

#include "fsd/vfs/caller_rules.h"
#include "fsd/vfs/vfs.h"

namespace fsd {

using vfs_rules::privileged_caller;
using vfs_rules::setid_bits_to_drop;

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
  // In a root with a closure, the names it does not show are skipped
  // ("." and ".." are not names of a store path and are shown).
  const bool hidden_here = closure_ && st.node->is_root();
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
        bool skip = hidden_here && e.name != "." && e.name != ".." && !closure_->shows(e.name);
        if (!skip && !emit(e)) return 0;
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
