// Credentials: who a request acts as on the host (fsuid, fsgid and
// supplementary groups), so that the host kernel makes every permission
// check and new files are created owned by their caller.
//
// A thread acts as one identity at a time. Switching is per thread (raw
// setfsuid/setfsgid/setgroups system calls, not the glibc wrappers, which
// change every thread of the process), and costs nothing when the thread
// already acts as the identity asked for. io_uring requests carry the
// identity as a registered personality (Ring::act_as), since the ring may
// run them later on its own workers.
//
// Identities are interned: equal (uid, gid, groups) share one object, with
// a process-wide id that is never reused. An identity lives while a
// Credentials::Ref holds it.
//
// A new thread starts with the identity its creator acts as at that moment,
// while applied() there says fsd itself: create threads as fsd (AsSelf).
//
// Switching needs CAP_SETUID and CAP_SETGID. Without them (fsd started by
// an ordinary user) every request acts as fsd itself: switching() is false
// and apply() does nothing. In a user namespace (an unprivileged fsd's
// sandbox) a thread can act only as ids the namespace maps: callers check
// mapped() and refuse the others.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <boost/intrusive_ptr.hpp>
#include <cstdint>
#include <span>
#include <vector>

namespace fsd {

class Credentials {
 public:
  using Ref = boost::intrusive_ptr<const Credentials>;
  // At most this many supplementary groups (Linux's NGROUPS_MAX is 65536;
  // more than this many in a request's identity is cut here).
  static constexpr size_t kMaxGroups = 64;

  // The interned identity (uid, gid, groups); groups are sorted and
  // deduplicated, and cut to kMaxGroups.
  static Ref get(uid_t uid, gid_t gid, std::span<const gid_t> groups = {});
  // fsd's own identity, as the process started (its euid, egid, groups).
  static const Ref& self();
  // Whether fsd may act as others: it holds CAP_SETUID and CAP_SETGID, and
  // its user namespace maps more than its own uid and lets it set groups.
  static bool switching();
  // Reads fsd's identity, switching() and the ids its user namespace maps
  // again, once it has entered its sandbox (while it has one thread).
  static void reread();
  // A user of the host's user database: its primary group and the groups it
  // is a member of; a uid the database does not know gets the group
  // nogroup (65534) and no others.
  static Ref of_user(uid_t uid);
  // Reads the host's user database (users, their groups) into memory, for
  // of_user() inside a sandbox that no longer sees /etc or NSS.
  static void snapshot_user_database();
  // The supplementary groups of a running process (from /proc), or none if
  // it has gone.
  static std::vector<gid_t> groups_of_process(pid_t pid);
  // For tests: identities alive now.
  static size_t interned();

  uid_t uid() const { return uid_; }
  gid_t gid() const { return gid_; }
  std::span<const gid_t> groups() const { return groups_; }
  uint64_t id() const { return id_; }
  bool is_self() const { return this == self().get(); }
  // Whether fsd's user namespace maps the uid and the gid, so that a thread
  // can act as this identity (outside a user namespace, always). Groups it
  // does not map are left out when the identity is interned.
  bool mapped() const { return mapped_; }
  // gid is the primary group or a supplementary one.
  bool in_group(gid_t gid) const;

  // Makes the calling thread act as `c` (nullptr: as fsd itself). Aborts
  // if the kernel refuses: a request must never run as someone else.
  static void apply(const Credentials* c);
  // What the calling thread acts as now (nullptr: fsd itself).
  static const Credentials* applied();

  // Acts as fsd itself for the scope (housekeeping a request triggers, such
  // as reopening a cached fd by file handle), then as before.
  class AsSelf {
   public:
    AsSelf();
    ~AsSelf();
    AsSelf(const AsSelf&) = delete;
    AsSelf& operator=(const AsSelf&) = delete;

   private:
    Ref before_;
  };

  Credentials(const Credentials&) = delete;
  Credentials& operator=(const Credentials&) = delete;

 private:
  Credentials(uid_t uid, gid_t gid, std::vector<gid_t> groups, uint64_t id, bool mapped)
      : uid_(uid), gid_(gid), groups_(std::move(groups)), id_(id), mapped_(mapped) {}
  friend void intrusive_ptr_add_ref(const Credentials* c) { c->refs_.fetch_add(1, std::memory_order_relaxed); }
  friend void intrusive_ptr_release(const Credentials* c);

  uid_t uid_;
  gid_t gid_;
  std::vector<gid_t> groups_;
  uint64_t id_;
  bool mapped_;
  mutable std::atomic<uint32_t> refs_{0};
};

}  // namespace fsd
