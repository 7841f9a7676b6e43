#include "fsd/plan.h"

#include <unistd.h>

#include <algorithm>
#include <optional>
#include <stdexcept>

#include "fsd/vfs/xattr_map.h"

namespace fsd {

using cli::Options;

Self Self::current() { return {.uid = ::geteuid(), .gid = ::getegid()}; }

namespace {

// Splits "TAG=VALUE" for --fuse-mount and --virtiofs-socket.
std::pair<std::string, std::string> tag_value(const std::string& flag, const std::string& s, const std::vector<ExportConfig>& configs) {
  auto eq = s.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == s.size())
    throw std::invalid_argument(flag + " '" + s + "': expected TAG=" + (flag == "--fuse-mount" ? "MOUNTPOINT" : "PATH"));
  std::string tag = s.substr(0, eq);
  if (std::none_of(configs.begin(), configs.end(), [&](const auto& c) { return c.tag == tag; }))
    throw std::invalid_argument(flag + " '" + s + "': no --export has tag '" + tag + "'");
  return {tag, s.substr(eq + 1)};
}

// Sanitizer runtimes make calls of their own (LeakSanitizer traces the
// process at exit): their builds install no seccomp filter by default.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// The exports, each with the virtiofsd-style flags that hold for all of them.
void plan_exports(const Options& o, Plan& p) {
  for (const auto& e : o.exports) p.exports.push_back(parse_export(e));
  // The virtiofsd-style flags hold for every export, after the export's own rules.
  std::optional<XattrMap> xattrs;
  if (o.xattrmap) {
    try {
      xattrs = XattrMap::parse(*o.xattrmap);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("--xattrmap ") + e.what());
    }
  }
  for (auto& c : p.exports) {
    c.direct_io |= o.direct_io;
    c.readdirplus &= !o.no_readdirplus;
    c.allow_mmap |= o.allow_mmap;
    c.posix_acl |= o.posix_acl;
    c.submounts |= o.submounts;
    c.writeback |= o.writeback;
    c.security_label |= o.security_label;
    auto add = [&](const char* flag, IdMap& m, const std::string& rule) {
      try {
        m.add(rule);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string(flag) + " " + e.what());
      }
    };
    for (const auto& r : o.translate_uid) add("--translate-uid", c.uids, r);
    for (const auto& r : o.translate_gid) add("--translate-gid", c.gids, r);
    if (xattrs) {
      if (c.xattrs)
        throw std::invalid_argument("--xattrmap: export '" + c.tag + "' has its own xattrmap=; give one or the other");
      c.xattrs = xattrs;
    }
    if (c.posix_acl && (!c.uids.rules().empty() || !c.gids.rules().empty()))
      throw std::invalid_argument("--posix-acl: not supported by fsd on export '" + c.tag + "', which translates "
                                  "ids: ACLs hold host ids (give one or the other)");
  }
}

// The sandbox, the ids of its user namespace, its capabilities and seccomp.
void plan_confinement(Options& o, Plan& p, const Self& self) {
  if (!o.uid_map.empty() || !o.gid_map.empty()) {
    const char* flag = !o.uid_map.empty() ? "--uid-map" : "--gid-map";
    if (self.uid == 0)
      throw std::invalid_argument(std::string(flag) + ": only for an fsd started by an ordinary user (it maps ids "
                                  "into the sandbox's user namespace); a root fsd can use --translate-uid/-gid");
    if (o.sandbox == "none")
      throw std::invalid_argument(std::string(flag) + ": maps ids into the sandbox's user namespace; not with --sandbox none");
    if (o.sandbox.empty()) o.sandbox = "namespace";
    for (const auto& m : o.uid_map) p.namespace_ids.uids.push_back(parse_namespace_map("--uid-map", m));
    for (const auto& m : o.gid_map) p.namespace_ids.gids.push_back(parse_namespace_map("--gid-map", m));
    check_namespace_maps("--uid-map", p.namespace_ids.uids);
    check_namespace_maps("--gid-map", p.namespace_ids.gids);
    // Ranges on one side only: newgidmap (or newuidmap) would map fsd's own
    // id alone and forbid setgroups, so fsd could act as others while
    // keeping its own supplementary groups.
    bool uids_beyond = !maps_only(p.namespace_ids.uids, self.uid);
    bool gids_beyond = !maps_only(p.namespace_ids.gids, self.gid);
    if (uids_beyond != gids_beyond)
      throw std::invalid_argument(std::string(uids_beyond ? "--uid-map" : "--gid-map") + " maps ids beyond fsd's own, but " +
                                  (uids_beyond ? "--gid-map" : "--uid-map") + " does not: give ranges for both, so "
                                  "that requests act as uid and gid of their caller");
  }
  if (!o.sandbox.empty()) {
    p.sandbox = parse_sandbox(o.sandbox);
    if (p.sandbox == SandboxMode::kNamespace && !p.fuse_mounts.empty())
      throw std::invalid_argument("--sandbox namespace: a --fuse-mount lives in the host's mount namespace, which "
                                  "the sandbox leaves (and could then not unmount it); use --sandbox none with it");
    if (p.sandbox == SandboxMode::kLandlock && !p.fuse_mounts.empty())
      throw std::invalid_argument("--sandbox landlock: a --fuse-mount is unmounted by fusermount3, which Landlock would "
                                  "forbid; use --sandbox none with it");
  } else if (p.fuse_mounts.empty()) {
    // An ordinary user's fsd: Landlock where the kernel has it (else no
    // more than no_new_privs, as the log says).
    p.sandbox = self.uid == 0 ? SandboxMode::kNamespace : SandboxMode::kLandlock;
  }
  if (o.modcaps) {
    if (p.sandbox != SandboxMode::kNamespace)
      throw std::invalid_argument("--modcaps: fsd drops capabilities in its namespace sandbox; not with --sandbox none "
                                  "(or --fuse-mount)");
    p.capabilities = parse_modcaps(*o.modcaps, p.capabilities);
  }
  if (!o.seccomp.empty()) {
    p.seccomp = parse_seccomp(o.seccomp);
    if (p.seccomp != SeccompAction::kNone && !p.fuse_mounts.empty())
      throw std::invalid_argument("--seccomp " + o.seccomp + ": not with --fuse-mount (libfuse's calls are not on fsd's list); "
                                  "use --seccomp none with it");
  } else if (!kSanitized && (p.sandbox != SandboxMode::kNone || (self.uid != 0 && p.fuse_mounts.empty()))) {
    // In a sandbox, and for an fsd an ordinary user started: --seccomp
    // none keeps it without a filter.
    p.seccomp = SeccompAction::kKill;
  }
}

}  // namespace

Plan make_plan(Options& o, const Self& self) {
  if (o.exports.empty()) throw std::invalid_argument("nothing to export: give --export TAG=PATH (or --shared-dir)");
  Plan p;
  plan_exports(o, p);
  for (size_t i = 0; i < p.exports.size(); i++)
    for (size_t j = 0; j < i; j++)
      if (p.exports[i].tag == p.exports[j].tag)
        throw std::invalid_argument("--export: tag '" + p.exports[i].tag + "' is given twice");
  for (const auto& l : o.listens) p.listens.push_back(parse_listen(l));
  for (const auto& m : o.fuse_mounts) p.fuse_mounts.push_back(tag_value("--fuse-mount", m, p.exports));
  for (const auto& s : o.virtiofs_sockets) p.virtiofs_sockets.push_back(tag_value("--virtiofs-socket", s, p.exports));
  for (const auto& s : o.virtio9p_sockets) p.virtio9p_sockets.push_back(tag_value("--virtio9p-socket", s, p.exports));
  for (const auto& s : o.vsock_sockets) p.vsock_sockets.push_back(vhost::parse_vsock_socket(s));
  if (p.listens.empty() && p.fuse_mounts.empty() && p.virtiofs_sockets.empty() && p.virtio9p_sockets.empty() &&
      p.vsock_sockets.empty() && o.listen_fd < 0)
    throw std::invalid_argument(
        "nothing to serve on: give --listen, --virtiofs-socket, --virtio9p-socket, --vsock-socket or --fuse-mount");
  p.metadata_io = o.metadata_io == "uring"  ? Ring::MetadataIo::kRing
                  : o.metadata_io == "sync" ? Ring::MetadataIo::kInline
                                            : Ring::MetadataIo::kAdaptive;
  if (o.socket_mode) p.socket_access.mode = parse_socket_mode(*o.socket_mode);
  if (o.socket_group) p.socket_access.group = parse_socket_group(*o.socket_group);
  plan_confinement(o, p, self);
  return p;
}

}  // namespace fsd
