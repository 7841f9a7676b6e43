#include "fsd/vfs/fd_budget.h"

#include <sys/stat.h>

#include <vector>

#include "fsd/core/credentials.h"
#include "fsd/vfs/node_table.h"

namespace fsd {

OpenFile& OpenFile::operator=(OpenFile&& o) noexcept {
  if (this != &o) {
    if (s_) budget_->close(std::move(s_));
    budget_ = std::exchange(o.budget_, nullptr);
    s_ = std::move(o.s_);
  }
  return *this;
}

OpenFile::~OpenFile() {
  if (s_) budget_->close(std::move(s_));
}

Result<void> FileBudget::reserve() {
  for (int tries = 0;; tries++) {
    if (open_.fetch_add(1, std::memory_order_relaxed) < budget_) return {};
    open_.fetch_sub(1, std::memory_order_relaxed);
    // Others may take what a reclaim frees; a few rounds, then give up.
    if (tries == 4 || !reclaim_one()) return Error{-EMFILE};
  }
}

OpenFile FileBudget::adopt(Fd fd, NodeRef node, int flags, uint64_t dev, bool never_wait) {
  auto s = std::make_unique<detail::OpenState>();
  s->node = std::move(node);
  s->flags = flags;
  s->dev = dev;
  s->never_wait = never_wait;
  s->fd = std::move(fd);
  s->keep = never_wait;  // a FIFO opened again is a different conversation
  std::lock_guard g(files_mu_);
  files_.push_back(*s);
  return OpenFile(this, std::move(s));
}

void FileBudget::close(std::unique_ptr<detail::OpenState> s) {
  {
    std::lock_guard g(files_mu_);
    files_.erase(files_.iterator_to(*s));
  }
  if (s->locker) s->locker->give_back();  // its locks go with its fd
  if (s->fd) unreserve();
  s.reset();  // closes the fd, drops the node
}

// A clock: the hand walks the list from the front, moving each file it
// passes to the back; a file used since the last pass gets another round.
bool FileBudget::reclaim_one() {
  reclaims_started_.fetch_add(1, std::memory_order_seq_cst);  // before any nlink check: see keep_files_of
  Fd victim;
  {
    std::lock_guard g(files_mu_);
    for (size_t left = 2 * files_.size(); left && !victim; left--) {
      auto& s = files_.front();
      files_.pop_front();
      files_.push_back(s);
      std::unique_lock sg(s.mu, std::try_to_lock);
      if (!sg || s.users || !s.fd || s.keep || !s.locked.empty() || s.node->keep_open_.load(std::memory_order_relaxed))
        continue;
      if (std::exchange(s.referenced, false)) continue;
      // A file with no name left cannot be opened again: it keeps its fd.
      struct stat st{};
      if (::fstat(s.fd.get(), &st) == 0 && st.st_nlink == 0) {
        s.keep = true;
        continue;
      }
      victim = std::move(s.fd);
      // Its listing starts afresh when it is reopened: the cursor's
      // buffer goes now, so memory for cursors is bounded by the budget.
      if (std::unique_lock dg(s.dir_mu, std::try_to_lock); dg) s.dir = {};
    }
  }
  if (!victim) return false;
  victim.reset();
  unreserve();
  reclaimed_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

FileBudget::Use::~Use() {
  if (!s_) return;
  std::lock_guard g(s_->mu);
  s_->users--;
}

Result<FileBudget::Use> FileBudget::use(const OpenFile& f) {
  if (!f.s_) return Error{-EBADF};
  detail::OpenState& s = *f.s_;
  {
    std::lock_guard g(s.mu);
    s.users++;
    s.referenced = true;
    if (s.fd) return Use(&s);
  }
  Use pinned(&s);  // pinned while it is opened again (no lock held: that may reclaim others)
  if (auto r = reopen(s); !r) return Error{r.error()};
  return pinned;
}

Result<void> FileBudget::reopen(detail::OpenState& s) {
  if (auto r = reserve(); !r) return r;
  Credentials::AsSelf self;  // the file is open already: its opener had the right
  auto opened = [&]() -> Result<Fd> {
    auto pfd = nodes_.path_fd(*s.node);
    if (!pfd) return Error{pfd.error()};
    int flags = (s.flags & ~(O_TRUNC | O_CREAT | O_EXCL)) | O_CLOEXEC;
    Fd fd(::open(pfd->proc_path().c_str(), flags));
    if (!fd) return errno_error();
    struct statx st{};
    if (::statx(fd.get(), "", AT_EMPTY_PATH, STATX_INO, &st) < 0) return errno_error();
    if (dev_of(st) != s.node->dev || st.stx_ino != s.node->ino) return Error{-ESTALE};
    return fd;
  }();
  if (!opened) {
    unreserve();
    return Error{opened.error()};
  }
  std::lock_guard g(s.mu);
  if (s.fd) {  // another operation opened it first
    unreserve();
    return {};
  }
  s.fd = std::move(*opened);
  s.fd_gen++;
  reopened_.fetch_add(1, std::memory_order_relaxed);
  return {};
}

void FileBudget::keep_files_of(int dirfd, const char* name) {
  // Until the budget first runs out, no fd has been reclaimed, and a reclaim
  // skips files whose last name is gone: nothing to do, and no statx on
  // every unlink. (An unlink racing with the very first reclaim can still
  // lose its file's fd; its next use then answers ESTALE.)
  if (reclaims_started_.load(std::memory_order_seq_cst) == 0) return;
  Credentials::AsSelf self;
  struct statx st{};
  if (::statx(dirfd, name, AT_SYMLINK_NOFOLLOW, STATX_INO | STATX_TYPE, &st) < 0 || S_ISDIR(st.stx_mode)) return;
  NodeRef node = nodes_.find(Node::Key{dev_of(st), st.stx_ino});
  if (!node) return;  // no node: no open files
  node->keep_open_.store(true, std::memory_order_relaxed);
  // Open again every file of it whose fd was reclaimed before that.
  std::vector<Use> closed;
  {
    std::lock_guard g(files_mu_);
    for (auto& s : files_) {
      if (s.node != node) continue;
      std::lock_guard sg(s.mu);
      if (s.fd) continue;
      s.users++;
      closed.emplace_back(&s);
    }
  }
  for (auto& u : closed) (void)reopen(u.state());
}

}  // namespace fsd
