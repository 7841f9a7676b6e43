#include "fsd/vfs/node_table.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <stdexcept>

#include "fsd/core/credentials.h"

namespace fsd {
namespace {

struct HandleBuf {
  file_handle fh;
  unsigned char space[MAX_HANDLE_SZ];
};

[[noreturn]] void fail(const std::string& why) { throw std::runtime_error(why); }

}  // namespace

NodeRef::NodeRef(Node* n) : n_(n) {
  if (n_) n_->refs_.fetch_add(1, std::memory_order_relaxed);
}

void NodeRef::reset() {
  if (Node* n = std::exchange(n_, nullptr)) n->table.release(n);
}

bool Node::is_root() const { return table.root().get() == this; }

PathFd& PathFd::operator=(PathFd&& o) noexcept {
  if (this != &o) {
    if (node_) node_->table.unpin(node_);
    node_ = std::exchange(o.node_, nullptr);
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

PathFd::~PathFd() {
  if (node_) node_->table.unpin(node_);
}

std::string PathFd::proc_path() const { return "/proc/self/fd/" + std::to_string(fd_); }

NodeTable::NodeTable(Fd root, Options options, std::string_view name)
    : options_(options), name_(name), root_fd_(std::move(root)) {
  int fd = root_fd_.get();
  struct statx st{};
  if (::statx(fd, "", AT_EMPTY_PATH, kNodeStatxMask, &st) < 0) fail("cannot stat " + name_ + ": " + std::strerror(errno));
  if (!S_ISDIR(st.stx_mode)) fail(name_ + " is not a directory");
  root_dev_ = dev_of(st);

  if (options_.handles != FileHandles::kNever) {
    HandleBuf hb{};
    hb.fh.handle_bytes = MAX_HANDLE_SZ;
    int mount_id = -1;
    std::string why;
    if (::name_to_handle_at(fd, "", &hb.fh, &mount_id, AT_EMPTY_PATH) == 0) {
      Fd mount_fd = mount_fd_of(fd);
      Fd probe(::open_by_handle_at(mount_fd.get(), &hb.fh, O_PATH | O_CLOEXEC));
      int err = errno;
      handles_ok_ = probe.valid();
      if (handles_ok_) mount_fds_.emplace(mount_id, std::move(mount_fd));
      else why = std::string("open_by_handle_at: ") + std::strerror(err) + " (it needs CAP_DAC_READ_SEARCH)";
    } else {
      why = std::string("name_to_handle_at: ") + std::strerror(errno);
    }
    if (!handles_ok_ && options_.handles == FileHandles::kMandatory)
      fail("--inode-file-handles=mandatory, but " + name_ + " cannot be served by file handles: " + why);
  }
  auto* node = new Node(*this, root_dev_, st.stx_ino, S_IFDIR);
  node->path_fd_ = fd;  // owned by root_fd_, never evicted
  node->pins_ = 1;
  table_.insert(*node);
  root_ = NodeRef(node);
}

NodeTable::~NodeTable() { root_.reset(); }

void NodeTable::move_root(Fd dir) {
  struct statx st{};
  if (::statx(dir.get(), "", AT_EMPTY_PATH, kNodeStatxMask, &st) < 0) fail(std::string("statx: ") + std::strerror(errno));
  if (dev_of(st) != root_->dev || st.stx_ino != root_->ino)
    fail(name_ + " is no longer the directory fsd opened at start (replaced while it started?)");
  std::lock_guard t(table_mu_);
  std::lock_guard g(fd_mu_);
  if (table_.size() != 1) fail("its root moved after requests were served");
  if (handles_ok_) {
    // Handles are opened through a mount's fd: the new mount's.
    HandleBuf hb{};
    hb.fh.handle_bytes = MAX_HANDLE_SZ;
    int mount_id = -1;
    Fd mount_fd = mount_fd_of(dir.get());
    if (::name_to_handle_at(dir.get(), "", &hb.fh, &mount_id, AT_EMPTY_PATH) != 0 || !mount_fd)
      fail(std::string("its mount in the sandbox: ") + std::strerror(errno));
    mount_fds_.clear();
    mount_fds_.emplace(mount_id, std::move(mount_fd));
  }
  root_->path_fd_ = dir.get();
  root_fd_ = std::move(dir);
}

// open_by_handle_at takes its mount from an fd, and not from an O_PATH one
// (EBADF): the directory `dir` (an O_PATH fd) opened for reading, as fsd
// itself (the caller of the request that met it may not read it).
Fd NodeTable::mount_fd_of(int dir) {
  Credentials::AsSelf self;
  return Fd(::openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
}

NodeTableStats NodeTable::stats() const {
  NodeTableStats s;
  {
    std::lock_guard g(table_mu_);
    s.nodes = table_.size();
  }
  std::lock_guard g(fd_mu_);
  s.path_fds = path_fds_;
  s.reopen_by_handle = reopen_by_handle_;
  s.reopen_by_name = reopen_by_name_;
  return s;
}

uint64_t NodeTable::unique_ino(uint64_t dev, uint64_t ino) {
  if (dev == root_dev_) return ino;
  std::lock_guard g(dev_mu_);
  auto [it, _] = dev_index_.emplace(dev, dev_index_.size() + 1);
  return (it->second << 48) ^ ino;
}

void NodeTable::release(Node* n) {
  NodeRef parent;  // dropped after the lock: it may release further nodes
  {
    std::lock_guard g(table_mu_);
    if (n->refs_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    if (n->NodeSetHook::is_linked()) table_.erase(table_.iterator_to(*n));
    parent = std::move(n->parent_);
  }
  {
    std::lock_guard g(fd_mu_);
    if (n->path_fd_ >= 0 && n->path_fd_ != root_fd_.get()) {
      ::close(n->path_fd_);
      path_fds_--;
    }
    n->NodeLruHook::unlink();
  }
  delete n;
}

void NodeTable::unpin(Node* n) {
  std::lock_guard g(fd_mu_);
  n->pins_--;
  if (path_fds_ > options_.path_fd_cache) evict_locked();
}

void NodeTable::evict_locked() {
  auto it = lru_.end();
  while (path_fds_ > options_.path_fd_cache && it != lru_.begin()) {
    --it;
    Node& victim = *it;
    if (victim.pins_ != 0) continue;
    it = lru_.erase(it);
    ::close(victim.path_fd_);
    victim.path_fd_ = -1;
    path_fds_--;
  }
}

Result<PathFd> NodeTable::path_fd(Node& n) {
  {
    std::lock_guard g(fd_mu_);
    if (n.path_fd_ >= 0) {
      n.pins_++;
      if (n.NodeLruHook::is_linked()) {
        n.NodeLruHook::unlink();
        lru_.push_front(n);
      }
      return PathFd(&n, n.path_fd_);
    }
  }
  auto fd = reopen(n);
  if (!fd) return Error{fd.error()};
  std::lock_guard g(fd_mu_);
  if (n.path_fd_ < 0) {  // else another thread re-opened it first; ours closes
    n.path_fd_ = fd->release();
    lru_.push_front(n);
    path_fds_++;
  }
  n.pins_++;
  int out = n.path_fd_;
  evict_locked();
  return PathFd(&n, out);
}

std::pair<NodeRef, std::string> NodeTable::location(const Node& n) const {
  std::lock_guard g(table_mu_);
  return {NodeRef(n.parent_.get()), n.name_};
}

NodeRef NodeTable::parent(const Node& n) const {
  std::lock_guard g(table_mu_);  // copy only: dropping a ref here would re-lock
  return NodeRef(n.parent_.get());
}

NodeRef NodeTable::find(Node::Key key) {
  std::lock_guard g(table_mu_);
  auto it = table_.find(key);
  return it == table_.end() ? NodeRef() : NodeRef(&*it);
}

NodeRef NodeTable::seen(Node::Key key, const NodeRef& dir, std::string_view name) {
  NodeRef found, old_parent;  // old_parent is dropped after the lock
  std::lock_guard g(table_mu_);
  if (auto it = table_.find(key); it != table_.end()) {
    found = NodeRef(&*it);
    if (!found->is_root()) {
      old_parent = std::exchange(found->parent_, dir);
      found->name_ = std::string(name);
    }
  }
  return found;
}

Result<Fd> NodeTable::reopen(Node& n) {
  // The node was reached by a client allowed to: reopening it (by handle,
  // which needs CAP_DAC_READ_SEARCH) is fsd's own business.
  Credentials::AsSelf self;
  if (n.handle_ && handles_ok_) {
    int mount_fd = -1;
    {
      std::lock_guard g(fd_mu_);
      if (auto it = mount_fds_.find(n.mount_id_); it != mount_fds_.end()) mount_fd = it->second.get();
      reopen_by_handle_++;
    }
    if (mount_fd >= 0) {
      int fd = ::open_by_handle_at(mount_fd, reinterpret_cast<file_handle*>(n.handle_.get()),
                                   O_PATH | O_CLOEXEC);
      if (fd >= 0) return Fd(fd);
      if (errno == ESTALE || options_.handles == FileHandles::kMandatory) return errno_error();
    }
  }
  if (options_.handles == FileHandles::kMandatory) return Error{-EOPNOTSUPP};  // never by name
  auto [parent, name] = location(n);
  if (!parent) return Error{-ESTALE};
  auto pfd = path_fd(*parent);
  if (!pfd) return Error{pfd.error()};
  {
    std::lock_guard g(fd_mu_);
    reopen_by_name_++;
  }
  int fd = ::openat(pfd->get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return Error{errno == ENOENT ? -ESTALE : -errno};
  Fd owned(fd);
  struct statx st{};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_INO, &st) < 0) return errno_error();
  if (dev_of(st) != n.dev || st.stx_ino != n.ino) return Error{-ESTALE};
  return owned;
}

NodeRef NodeTable::intern(Fd fd, const struct statx& st, const NodeRef& parent, std::string_view name) {
  Node::Key key{dev_of(st), st.stx_ino};
  NodeRef node = parent ? seen(key, parent, name) : find(key);
  if (!node) {
    auto fresh = std::make_unique<Node>(*this, key.dev, key.ino, st.stx_mode & S_IFMT);
    fresh->parent_ = parent;
    fresh->name_ = std::string(name);
    int mount_id = -1;
    HandleBuf hb{};
    hb.fh.handle_bytes = MAX_HANDLE_SZ;
    if (handles_ok_ && ::name_to_handle_at(fd.get(), "", &hb.fh, &mount_id, AT_EMPTY_PATH) == 0) {
      std::lock_guard g(fd_mu_);
      bool known = mount_fds_.contains(mount_id);
      // A mount is first met at its root, a directory, which can be opened
      // for open_by_handle_at's mount fd; a handle on a mount fsd has no fd
      // for is of no use.
      if (!known && S_ISDIR(st.stx_mode))
        if (Fd m = mount_fd_of(fd.get())) known = mount_fds_.emplace(mount_id, std::move(m)).second;
      if (known) {
        size_t size = sizeof(file_handle) + hb.fh.handle_bytes;
        fresh->handle_ = std::make_unique<unsigned char[]>(size);
        std::memcpy(fresh->handle_.get(), &hb, size);
        fresh->mount_id_ = mount_id;
      }
    }
    std::lock_guard g(table_mu_);
    if (auto it = table_.find(key); it != table_.end()) {
      node = NodeRef(&*it);  // lost a race with another thread; use theirs
    } else {
      table_.insert(*fresh);
      node = NodeRef(fresh.release());
    }
  }
  std::lock_guard g(fd_mu_);
  if (node->path_fd_ < 0) {
    node->path_fd_ = fd.release();
    lru_.push_front(*node);
    path_fds_++;
    evict_locked();
  }
  return node;
}

}  // namespace fsd
