// fsd: serves host directories to virtual machines and other clients.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <thread>

#include "fsd/core/activation.h"
#include "fsd/vfs/export_set.h"
#include "fsd/core/landlock.h"
#include "fsd/core/sandbox.h"
#include "fsd/core/seccomp.h"
#include "common/signals.h"
#include "fsd/core/syslog_sink.h"
#include "fsd/fuse/server.h"
#include "fsd/p9/session.h"
#include "fsd/p9/virtio_channel.h"
#include "fsd/transport/fuse_dev.h"
#include "fsd/transport/socket_server.h"
#include "fsd/vhost/backend.h"
#include "fsd/vhost/vsock_device.h"
#include "fsd/options.h"
#include "fsd/vfs/vfs.h"
#include "fsd/virtiofsd_compat.h"

#ifndef FSD_VERSION
#define FSD_VERSION "0.0.0"
#endif

namespace {

using fsd::cli::apply_compat;
using fsd::cli::kCompatTag;
using fsd::cli::Options;

// A vhost-user socket passed by socket activation: TAG=systemd:NAME.
constexpr std::string_view kPassedPrefix = "systemd:";

// Raises the soft fd limit to the hard one, then fits the budget in it:
// `wanted`, or with 0, three quarters of the limit (at most 65536). Linux's
// 9p client with cache=loose keeps a file open for every inode it caches, so
// a small budget would turn into EMFILE in the guest.
unsigned fit_fd_budget(unsigned wanted) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return wanted ? wanted : 768;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  constexpr rlim_t kReserve = 128;
  if (wanted == 0) {
    rlim_t quarter3 = rl.rlim_cur == RLIM_INFINITY ? 65536 : rl.rlim_cur / 4 * 3;
    return static_cast<unsigned>(std::clamp<rlim_t>(quarter3, 64, 65536));
  }
  if (rl.rlim_cur != RLIM_INFINITY && wanted + kReserve > rl.rlim_cur) {
    unsigned fitted = rl.rlim_cur > kReserve + 32 ? static_cast<unsigned>(rl.rlim_cur - kReserve) : 32;
    spdlog::warn("--fd-budget {} does not fit RLIMIT_NOFILE {}; using {}", wanted, rl.rlim_cur, fitted);
    return fitted;
  }
  return wanted;
}

// Splits "TAG=VALUE" for --fuse-mount and --virtiofs-socket.
std::pair<std::string, std::string> tag_value(const std::string& flag, const std::string& s, const std::vector<fsd::ExportConfig>& configs) {
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

// The command line, checked: what to export and where to serve it.
struct Plan {
  std::vector<fsd::ExportConfig> exports;
  std::vector<fsd::ListenAddress> listens;
  std::vector<std::pair<std::string, std::string>> fuse_mounts, virtiofs_sockets, virtio9p_sockets;  // tag, path
  std::vector<fsd::vhost::VsockSocketSpec> vsock_sockets;
  fsd::Ring::MetadataIo metadata_io = fsd::Ring::MetadataIo::kAdaptive;
  fsd::SocketAccess socket_access;  // mode 0600 unless --socket-mode/--socket-group widen it
  fsd::SandboxMode sandbox = fsd::SandboxMode::kNone;
  fsd::SeccompAction seccomp = fsd::SeccompAction::kNone;
  fsd::NamespaceIds namespace_ids;
  uint64_t capabilities = fsd::default_capabilities();  // what the sandbox keeps
};

// `o` after apply_compat.
Plan make_plan(Options& o) {
  if (o.exports.empty()) throw std::invalid_argument("nothing to export: give --export TAG=PATH (or --shared-dir)");
  Plan p;
  for (const auto& e : o.exports) p.exports.push_back(fsd::parse_export(e));
  // The virtiofsd-style flags hold for every export, after the export's own rules.
  std::optional<fsd::XattrMap> xattrs;
  if (o.xattrmap) {
    try {
      xattrs = fsd::XattrMap::parse(*o.xattrmap);
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
    auto add = [&](const char* flag, fsd::IdMap& m, const std::string& rule) {
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
  for (size_t i = 0; i < p.exports.size(); i++)
    for (size_t j = 0; j < i; j++)
      if (p.exports[i].tag == p.exports[j].tag)
        throw std::invalid_argument("--export: tag '" + p.exports[i].tag + "' is given twice");
  for (const auto& l : o.listens) p.listens.push_back(fsd::parse_listen(l));
  for (const auto& m : o.fuse_mounts) p.fuse_mounts.push_back(tag_value("--fuse-mount", m, p.exports));
  for (const auto& s : o.virtiofs_sockets) p.virtiofs_sockets.push_back(tag_value("--virtiofs-socket", s, p.exports));
  for (const auto& s : o.virtio9p_sockets) p.virtio9p_sockets.push_back(tag_value("--virtio9p-socket", s, p.exports));
  for (const auto& s : o.vsock_sockets) p.vsock_sockets.push_back(fsd::vhost::parse_vsock_socket(s));
  if (p.listens.empty() && p.fuse_mounts.empty() && p.virtiofs_sockets.empty() && p.virtio9p_sockets.empty() &&
      p.vsock_sockets.empty() && o.listen_fd < 0)
    throw std::invalid_argument(
        "nothing to serve on: give --listen, --virtiofs-socket, --virtio9p-socket, --vsock-socket or --fuse-mount");
  p.metadata_io = o.metadata_io == "uring"  ? fsd::Ring::MetadataIo::kRing
                  : o.metadata_io == "sync" ? fsd::Ring::MetadataIo::kInline
                                            : fsd::Ring::MetadataIo::kAdaptive;
  if (o.socket_mode) p.socket_access.mode = fsd::parse_socket_mode(*o.socket_mode);
  if (o.socket_group) p.socket_access.group = fsd::parse_socket_group(*o.socket_group);
  if (!o.uid_map.empty() || !o.gid_map.empty()) {
    const char* flag = !o.uid_map.empty() ? "--uid-map" : "--gid-map";
    if (::geteuid() == 0)
      throw std::invalid_argument(std::string(flag) + ": only for an fsd started by an ordinary user (it maps ids "
                                  "into the sandbox's user namespace); a root fsd can use --translate-uid/-gid");
    if (o.sandbox == "none")
      throw std::invalid_argument(std::string(flag) + ": maps ids into the sandbox's user namespace; not with --sandbox none");
    if (o.sandbox.empty()) o.sandbox = "namespace";
    for (const auto& m : o.uid_map) p.namespace_ids.uids.push_back(fsd::parse_namespace_map("--uid-map", m));
    for (const auto& m : o.gid_map) p.namespace_ids.gids.push_back(fsd::parse_namespace_map("--gid-map", m));
    fsd::check_namespace_maps("--uid-map", p.namespace_ids.uids);
    fsd::check_namespace_maps("--gid-map", p.namespace_ids.gids);
    // Ranges on one side only: newgidmap (or newuidmap) would map fsd's own
    // id alone and forbid setgroups, so fsd could act as others while
    // keeping its own supplementary groups.
    bool uids_beyond = !fsd::maps_only(p.namespace_ids.uids, ::geteuid());
    bool gids_beyond = !fsd::maps_only(p.namespace_ids.gids, ::getegid());
    if (uids_beyond != gids_beyond)
      throw std::invalid_argument(std::string(uids_beyond ? "--uid-map" : "--gid-map") + " maps ids beyond fsd's own, but " +
                                  (uids_beyond ? "--gid-map" : "--uid-map") + " does not: give ranges for both, so "
                                  "that requests act as uid and gid of their caller");
  }
  if (!o.sandbox.empty()) {
    p.sandbox = fsd::parse_sandbox(o.sandbox);
    if (p.sandbox == fsd::SandboxMode::kNamespace && !p.fuse_mounts.empty())
      throw std::invalid_argument("--sandbox namespace: a --fuse-mount lives in the host's mount namespace, which "
                                  "the sandbox leaves (and could then not unmount it); use --sandbox none with it");
    if (p.sandbox == fsd::SandboxMode::kLandlock && !p.fuse_mounts.empty())
      throw std::invalid_argument("--sandbox landlock: a --fuse-mount is unmounted by fusermount3, which Landlock would "
                                  "forbid; use --sandbox none with it");
  } else if (p.fuse_mounts.empty()) {
    // An ordinary user's fsd: Landlock where the kernel has it (else no
    // more than no_new_privs, as the log says).
    p.sandbox = ::geteuid() == 0 ? fsd::SandboxMode::kNamespace : fsd::SandboxMode::kLandlock;
  }
  if (o.modcaps) {
    if (p.sandbox != fsd::SandboxMode::kNamespace)
      throw std::invalid_argument("--modcaps: fsd drops capabilities in its namespace sandbox; not with --sandbox none "
                                  "(or --fuse-mount)");
    p.capabilities = fsd::parse_modcaps(*o.modcaps, p.capabilities);
  }
  if (!o.seccomp.empty()) {
    p.seccomp = fsd::parse_seccomp(o.seccomp);
    if (p.seccomp != fsd::SeccompAction::kNone && !p.fuse_mounts.empty())
      throw std::invalid_argument("--seccomp " + o.seccomp + ": not with --fuse-mount (libfuse's calls are not on fsd's list); "
                                  "use --seccomp none with it");
  } else if (!kSanitized && (p.sandbox != fsd::SandboxMode::kNone || (::geteuid() != 0 && p.fuse_mounts.empty()))) {
    // In a sandbox, and for an fsd an ordinary user started: --seccomp
    // none keeps it without a filter.
    p.seccomp = fsd::SeccompAction::kKill;
  }
  return p;
}

// Opens every export under one fd budget: a quarter for cached O_PATH fds,
// the rest for files clients hold open.
fsd::ExportSet open_exports(const std::vector<fsd::ExportConfig>& configs, unsigned fd_budget, const std::string& handles) {
  unsigned budget = fit_fd_budget(fd_budget);
  unsigned per_export = std::max<unsigned>(budget / static_cast<unsigned>(configs.size()), 16);
  fsd::VfsOptions vopts;
  vopts.path_fd_cache = std::max(per_export / 4, 8u);
  vopts.open_files = per_export - vopts.path_fd_cache;
  vopts.handles = handles == "never"       ? fsd::VfsOptions::Handles::kNever
                  : handles == "mandatory" ? fsd::VfsOptions::Handles::kMandatory
                                           : fsd::VfsOptions::Handles::kPrefer;
  spdlog::debug("fd budget {}: per export {} open files and {} cached paths", budget, vopts.open_files, vopts.path_fd_cache);
  fsd::ExportSet exports;
  for (const auto& c : configs) {
    auto vfs = std::make_unique<fsd::Vfs>(c, vopts);
    spdlog::info("export '{}': {} ({}, cache={}, {})", c.tag, c.path, c.read_only ? "ro" : "rw",
                 fsd::name_of(c.cache), vfs->uses_handles() ? "file handles" : "re-resolution by name");
    for (const auto& r : c.uids.rules()) spdlog::info("export '{}': uids {}", c.tag, r);
    for (const auto& r : c.gids.rules()) spdlog::info("export '{}': gids {}", c.tag, r);
    if (c.xattrs) spdlog::info("export '{}': xattr names mapped by '{}'", c.tag, c.xattrs->text());
    exports.add(std::move(vfs));
  }
  return exports;
}

// Most request queues a virtio-fs device offers (vhost-user-fs-pci's
// num-request-queues); a guest driver maps CPUs onto them.
constexpr unsigned kRequestQueues = 16;

// virtio-fs's config space: the mount tag (36 bytes, NUL-padded) and the
// number of request queues (le32).
std::vector<std::byte> virtio_fs_config(const std::string& tag, uint32_t request_queues) {
  std::vector<std::byte> c(40);
  std::memcpy(c.data(), tag.data(), std::min<size_t>(tag.size(), 36));
  std::memcpy(c.data() + 36, &request_queues, 4);  // x86 and other little-endian hosts
  return c;
}

// Every transport, wired to its protocol server. Members stop in reverse
// order: FUSE mounts, then virtio devices, then the socket server.
class Servers {
 public:
  Servers(const Options& o, const Plan& plan, const fsd::ExportSet& exports)
      : o_(o), plan_(plan), exports_(exports),
        sockets_(fsd::p9::session_factory(
                     exports, {.max_msize = o.msize_max, .max_fids = o.max_fids}),
                 o.threads, plan.metadata_io, o.poll_us, o.max_connections) {
    sockets_.set_timeouts({.frame = std::chrono::seconds(o.frame_timeout), .idle = std::chrono::seconds(o.idle_timeout)});
    sockets_.set_peer_share(o.max_connections_per_peer);
  }
  ~Servers() {
    for (auto& f : fuse_) f->stop();
    for (auto& d : devices_) d->stop();
    sockets_.stop();
  }

  // Binds every socket (before the sandbox hides their paths), or takes it
  // from those a supervisor passed (systemd:NAME). A passed socket that
  // nothing claims is an error: its clients would wait for ever.
  void bind(fsd::PassedSockets& passed) {
    for (const auto& l : plan_.listens) {
      if (l.inherited.empty())
        sockets_.listen(l, plan_.socket_access);
      else
        sockets_.adopt(passed.claim(l.inherited, "--listen"), l);
    }
    auto device = [&](const std::string& tag, const std::string& where, bool p9) {
      if (!where.starts_with(kPassedPrefix)) return add_device(tag, fsd::Fd(), where, where, p9);
      const char* flag = p9 ? "--virtio9p-socket" : "--virtiofs-socket";
      add_device(tag, passed.claim(where.substr(kPassedPrefix.size()), flag), "", where, p9);
    };
    for (const auto& [tag, where] : plan_.virtiofs_sockets) device(tag, where, false);
    for (const auto& [tag, where] : plan_.virtio9p_sockets) device(tag, where, true);
    for (const auto& v : plan_.vsock_sockets) add_vsock(v);
    if (o_.listen_fd >= 0) add_device(kCompatTag, fsd::Fd(o_.listen_fd), "", "--fd " + std::to_string(o_.listen_fd), false);
    if (auto left = passed.unclaimed(); !left.empty())
      throw std::invalid_argument("socket activation passed '" + left.front() + "', which no --listen systemd:" +
                                  left.front() + " or --virtiofs-socket TAG=systemd:" + left.front() + " takes");
  }

  // Starts the worker threads, and mounts FUSE file systems.
  void start() {
    for (size_t i = 0; i < devices_.size(); i++) {
      devices_[i]->start();
      spdlog::info("virtio device '{}': listening on {} (vhost-user)", device_tags_[i], device_labels_[i]);
    }
    for (const auto& [tag, where] : plan_.fuse_mounts) {
      auto servers = fsd::fuse::server_factory(*exports_.find(tag),
                                               {.max_write = fsd::FuseMount::kMaxWrite, .virtiofs = false}, true);
      fuse_.push_back(std::make_unique<fsd::FuseMount>(tag, where, servers, o_.threads, plan_.metadata_io));
      fuse_.back()->start();
      spdlog::info("mounted '{}' on {} (FUSE)", tag, where);
    }
    sockets_.start();
    for (const auto& a : sockets_.bound())
      spdlog::info("listening on {} (9P2000.L, msize up to {})", a.to_string(), o_.msize_max);
  }

  // True once every virtio front-end has gone, and fsd serves nothing else.
  bool all_done() const {
    bool gone = !devices_.empty() && std::all_of(devices_.begin(), devices_.end(), [](auto& d) { return d->finished(); });
    return gone && plan_.listens.empty() && plan_.fuse_mounts.empty();
  }

 private:
  void add_device(const std::string& tag, fsd::Fd listening, const std::string& path, const std::string& label, bool p9) {
    device_tags_.push_back(tag);
    device_labels_.push_back(label);
    fsd::Vfs& vfs = *exports_.find(tag);
    fsd::VhostUserOptions vopt{.pool = pool(),
                               .exit_on_disconnect = o_.on_disconnect == "exit",
                               .metadata_io = plan_.metadata_io,
                               .socket_access = plan_.socket_access,
                               .poll_us = o_.poll_us};
    fsd::MessageServerFactory servers;
    if (p9) {  // a virtio-9p device serves one export, under its own mount tag
      single_exports_.push_back(std::make_unique<fsd::ExportSet>());
      single_exports_.back()->add_borrowed(&vfs);
      servers = fsd::p9::virtio_channel_factory(
          *single_exports_.back(), {.max_msize = fsd::p9::kVirtio9pMaxMsize});
      vopt.device = {.name = "virtio-9p '" + tag + "'", .queues = 1, .features = fsd::p9::kVirtio9pMountTag,
                     .config = fsd::p9::virtio9p_config(tag)};
    } else {
      servers = fsd::fuse::server_factory(vfs, {.max_write = 1 << 20, .virtiofs = true}, false);
      // hiprio and up to kRequestQueues request queues (the front-end's
      // num-request-queues), served by all the pool's workers.
      vopt.device = {.name = "virtio-fs '" + tag + "'", .queues = 1 + kRequestQueues, .workers = o_.threads};
      if (tag == kCompatTag && o_.device_tag) vopt.device.config = virtio_fs_config(*o_.device_tag, 1);
    }
    auto& d = devices_.emplace_back(listening ? std::make_unique<fsd::VhostUserBackend>(std::move(listening), servers, vopt)
                                              : std::make_unique<fsd::VhostUserBackend>(path, servers, vopt));
    d->on_finished([] { ::kill(::getpid(), SIGUSR1); });
  }

  // A virtio-vsock device serving 9P on a port to guest root, with every
  // export (attached by aname, as on sockets).
  void add_vsock(const fsd::vhost::VsockSocketSpec& v) {
    fsd::vhost::VsockOptions vo{.guest_cid = v.guest_cid, .port = v.port, .name = "virtio-vsock " + v.path};
    if (v.untrusted_as) {
      auto [uid, gid] = *v.untrusted_as;
      // An fsd that cannot switch identities would serve them as itself.
      if (!fsd::Credentials::switching() && (uid != ::geteuid() || gid != ::getegid()))
        throw std::invalid_argument("--vsock-socket " + v.path + ": untrusted-as=" + std::to_string(uid) + ":" +
                                    std::to_string(gid) + " needs an fsd that can act as others (root); this one acts "
                                    "as uid " + std::to_string(::geteuid()) + " for every request");
      vo.untrusted_as = fsd::Credentials::get(uid, gid);
    }
    auto sessions = fsd::p9::session_factory(exports_, {.max_msize = std::min(o_.msize_max, vo.window), .max_fids = o_.max_fids});
    fsd::VhostUserOptions vopt{.pool = pool(),
                               .exit_on_disconnect = o_.on_disconnect == "exit",
                               .metadata_io = plan_.metadata_io,
                               .socket_access = plan_.socket_access,
                               .poll_us = o_.poll_us};
    vopt.device = {.name = "virtio-vsock", .queues = 2, .workers = 1, .config = fsd::vhost::VsockDevice::config(v.guest_cid)};
    device_tags_.push_back("vsock");
    device_labels_.push_back(v.path + " (guest CID " + std::to_string(v.guest_cid) + ", 9P on port " +
                             std::to_string(v.port) + ")");
    auto& d = devices_.emplace_back(
        std::make_unique<fsd::VhostUserBackend>(v.path, fsd::vhost::vsock_device_factory(sessions, vo), vopt));
    d->on_finished([] { ::kill(::getpid(), SIGUSR1); });
  }
  // Every virtio device shares one pool of --threads workers, so that
  // many guests on one fsd cost threads per CPU rather than per guest.
  const std::shared_ptr<fsd::VhostWorkerPool>& pool() {
    if (!vhost_pool_) vhost_pool_ = std::make_shared<fsd::VhostWorkerPool>(o_.threads, plan_.metadata_io);
    return vhost_pool_;
  }

  const Options& o_;
  const Plan& plan_;
  const fsd::ExportSet& exports_;
  fsd::SocketServer sockets_;
  std::vector<std::unique_ptr<fsd::ExportSet>> single_exports_;  // outlive the devices using them
  std::shared_ptr<fsd::VhostWorkerPool> vhost_pool_;  // made with the first device; its threads start with it
  std::vector<std::unique_ptr<fsd::VhostUserBackend>> devices_;
  std::vector<std::string> device_tags_, device_labels_;  // for the log, per device
  std::vector<std::unique_ptr<fsd::FuseMount>> fuse_;
};

// Signals are taken synchronously by this thread; workers never see them.
// SIGUSR1 is how a finished virtio device tells main to look.
sigset_t take_signals() {
  ::signal(SIGPIPE, SIG_IGN);
  return fsd::block_signals({SIGINT, SIGTERM, SIGUSR1});
}

int run(Options& o) {
  apply_compat(o);  // -o may set the log level
  if (o.syslog) {
    // Where logs go is no protection: without a syslog daemon, they stay on
    // stderr, with a warning, rather than fsd not starting.
    try {
      auto logger = std::make_shared<spdlog::logger>("fsd-syslog", std::make_shared<fsd::SyslogSink>("fsd"));
      logger->set_pattern("%v");
      spdlog::set_default_logger(logger);
    } catch (const std::runtime_error& e) {
      o.ignored.push_back(std::string(e.what()) + " (logging to stderr)");
    }
  }
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  for (const auto& why : o.ignored) spdlog::warn("ignored: {}", why);
  if (o.rlimit_nofile && *o.rlimit_nofile != 0) {
    // The kernel's ceiling is fs.nr_open: more is taken as that, with a warning.
    rlim_t want = *o.rlimit_nofile;
    rlim_t ceiling = 0;
    if (std::ifstream nr("/proc/sys/fs/nr_open"); nr >> ceiling && ceiling != 0 && want > ceiling) {
      spdlog::warn("--rlimit-nofile {}: above fs.nr_open; using {}", want, ceiling);
      want = ceiling;
    }
    rlimit rl{want, want};
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      // Raising the hard limit needs CAP_SYS_RESOURCE: without it, as far
      // as the hard limit goes.
      int saved = errno;
      rlimit now{};
      if (saved != EPERM || ::getrlimit(RLIMIT_NOFILE, &now) != 0 || now.rlim_max >= want)
        throw std::runtime_error("--rlimit-nofile " + std::to_string(want) + ": " + std::strerror(saved));
      spdlog::warn("--rlimit-nofile {}: the hard limit {} cannot be raised ({}); using it", want, now.rlim_max,
                   std::strerror(saved));
      now.rlim_cur = now.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &now);
    }
  }
  // What a supervisor handed over (systemd's socket activation and
  // readiness protocol), taken before anything else is opened.
  fsd::PassedSockets passed = fsd::PassedSockets::take();
  fsd::ReadyNotifier ready = fsd::ReadyNotifier::from_environment();
  // Clients send the modes they want, their umask applied already (FUSE's
  // kernel side, or the 9p client): fsd's own must not take bits away.
  ::umask(0);
  Plan plan = make_plan(o);
  fsd::ExportSet exports = open_exports(plan.exports, o.fd_budget, o.inode_file_handles);
  sigset_t sigs = take_signals();
  Servers servers(o, plan, exports);
  servers.bind(passed);
  bool as_root = ::geteuid() == 0;
  if (o.sandbox == "chroot")
    spdlog::info("--sandbox chroot: fsd's namespace sandbox stands in for it (it confines fsd at least as much)");
  if (plan.sandbox == fsd::SandboxMode::kNamespace) {
    fsd::Credentials::snapshot_user_database();
    std::vector<fsd::ExportMount> mounts;
    for (fsd::Vfs* vfs : exports.all())
      mounts.push_back({.path = vfs->config().path, .read_only = vfs->read_only(), .devices = vfs->config().devices});
    auto roots = fsd::enter_sandbox(plan.sandbox, plan.seccomp, mounts, plan.namespace_ids, plan.capabilities);
    for (size_t i = 0; i < roots.size(); i++) exports.all()[i]->move_root(std::move(roots[i]));
    fsd::Credentials::reread();
    spdlog::info("sandbox: own {}pid, mount, network and IPC namespaces, an empty read-only root with each export "
                 "mounted on its own (nosuid; nodev unless it allows devices; read-only if it is); capabilities {}; "
                 "no_new_privs", as_root ? "" : "user, ", fsd::capability_names(plan.capabilities));
    if (!as_root) spdlog::info("user namespace: fsd is uid {} gid {} there", ::geteuid(), ::getegid());
  } else if (plan.sandbox == fsd::SandboxMode::kLandlock) {
    std::vector<fsd::LandlockTree> trees;
    for (fsd::Vfs* vfs : exports.all())
      trees.push_back({.dir = vfs->root_dir(), .writable = !vfs->read_only(), .devices = vfs->config().devices});
    fsd::LandlockResult got = fsd::confine_with_landlock(trees);
    if (got.confined) {
      spdlog::info("sandbox: Landlock (ABI {}): files only beneath the exports (read-only ones read-only) and /proc, "
                   "nothing executed{}; no_new_privs", got.abi, got.abi >= 4 ? ", no TCP bind or connect" : "");
    } else if (o.sandbox == "landlock") {
      throw std::runtime_error("--sandbox landlock: " + got.why);
    } else {
      if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        throw std::runtime_error(std::string("no_new_privs: ") + std::strerror(errno));
      spdlog::warn("sandbox: no_new_privs only: no Landlock, as {} (--sandbox namespace enters a user namespace "
                   "instead)", got.why);
    }
  } else {
    // An ordinary user's fsd gains no privileges from here on (no setuid
    // program could raise them), unless it mounts with FUSE, whose
    // fusermount3 is one.
    bool nnp = !as_root && plan.fuse_mounts.empty();
    if (nnp && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
      throw std::runtime_error(std::string("no_new_privs: ") + std::strerror(errno));
    spdlog::info("sandbox: none{}{}", nnp ? "; no_new_privs" : "",
                 as_root && !plan.fuse_mounts.empty() && o.sandbox.empty() ? " (a --fuse-mount needs the host's mount namespace)"
                 : !as_root && !plan.fuse_mounts.empty() && o.sandbox.empty() ? " (a --fuse-mount needs fusermount3)"
                                                                              : "");
  }
  if (fsd::Credentials::switching())
    spdlog::info("requests act as their callers (fsd runs as uid {})", fsd::Credentials::self()->uid());
  else
    spdlog::info("requests act as fsd's own user (uid {}): it cannot act as others ({})", fsd::Credentials::self()->uid(),
                 !as_root && plan.sandbox == fsd::SandboxMode::kNamespace ? "its user namespace maps no other ids"
                                                                           : "no CAP_SETUID/CAP_SETGID");
  fsd::install_seccomp(plan.seccomp);
  if (plan.seccomp != fsd::SeccompAction::kNone) spdlog::info("seccomp: an allow-list of fsd's system calls ({})", o.seccomp.empty() ? "kill" : o.seccomp);
  servers.start();
  // Tells a supervisor that every socket is served now: vmlaunch through
  // --ready-fd, systemd (Type=notify) through $NOTIFY_SOCKET.
  if (o.ready_fd >= 0) {
    (void)!::write(o.ready_fd, "ready\n", 6);
    ::close(o.ready_fd);
  }
  ready.notify("READY=1\nSTATUS=serving " + std::to_string(plan.exports.size()) + " export(s)");
  for (;;) {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (sig != SIGUSR1) {
      spdlog::info("{}: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
      ready.notify("STOPPING=1");
      return 0;
    }
    if (servers.all_done()) {
      spdlog::info("every virtio-fs front-end has gone: exiting");
      return 0;
    }
  }
}

// fsd's own command line.
void add_options(CLI::App& app, Options& o) {
  app.set_version_flag("-V,--version", std::string("fsd ") + FSD_VERSION);
  app.add_option("--export", o.exports,
                 "Export a host directory: TAG=PATH[,ro][,cache=never|auto|always][,devices][,direct-io]"
                 "[,no-readdirplus][,allow-mmap][,posix-acl][,submounts][,translate-uid=RULE][,translate-gid=RULE]"
                 "[,xattrmap=RULES] (repeatable). 9p clients attach with aname TAG (or PATH). Read-only exports "
                 "default to cache=always. devices lets root callers create device nodes (refused otherwise). "
                 "direct-io, no-readdirplus, allow-mmap, posix-acl, submounts, translate-uid/-gid and xattrmap are "
                 "as virtiofsd's --allow-direct-io, --no-readdirplus, --allow-mmap, --posix-acl, "
                 "--announce-submounts, --translate-uid/-gid and --xattrmap, for this export only.")
      ->type_name("SPEC");
  app.add_option("--listen", o.listens,
                 "Serve 9P2000.L on unix:PATH, tcp:PORT (127.0.0.1), tcp:HOST:PORT, or systemd:NAME (a socket passed "
                 "by socket activation, named by its unit's FileDescriptorName=) (repeatable)")
      ->type_name("ADDR");
  app.add_option("--virtiofs-socket", o.virtiofs_sockets,
                 "Serve export TAG as a virtio-fs device on the vhost-user socket PATH, or on the socket passed "
                 "by socket activation as NAME with TAG=systemd:NAME (repeatable)")
      ->type_name("TAG=PATH");
  app.add_option("--virtio9p-socket", o.virtio9p_sockets,
                 "Serve export TAG as a virtio-9p device (mount tag TAG) on the vhost-user socket PATH (repeatable)")
      ->type_name("TAG=PATH");
  app.add_option("--vsock-socket", o.vsock_sockets,
                 "Be the back-end of a virtio-vsock device (QEMU's vhost-user-vsock-pci) on the vhost-user socket "
                 "PATH, serving 9P2000.L (every export, by aname) on vsock port P (default 564) of the guest with "
                 "CID N (default 3). Only connections from reserved guest ports (below 1024: guest root) are served, "
                 "as a trusted peer; untrusted-as=UID:GID serves the others too, acting as that identity. A guest "
                 "mounts with trans=fd on a connected socket (repeatable)")
      ->type_name("PATH[,cid=N][,port=P][,untrusted-as=UID:GID]");
  app.add_option("--fuse-mount", o.fuse_mounts, "Mount export TAG on the host at MOUNTPOINT through /dev/fuse (repeatable)")
      ->type_name("TAG=MOUNTPOINT");
  app.add_option("--on-disconnect", o.on_disconnect,
                 "When a virtio-fs front-end disconnects: wait for the next one, or exit "
                 "(default: wait; exit in the virtiofsd-compatible form)")
      ->check(CLI::IsMember({"wait", "exit"}));
  app.add_option("--msize-max", o.msize_max, "Largest 9p msize to agree to, in bytes")
      ->check(CLI::Range(4096u, 16u << 20))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "Worker threads (one io_uring each) for 9P sockets, for each FUSE mount, and for all "
                 "virtio devices together; a virtio-fs device spreads the requests in flight on its queues over them")
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  app.add_option("--fd-budget", o.fd_budget,
                 "Most file descriptors fsd keeps for exported files, however many clients walk "
                 "(default: 3/4 of RLIMIT_NOFILE, at most 65536)")
      ->check(CLI::Range(64u, 1u << 20));
  app.add_option("--metadata-io", o.metadata_io,
                 "Where metadata syscalls and writes to the page cache run: uring (io_uring's workers), sync "
                 "(the worker thread), or auto (lookups on the worker thread; creates, unlinks, renames and "
                 "writes through io_uring while other requests are in flight). Reads always go through io_uring")
      ->check(CLI::IsMember({"uring", "sync", "auto"}))
      ->capture_default_str();
  app.add_option("--poll-us", o.poll_us,
                 "How long an idle virtio queue or 9p connection looks for the client's next request before it "
                 "sleeps until woken (0: never poll; polling trades CPU for latency)")
      ->check(CLI::Range(0u, 10000u))
      ->capture_default_str();
  app.add_option("--max-connections", o.max_connections,
                 "Most 9P socket connections served at once; one more is closed at once, with a warning")
      ->check(CLI::Range(1u, 1u << 20))
      ->capture_default_str();
  app.add_option("--max-fids", o.max_fids, "Most fids one 9p connection may hold; past it a new fid is EMFILE")
      ->check(CLI::Range(16u, 1u << 24))
      ->capture_default_str();
  app.add_option("--max-connections-per-peer", o.max_connections_per_peer,
                 "Most 9P connections one peer (a uid on unix sockets, an address on TCP) has open at once; one "
                 "more is closed at once (default: three quarters of --max-connections)")
      ->check(CLI::Range(1u, 1u << 20));
  app.add_option("--frame-timeout", o.frame_timeout,
                 "Seconds a 9P connection has to send a frame whole once it began it (and its first frame once "
                 "connected); past it, it is closed (0: no limit)")
      ->check(CLI::Range(0u, 86400u))
      ->capture_default_str();
  app.add_option("--idle-timeout", o.idle_timeout,
                 "Seconds a 9P connection that holds no fid may stay idle before it is closed (0: no limit; a "
                 "mount holds its root fid, so an idle mount is never closed)")
      ->check(CLI::Range(0u, 1u << 30))
      ->capture_default_str();
  app.add_option("--socket-mode", o.socket_mode,
                 "Mode (octal) of the unix sockets fsd creates, whatever the umask (default 0600: only fsd's "
                 "user may connect; e.g. 0660 with --socket-group lets that group in)")
      ->type_name("MODE");
  app.add_option("--socket-group", o.socket_group,
                 "Group (name or number) of the unix sockets fsd creates (virtiofsd's flag)")
      ->type_name("GROUP");
  app.add_option("--sandbox", o.sandbox,
                 "namespace: once its sockets and exports are open, fsd enters new pid, mount, network and IPC "
                 "namespaces with an empty read-only root and drops the capabilities file serving does not need; "
                 "started by an ordinary user, first a user namespace that maps its own ids (the host's other "
                 "owners then show as 65534; see --uid-map). The default when started as root without --fuse-mount. "
                 "landlock: fsd stays in the host's namespaces and confines its file access to its exports with "
                 "Landlock (read-only ones read-only), executes nothing, binds and connects no TCP socket; no ids "
                 "change. The default for an ordinary user without --fuse-mount, where the kernel has Landlock. "
                 "none: neither (the default with --fuse-mount)")
      ->type_name("namespace|chroot|landlock|none");
  app.add_option("--seccomp", o.seccomp,
                 "What a system call outside fsd's allow-list does: kill (the default in the namespace sandbox, and "
                 "for an fsd started by an ordinary user without --fuse-mount), log, trap, or none (no filter; the "
                 "default otherwise)")
      ->type_name("kill|log|trap|none");
  app.add_option("--ready-fd", o.ready_fd, "Write \"ready\" to this fd once every socket accepts, then close it");
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("fsd");
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e fsd %^%l%$: %v");
  spdlog::set_default_logger(logger);

  Options o;
  CLI::App app{"fsd: a file server for virtual machines.\n"
               "Serves host directories as 9P2000.L (unix/TCP sockets), virtio-fs (vhost-user, for QEMU's\n"
               "vhost-user-fs-pci) and FUSE mounts on the host, all from one backend."};
  add_options(app, o);
  fsd::cli::add_virtiofsd_options(app, o);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "fsd: %s (see fsd --help)\n", e.what());
    return 2;
  }
  if (o.print_capabilities) {
    // What libvirt reads from a vhost-user back-end (QEMU's
    // docs/interop/vhost-user.json): its type, and what its command line
    // offers. separate-options: virtiofsd's --shared-dir, --cache,
    // --sandbox, ... may be given as flags rather than -o. Not
    // migrate-precopy: fsd cannot migrate a device's state.
    std::printf("{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}\n");
    return 0;
  }
  try {
    return run(o);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "fsd: %s (see fsd --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fsd: %s\n", e.what());
    return 1;
  }
}
