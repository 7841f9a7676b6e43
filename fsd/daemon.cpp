// fsd's daemon: runs a plan. Opens the exports, binds every socket, enters
// the sandbox, starts the servers and waits for a signal.
#include "fsd/daemon.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <thread>

#include "common/signals.h"
#include "fsd/core/activation.h"
#include "fsd/core/landlock.h"
#include "fsd/core/sandbox.h"
#include "fsd/core/seccomp.h"
#include "fsd/core/syslog_sink.h"
#include "fsd/fuse/server.h"
#include "fsd/fuse/virtio_fs.h"
#include "fsd/p9/session.h"
#include "fsd/p9/virtio_channel.h"
#include "fsd/plan.h"
#include "fsd/transport/fuse_dev.h"
#include "fsd/transport/socket_server.h"
#include "fsd/vfs/export_set.h"
#include "fsd/vfs/vfs.h"
#include "fsd/vhost/backend.h"
#include "fsd/vhost/vsock_device.h"
#include "fsd/virtiofsd_compat.h"

namespace fsd {
namespace {

using cli::apply_compat;
using cli::kCompatTag;
using cli::Options;
using fuse::kRequestQueues;
using fuse::virtio_fs_config;

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

// Opens every export under one fd budget: a quarter for cached O_PATH fds,
// the rest for files clients hold open.
ExportSet open_exports(const std::vector<ExportConfig>& configs, unsigned fd_budget, const std::string& handles) {
  unsigned budget = fit_fd_budget(fd_budget);
  unsigned per_export = std::max<unsigned>(budget / static_cast<unsigned>(configs.size()), 16);
  VfsOptions vopts;
  vopts.path_fd_cache = std::max(per_export / 4, 8u);
  vopts.open_files = per_export - vopts.path_fd_cache;
  vopts.handles = handles == "never"       ? VfsOptions::Handles::kNever
                  : handles == "mandatory" ? VfsOptions::Handles::kMandatory
                                           : VfsOptions::Handles::kPrefer;
  spdlog::debug("fd budget {}: per export {} open files and {} cached paths", budget, vopts.open_files, vopts.path_fd_cache);
  ExportSet exports;
  for (const auto& c : configs) {
    auto vfs = std::make_unique<Vfs>(c, vopts);
    spdlog::info("export '{}': {} ({}, cache={}, {})", c.tag, c.path, c.read_only ? "ro" : "rw",
                 name_of(c.cache), vfs->uses_handles() ? "file handles" : "re-resolution by name");
    for (const auto& r : c.uids.rules()) spdlog::info("export '{}': uids {}", c.tag, r);
    for (const auto& r : c.gids.rules()) spdlog::info("export '{}': gids {}", c.tag, r);
    if (c.xattrs) spdlog::info("export '{}': xattr names mapped by '{}'", c.tag, c.xattrs->text());
    exports.add(std::move(vfs));
  }
  return exports;
}

// Every transport, wired to its protocol server. Members stop in reverse
// order: FUSE mounts, then virtio devices, then the socket server.
class Servers {
 public:
  Servers(const Options& o, const Plan& plan, const ExportSet& exports)
      : o_(o), plan_(plan), exports_(exports),
        sockets_(p9::session_factory(
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
  void bind(PassedSockets& passed) {
    for (const auto& l : plan_.listens) {
      if (l.inherited.empty())
        sockets_.listen(l, plan_.socket_access);
      else
        sockets_.adopt(passed.claim(l.inherited, "--listen"), l);
    }
    auto device = [&](const std::string& tag, const std::string& where, bool p9) {
      if (!where.starts_with(kPassedPrefix)) return add_device(tag, Fd(), where, where, p9);
      const char* flag = p9 ? "--virtio9p-socket" : "--virtiofs-socket";
      add_device(tag, passed.claim(where.substr(kPassedPrefix.size()), flag), "", where, p9);
    };
    for (const auto& [tag, where] : plan_.virtiofs_sockets) device(tag, where, false);
    for (const auto& [tag, where] : plan_.virtio9p_sockets) device(tag, where, true);
    for (const auto& v : plan_.vsock_sockets) add_vsock(v);
    if (o_.listen_fd >= 0) add_device(kCompatTag, Fd(o_.listen_fd), "", "--fd " + std::to_string(o_.listen_fd), false);
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
      auto servers = fuse::server_factory(*exports_.find(tag),
                                               {.max_write = FuseMount::kMaxWrite, .virtiofs = false}, true);
      fuse_.push_back(std::make_unique<FuseMount>(tag, where, servers, o_.threads, plan_.metadata_io));
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
  void add_device(const std::string& tag, Fd listening, const std::string& path, const std::string& label, bool p9) {
    device_tags_.push_back(tag);
    device_labels_.push_back(label);
    Vfs& vfs = *exports_.find(tag);
    VhostUserOptions vopt{.pool = pool(),
                               .exit_on_disconnect = o_.on_disconnect == "exit",
                               .metadata_io = plan_.metadata_io,
                               .socket_access = plan_.socket_access,
                               .poll_us = o_.poll_us};
    MessageServerFactory servers;
    if (p9) {  // a virtio-9p device serves one export, under its own mount tag
      single_exports_.push_back(std::make_unique<ExportSet>());
      single_exports_.back()->add_borrowed(&vfs);
      servers = p9::virtio_channel_factory(
          *single_exports_.back(), {.max_msize = p9::kVirtio9pMaxMsize});
      vopt.device = {.name = "virtio-9p '" + tag + "'", .queues = 1, .features = p9::kVirtio9pMountTag,
                     .config = p9::virtio9p_config(tag)};
    } else {
      servers = fuse::server_factory(vfs, {.max_write = 1 << 20, .virtiofs = true}, false);
      // hiprio and up to kRequestQueues request queues (the front-end's
      // num-request-queues), served by all the pool's workers.
      vopt.device = {.name = "virtio-fs '" + tag + "'", .queues = 1 + kRequestQueues, .workers = o_.threads};
      if (tag == kCompatTag && o_.device_tag) vopt.device.config = virtio_fs_config(*o_.device_tag, 1);
    }
    auto& d = devices_.emplace_back(listening ? std::make_unique<VhostUserBackend>(std::move(listening), servers, vopt)
                                              : std::make_unique<VhostUserBackend>(path, servers, vopt));
    d->on_finished([] { ::kill(::getpid(), SIGUSR1); });
  }

  // A virtio-vsock device serving 9P on a port to guest root, with every
  // export (attached by aname, as on sockets).
  void add_vsock(const vhost::VsockSocketSpec& v) {
    vhost::VsockOptions vo{.guest_cid = v.guest_cid, .port = v.port, .name = "virtio-vsock " + v.path};
    if (v.untrusted_as) {
      auto [uid, gid] = *v.untrusted_as;
      // An fsd that cannot switch identities would serve them as itself.
      if (!Credentials::switching() && (uid != ::geteuid() || gid != ::getegid()))
        throw std::invalid_argument("--vsock-socket " + v.path + ": untrusted-as=" + std::to_string(uid) + ":" +
                                    std::to_string(gid) + " needs an fsd that can act as others (root); this one acts "
                                    "as uid " + std::to_string(::geteuid()) + " for every request");
      vo.untrusted_as = Credentials::get(uid, gid);
    }
    auto sessions = p9::session_factory(exports_, {.max_msize = std::min(o_.msize_max, vo.window), .max_fids = o_.max_fids});
    VhostUserOptions vopt{.pool = pool(),
                               .exit_on_disconnect = o_.on_disconnect == "exit",
                               .metadata_io = plan_.metadata_io,
                               .socket_access = plan_.socket_access,
                               .poll_us = o_.poll_us};
    vopt.device = {.name = "virtio-vsock", .queues = 2, .workers = 1, .config = vhost::VsockDevice::config(v.guest_cid)};
    device_tags_.push_back("vsock");
    device_labels_.push_back(v.path + " (guest CID " + std::to_string(v.guest_cid) + ", 9P on port " +
                             std::to_string(v.port) + ")");
    auto& d = devices_.emplace_back(
        std::make_unique<VhostUserBackend>(v.path, vhost::vsock_device_factory(sessions, vo), vopt));
    d->on_finished([] { ::kill(::getpid(), SIGUSR1); });
  }
  // Every virtio device shares one pool of --threads workers, so that
  // many guests on one fsd cost threads per CPU rather than per guest.
  const std::shared_ptr<VhostWorkerPool>& pool() {
    if (!vhost_pool_) vhost_pool_ = std::make_shared<VhostWorkerPool>(o_.threads, plan_.metadata_io);
    return vhost_pool_;
  }

  const Options& o_;
  const Plan& plan_;
  const ExportSet& exports_;
  SocketServer sockets_;
  std::vector<std::unique_ptr<ExportSet>> single_exports_;  // outlive the devices using them
  std::shared_ptr<VhostWorkerPool> vhost_pool_;  // made with the first device; its threads start with it
  std::vector<std::unique_ptr<VhostUserBackend>> devices_;
  std::vector<std::string> device_tags_, device_labels_;  // for the log, per device
  std::vector<std::unique_ptr<FuseMount>> fuse_;
};

// Signals are taken synchronously by this thread; workers never see them.
// SIGUSR1 is how a finished virtio device tells main to look.
sigset_t take_signals() {
  ::signal(SIGPIPE, SIG_IGN);
  return block_signals({SIGINT, SIGTERM, SIGUSR1});
}

// Logs to syslog if asked, at the level asked, and says what was ignored.
void set_up_logging(Options& o) {
  if (o.syslog) {
    // Where logs go is no protection: without a syslog daemon, they stay on
    // stderr, with a warning, rather than fsd not starting.
    try {
      auto logger = std::make_shared<spdlog::logger>("fsd-syslog", std::make_shared<SyslogSink>("fsd"));
      logger->set_pattern("%v");
      spdlog::set_default_logger(logger);
    } catch (const std::runtime_error& e) {
      o.ignored.push_back(std::string(e.what()) + " (logging to stderr)");
    }
  }
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  for (const auto& why : o.ignored) spdlog::warn("ignored: {}", why);
}

// virtiofsd's --rlimit-nofile: the fd limit set to `wanted`, as far as the
// kernel and fsd's privileges allow.
void set_fd_limit(rlim_t wanted) {
  // The kernel's ceiling is fs.nr_open: more is taken as that, with a warning.
  rlim_t want = wanted;
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

// Enters the plan's sandbox, moving each export's root onto its mount
// there, and says what confines fsd now.
void confine(const Options& o, const Plan& plan, ExportSet& exports) {
  bool as_root = ::geteuid() == 0;
  if (o.sandbox == "chroot")
    spdlog::info("--sandbox chroot: fsd's namespace sandbox stands in for it (it confines fsd at least as much)");
  if (plan.sandbox == SandboxMode::kNamespace) {
    Credentials::snapshot_user_database();
    std::vector<ExportMount> mounts;
    for (Vfs* vfs : exports.all())
      mounts.push_back({.path = vfs->config().path, .read_only = vfs->read_only(), .devices = vfs->config().devices});
    auto roots = enter_sandbox(plan.sandbox, plan.seccomp, mounts, plan.namespace_ids, plan.capabilities);
    for (size_t i = 0; i < roots.size(); i++) exports.all()[i]->move_root(std::move(roots[i]));
    Credentials::reread();
    spdlog::info("sandbox: own {}pid, mount, network and IPC namespaces, an empty read-only root with each export "
                 "mounted on its own (nosuid; nodev unless it allows devices; read-only if it is); capabilities {}; "
                 "no_new_privs", as_root ? "" : "user, ", capability_names(plan.capabilities));
    if (!as_root) spdlog::info("user namespace: fsd is uid {} gid {} there", ::geteuid(), ::getegid());
  } else if (plan.sandbox == SandboxMode::kLandlock) {
    std::vector<LandlockTree> trees;
    for (Vfs* vfs : exports.all())
      trees.push_back({.dir = vfs->root_dir(), .writable = !vfs->read_only(), .devices = vfs->config().devices});
    LandlockResult got = confine_with_landlock(trees);
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
  if (Credentials::switching())
    spdlog::info("requests act as their callers (fsd runs as uid {})", Credentials::self()->uid());
  else
    spdlog::info("requests act as fsd's own user (uid {}): it cannot act as others ({})", Credentials::self()->uid(),
                 !as_root && plan.sandbox == SandboxMode::kNamespace ? "its user namespace maps no other ids"
                                                                           : "no CAP_SETUID/CAP_SETGID");
}

}  // namespace

int run(Options& o) {
  apply_compat(o);  // -o may set the log level
  set_up_logging(o);
  if (o.rlimit_nofile && *o.rlimit_nofile != 0) set_fd_limit(*o.rlimit_nofile);
  // What a supervisor handed over (systemd's socket activation and
  // readiness protocol), taken before anything else is opened.
  PassedSockets passed = PassedSockets::take();
  ReadyNotifier ready = ReadyNotifier::from_environment();
  // Clients send the modes they want, their umask applied already (FUSE's
  // kernel side, or the 9p client): fsd's own must not take bits away.
  ::umask(0);
  Plan plan = make_plan(o);
  ExportSet exports = open_exports(plan.exports, o.fd_budget, o.inode_file_handles);
  sigset_t sigs = take_signals();
  Servers servers(o, plan, exports);
  servers.bind(passed);
  confine(o, plan, exports);
  install_seccomp(plan.seccomp);
  if (plan.seccomp != SeccompAction::kNone) spdlog::info("seccomp: an allow-list of fsd's system calls ({})", o.seccomp.empty() ? "kill" : o.seccomp);
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

}  // namespace fsd
