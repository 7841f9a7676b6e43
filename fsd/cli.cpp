// fsd's own command line (virtiofsd's is in virtiofsd_compat.cpp).
#include <CLI/CLI.hpp>

#include "fsd/options.h"

#ifndef FSD_VERSION
#define FSD_VERSION "0.0.0"
#endif

namespace fsd::cli {

namespace {

// How much fsd serves at once, and how long it waits.
void add_limit_options(CLI::App& app, Options& o) {
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
}

// Who may connect, and what confines fsd.
void add_confinement_options(CLI::App& app, Options& o) {
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
}

}  // namespace

void add_options(CLI::App& app, Options& o) {
  app.set_version_flag("-V,--version", std::string("fsd ") + FSD_VERSION);
  app.add_option("--export", o.exports,
                 "Export a host directory: TAG=PATH[,ro][,cache=never|auto|always][,devices][,direct-io]"
                 "[,no-readdirplus][,allow-mmap][,posix-acl][,submounts][,writeback][,security-label][,translate-uid=RULE][,translate-gid=RULE]"
                 "[,xattrmap=RULES][,closure=FILE] (repeatable); ',,' is a comma of PATH or FILE. 9p clients attach with "
                 "aname TAG (or PATH). Read-only exports default to cache=always. closure=FILE (read-only exports) "
                 "shows in the root only the store paths FILE lists, one per line as nix-store -qR prints them "
                 "(or a closureInfo directory): every other top-level name is absent. devices lets root callers create device nodes (refused otherwise). "
                 "direct-io, no-readdirplus, allow-mmap, posix-acl, submounts, writeback, security-label, translate-uid/-gid "
                 "and xattrmap are as virtiofsd's --allow-direct-io, --no-readdirplus, --allow-mmap, --posix-acl, "
                 "--announce-submounts, --writeback, --security-label, --translate-uid/-gid and --xattrmap, for this "
                 "export only.")
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
  add_limit_options(app, o);
  add_confinement_options(app, o);
  app.add_option("--ready-fd", o.ready_fd, "Write \"ready\" to this fd once every socket accepts, then close it");
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
}


}  // namespace fsd::cli
