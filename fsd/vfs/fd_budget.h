// FileBudget: the fds of the files clients hold open, counted against a
// budget per export. When the budget is spent, the fd of an idle open file
// is closed (a clock over all open files: no operation using it, not used
// since the hand last passed) and the file is opened again, checked to be
// the same inode, when it is next used. Files that hold locks, special
// files (a FIFO opened again is another conversation) and files with no
// name left keep their fds.
//
// Thread-safety: every member may be called from any thread. Lock order:
// files_mu_ before any OpenState::mu (never the other way).
#pragma once

#include <fcntl.h>

#include <atomic>
#include <boost/intrusive/list.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "common/fd.h"
#include "common/result.h"
#include "fsd/vfs/node.h"

namespace fsd {

class FileBudget;
class NodeTable;

// The files one client (a 9P connection) keeps open for its locks. A file
// that holds a lock keeps its fd, outside the budget's reclaiming (closing
// it would drop the lock), so each client may pin only a share of the
// budget (Vfs::set_lock); past it, its next lock is ENOLCK.
class LockAccount {
 public:
  // Takes one kept file, if fewer than `max` are kept.
  bool take(unsigned max) {
    unsigned n = kept_.load(std::memory_order_relaxed);
    while (n < max)
      if (kept_.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
    return false;
  }
  void give_back() { kept_.fetch_sub(1, std::memory_order_relaxed); }
  unsigned kept() const { return kept_.load(std::memory_order_relaxed); }

 private:
  std::atomic<unsigned> kept_{0};
};

namespace detail {
// What an OpenFile holds: its fd, or, while the fd is reclaimed, what it
// takes to open the same file again. Listed by its FileBudget (the reclaim clock).
struct OpenState : boost::intrusive::list_base_hook<> {
  NodeRef node;
  int flags = 0;
  uint64_t dev = 0;         // the file's st_dev, for unique_ino of directory entries
  bool never_wait = false;  // a FIFO, socket or character device (see Vfs::read)

  std::mutex mu;            // guards the fields below
  Fd fd;                    // invalid while reclaimed
  unsigned users = 0;       // operations using fd now
  bool referenced = false;  // used since the clock last passed
  bool keep = false;        // never reclaimed: a special file, or one with no name left
  // The byte ranges its locks cover, [start, end) by start (an OFD's locks
  // merge and split as ranges do, whatever their type): while there are
  // any, the fd is kept, counted in `locker`'s account.
  std::map<uint64_t, uint64_t> locked;
  std::shared_ptr<LockAccount> locker;
  uint32_t fd_gen = 0;      // counts reopens: a reopened fd reads its directory from the start

  // A directory's read position (Vfs::read_dir): the entries its last
  // getdents returned that did not fit the reply, and where they resume.
  // Reading on from there needs no seek, which on ext4 would rebuild the
  // hash tree of a whole directory block every time.
  struct DirCursor {
    std::unique_ptr<std::byte[]> buf;  // kDirBuffer bytes while a listing is under way (not after
                                       // its end, nor while the fd is reclaimed)
    size_t pos = 0, len = 0;           // the entries not yet returned: buf[pos, len)
    uint64_t offset = 0;               // the offset a reader passes to resume at buf[pos]
    uint32_t gen = 0;                  // fd_gen of the fd it belongs to
    bool valid = false;                // the fd's position is right after buf[len)
  };
  std::mutex dir_mu;  // guards dir, and the directory fd's position; held while it is read
  DirCursor dir;
};
}  // namespace detail

// A file opened for I/O. Its fd counts against its FileBudget; when that
// budget runs out, the budget closes the fd of an idle open file (one no
// operation is using, least recently used first) and opens it again when it
// is next used: the same inode (checked), with the same flags less O_TRUNC.
// Files that hold locks, special files, and files with no name left keep
// their fds. Only the Vfs touches the fd: servers pass the OpenFile
// back for every operation on it.
class OpenFile {
 public:
  OpenFile() = default;
  OpenFile(OpenFile&& o) noexcept : budget_(std::exchange(o.budget_, nullptr)), s_(std::move(o.s_)) {}
  OpenFile& operator=(OpenFile&& o) noexcept;
  ~OpenFile();
  int flags() const { return s_ ? s_->flags : 0; }
  bool valid() const { return s_ != nullptr; }
  bool readable() const { return (flags() & O_ACCMODE) != O_WRONLY; }
  bool writable() const { return (flags() & O_ACCMODE) != O_RDONLY; }

 private:
  friend class FileBudget;
  OpenFile(FileBudget* budget, std::unique_ptr<detail::OpenState> s) : budget_(budget), s_(std::move(s)) {}

  FileBudget* budget_ = nullptr;
  std::unique_ptr<detail::OpenState> s_;
};

class FileBudget {
 public:
  // Open files of nodes of `nodes`, at most `budget` fds at once.
  FileBudget(NodeTable& nodes, unsigned budget) : nodes_(nodes), budget_(budget) {}
  FileBudget(const FileBudget&) = delete;
  FileBudget& operator=(const FileBudget&) = delete;

  unsigned budget() const { return budget_; }
  // Fds held by open files now, and the counts of reclaims and reopens.
  unsigned open() const { return open_.load(std::memory_order_relaxed); }
  uint64_t reclaimed() const { return reclaimed_.load(std::memory_order_relaxed); }
  uint64_t reopened() const { return reopened_.load(std::memory_order_relaxed); }

  // Takes one fd from the budget, reclaiming an idle file's if it is spent;
  // EMFILE if nothing can be reclaimed. The fd then opened becomes an
  // OpenFile (adopt), or is given back (unreserve) if the open failed.
  Result<void> reserve();
  void unreserve() { open_.fetch_sub(1, std::memory_order_relaxed); }
  // A file of `node` opened (on a reserved fd) with `flags`; `dev` is its
  // st_dev; `never_wait`: a FIFO, socket or character device (kept).
  OpenFile adopt(Fd fd, NodeRef node, int flags, uint64_t dev, bool never_wait);

  // An open file's fd, pinned (never reclaimed) while this lives.
  class Use {
   public:
    explicit Use(detail::OpenState* s) : s_(s) {}
    Use(Use&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    Use& operator=(Use&&) = delete;
    ~Use();
    int fd() const { return s_->fd.get(); }
    detail::OpenState& state() const { return *s_; }

   private:
    detail::OpenState* s_;
  };
  // Pins the file's fd, opening the file again if its fd was reclaimed
  // (EBADF for an invalid OpenFile; ESTALE when its inode is gone).
  Result<Use> use(const OpenFile& f);

  // Before fsd removes `name` in `dirfd` (unlink, rename over it): if it is
  // a node with open files, they keep their fds from now on, and reclaimed
  // ones are opened again while the name still exists.
  void keep_files_of(int dirfd, const char* name);

 private:
  friend class OpenFile;
  void close(std::unique_ptr<detail::OpenState> s);
  // Closes the fd of one idle open file; false if there is none.
  bool reclaim_one();
  Result<void> reopen(detail::OpenState& s);

  NodeTable& nodes_;
  const unsigned budget_;
  std::atomic<unsigned> open_{0};  // fds held by open files
  std::mutex files_mu_;
  boost::intrusive::list<detail::OpenState> files_;  // every open file; the clock hand is at the front
  std::atomic<uint64_t> reclaimed_{0}, reopened_{0};
  std::atomic<uint64_t> reclaims_started_{0};
};

}  // namespace fsd
