// Node: one file or directory of an export, identified by (dev, ino).
//
// A Node lives while a NodeRef to it exists (client fids, FUSE lookups,
// children naming it as parent). It does not own an fd: an O_PATH fd for it
// is kept in its NodeTable's bounded cache and re-opened on demand, from a
// file handle when the filesystem supports them, otherwise by re-resolving
// (parent, name) and checking (dev, ino).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <boost/intrusive/list.hpp>
#include <boost/intrusive/set.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace fsd {

class NodeTable;
class Node;

// A counted reference to a Node (like boost::intrusive_ptr).
class NodeRef {
 public:
  NodeRef() = default;
  explicit NodeRef(Node* n);  // takes a new reference
  NodeRef(const NodeRef& o) : NodeRef(o.n_) {}
  NodeRef(NodeRef&& o) noexcept : n_(std::exchange(o.n_, nullptr)) {}
  NodeRef& operator=(NodeRef o) noexcept {
    std::swap(n_, o.n_);
    return *this;
  }
  ~NodeRef() { reset(); }
  void reset();

  Node* get() const { return n_; }
  Node* operator->() const { return n_; }
  Node& operator*() const { return *n_; }
  explicit operator bool() const { return n_ != nullptr; }
  friend bool operator==(const NodeRef& a, const NodeRef& b) { return a.n_ == b.n_; }

 private:
  Node* n_ = nullptr;
};

using NodeSetHook = boost::intrusive::set_base_hook<boost::intrusive::tag<struct NodeSetTag>>;
using NodeLruHook = boost::intrusive::list_base_hook<
    boost::intrusive::tag<struct NodeLruTag>, boost::intrusive::link_mode<boost::intrusive::auto_unlink>>;

class Node : public NodeSetHook, public NodeLruHook {
 public:
  Node(NodeTable& table, uint64_t dev, uint64_t ino, mode_t type) : table(table), dev(dev), ino(ino), type(type) {}
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  NodeTable& table;
  const uint64_t dev;
  const uint64_t ino;
  const mode_t type;  // S_IFMT bits; a (dev, ino) pair never changes type

  bool is_dir() const { return (type & S_IFMT) == S_IFDIR; }
  bool is_symlink() const { return (type & S_IFMT) == S_IFLNK; }
  bool is_root() const;

  struct Key {
    uint64_t dev, ino;
    friend auto operator<=>(const Key&, const Key&) = default;
  };
  Key key() const { return {dev, ino}; }

 private:
  friend class NodeTable;
  friend class NodeRef;
  friend class FileBudget;  // keep_open_

  // Guarded by NodeTable::table_mu_ (decrements) / atomic (increments by a holder).
  std::atomic<uint32_t> refs_{0};
  // Guarded by NodeTable::table_mu_: where this node was last seen, for ".." and
  // re-resolution. The root has no parent.
  NodeRef parent_;
  std::string name_;
  // Immutable after creation: the file handle, if the filesystem gave one.
  std::unique_ptr<unsigned char[]> handle_;  // a struct file_handle
  int mount_id_ = -1;
  // Guarded by NodeTable::fd_mu_.
  int path_fd_ = -1;
  uint32_t pins_ = 0;
  // Set before fsd removes a name of this inode: its open files keep their
  // fds from then on, since a file without a name cannot be opened again.
  std::atomic<bool> keep_open_{false};
};

struct NodeKeyOf {
  using type = Node::Key;
  type operator()(const Node& n) const { return n.key(); }
};

}  // namespace fsd
