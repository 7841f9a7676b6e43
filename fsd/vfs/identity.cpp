// Vfs: identity. The ids a client sees and the host's, who a request acts
// as, and the set-id and access rules on a caller's behalf.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>

#include "fsd/vfs/caller_rules.h"
#include "fsd/vfs/vfs.h"

namespace fsd {

using vfs_rules::setid_bits_to_drop;

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


}  // namespace fsd
