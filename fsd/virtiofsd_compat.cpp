#include "fsd/virtiofsd_compat.h"

#include <algorithm>
#include <stdexcept>
#include <string_view>

namespace fsd::cli {
namespace {

// The virtiofsd-style flags become one export and one virtio-fs socket.
// Its -o options either act as their flags do, or are taken without effect
// where that changes nothing fsd promises (each with a warning saying why);
// any other is refused: an option that promises a protection fsd does not
// give would be hidden by silence.
constexpr std::pair<std::string_view, std::string_view> kIgnoredOptions[] = {
    {"no_writeback", ""},
    {"xattr", ""},
    {"no_xattr", "fsd always serves xattrs (privileged namespaces only to privileged callers)"},
    {"posix_lock", "fsd takes no host locks: POSIX locks stay local to each guest"},
    {"no_posix_lock", ""},
    {"flock", "fsd takes no host locks: flock() locks stay local to each guest"},
    {"no_flock", ""},
    {"killpriv_v2", ""},
    {"no_killpriv_v2", "fsd always clears set-id bits itself (FUSE_HANDLE_KILLPRIV_V2)"},
    {"readdirplus", ""},
    {"norace", ""},
};

// Checks the security flags given in virtiofsd's form; throws naming the
// first that fsd cannot honour.
void refuse_unsupported(const Options& o) {
  auto refuse = [](const std::string& flag, const std::string& why) {
    throw std::invalid_argument(flag + ": not supported by fsd (" + why + "); refusing to run without it");
  };
  if (!o.refused.empty()) refuse(o.refused.front().first, o.refused.front().second);
}

// One virtiofsd -o option; false if fsd does not know it.
bool apply_compat_option(Options& o, std::string_view opt, std::string& source, std::string& cache) {
  auto value = [&](std::string_view prefix) { return std::string(opt.substr(prefix.size())); };
  if (opt.starts_with("source=")) {
    source = value("source=");
  } else if (opt.starts_with("cache=")) {
    cache = value("cache=");
  } else if (opt.starts_with("sandbox=")) {
    o.sandbox = value("sandbox=");
  } else if (opt.starts_with("seccomp=")) {
    o.seccomp = value("seccomp=");
  } else if (opt.starts_with("xattrmap=")) {
    o.xattrmap = value("xattrmap=");
  } else if (opt == "debug") {
    o.log_level = "debug";
  } else if (opt.starts_with("log_level=")) {  // the C virtiofsd's levels
    std::string level = value("log_level=");
    if (level == "err") level = "error";
    if (level != "error" && level != "warn" && level != "info" && level != "debug")
      throw std::invalid_argument("-o log_level=" + level + ": expected err, warn, info or debug");
    o.log_level = level;
  } else if (opt == "allow_direct_io") {
    o.direct_io = true;
  } else if (opt == "no_readdirplus") {
    o.no_readdirplus = true;
  } else if (opt.starts_with("modcaps=")) {
    o.modcaps = value("modcaps=");
  } else if (opt == "announce_submounts") {
    o.submounts = true;
  } else if (opt == "writeback") {
    o.writeback = true;
  } else if (opt == "security_label") {
    o.security_label = true;
  } else if (opt == "posix_acl") {
    o.posix_acl = true;
  } else if (opt == "no_posix_acl") {
    o.posix_acl = false;  // the default
  } else if (opt.starts_with("timeout=")) {
    o.ignored.push_back("-o " + std::string(opt) + ": fsd's cache policies set their own timeouts (use cache=)");
  } else if (auto it = std::find_if(std::begin(kIgnoredOptions), std::end(kIgnoredOptions),
                                    [&](const auto& e) { return e.first == opt; });
             it != std::end(kIgnoredOptions)) {
    if (!it->second.empty()) o.ignored.push_back("-o " + std::string(opt) + ": " + std::string(it->second));
  } else {
    return opt.empty();
  }
  return true;
}

}  // namespace

void apply_compat(Options& o) {
  refuse_unsupported(o);
  bool compat = !o.socket_path.empty() || o.listen_fd >= 0 || !o.shared_dir.empty() || !o.compat_opts.empty();
  if (!compat) return;
  std::string source = o.shared_dir, cache = o.cache;
  for (const auto& opts : o.compat_opts) {
    std::string_view rest = opts;
    while (!rest.empty()) {  // -o source=DIR,cache=auto,...
      auto comma = rest.find(',');
      std::string_view opt = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      if (!apply_compat_option(o, opt, source, cache))
        throw std::invalid_argument("-o " + std::string(opt) + ": not supported by fsd (fsd --help lists the -o "
                                    "options it takes); refusing rather than ignoring it");
    }
  }
  if (source.empty()) throw std::invalid_argument("--shared-dir (or -o source=DIR) is required with --socket-path/--fd");
  if (o.device_tag && (o.device_tag->empty() || o.device_tag->size() > 36))
    throw std::invalid_argument("--tag '" + *o.device_tag + "': a virtio-fs tag is 1 to 36 bytes");
  if (o.socket_path.empty() && o.listen_fd < 0) throw std::invalid_argument("--socket-path or --fd is required with --shared-dir");
  if (cache == "none") cache = "never";
  if (cache == "metadata") cache = "auto";
  std::string spec = std::string(kCompatTag) + "=" + source + (o.readonly ? ",ro" : "") + (cache.empty() ? "" : ",cache=" + cache);
  o.exports.push_back(spec);
  if (!o.socket_path.empty()) o.virtiofs_sockets.push_back(std::string(kCompatTag) + "=" + o.socket_path);
  if (o.on_disconnect.empty()) o.on_disconnect = "exit";  // what virtiofsd does
}

// virtiofsd's command line, for drop-in use.
void add_virtiofsd_options(CLI::App& app, Options& o) {
  auto* compat = app.add_option_group("virtiofsd-compatible", "The command line of virtiofsd, for drop-in use");
  compat->add_option("--socket-path", o.socket_path, "vhost-user socket to listen on");
  compat->add_option("--fd", o.listen_fd, "An already listening vhost-user socket (as libvirt passes it)");
  compat->add_option("--shared-dir", o.shared_dir, "Directory to share");
  compat->add_option("--cache", o.cache, "never (or none), auto, metadata (as auto), always")
      ->check(CLI::IsMember({"never", "none", "auto", "metadata", "always"}));
  compat->add_option("-o", o.compat_opts,
                     "Options, comma-separated (repeatable): source=DIR, cache=, sandbox=, seccomp=, xattrmap=, "
                     "log_level=, debug, allow_direct_io, no_readdirplus, posix_acl, announce_submounts, writeback, "
                     "security_label as "
                     "their flags; xattr, killpriv_v2, "
                     "readdirplus and no_posix_lock/no_flock/no_writeback are what fsd does; "
                     "no_killpriv_v2, posix_lock, flock, no_xattr and timeout= are ignored "
                     "with a warning; anything else is refused");
  compat->add_option("--socket", o.socket_path, "The same as --socket-path (virtiofsd's older name)");
  compat->add_flag("--readonly", o.readonly, "Share read-only");
  compat->add_option("--modcaps", o.modcaps,
                     "Change the capabilities the sandbox keeps: +NAME adds, -NAME takes away, ':' between (e.g. "
                     "-mknod:-setfcap); needs --sandbox namespace")
      ->type_name("+CAP:-CAP");
  compat->add_option("--tag", o.device_tag,
                     "The mount tag the virtio-fs device advertises in its config space (VHOST_USER_PROTOCOL_F_CONFIG), "
                     "for VMMs that read it (crosvm); QEMU takes vhost-user-fs-pci's tag= instead. At most 36 bytes")
      ->type_name("TAG");
  compat->add_flag("--allow-direct-io", o.direct_io,
                   "Honour O_DIRECT from clients (default: drop it, as virtiofsd does), on every export");
  compat->add_flag("--no-readdirplus", o.no_readdirplus, "Do not offer READDIRPLUS to FUSE/virtio-fs clients, on every export");
  compat->add_flag("--announce-submounts", o.submounts,
                   "Announce host mount points inside exports to virtio-fs guests, which mount them with their own "
                   "device numbers (FUSE_ATTR_SUBMOUNT), on every export (export option submounts)");
  compat->add_flag("--posix-acl", o.posix_acl,
                   "FUSE/virtio-fs clients enforce POSIX ACLs and fsd applies their umask where no default ACL does, "
                   "on every export (export option posix-acl); not with --translate-uid/-gid");
  compat->add_flag("--allow-mmap", o.allow_mmap,
                   "Let clients mmap files under cache=never (FUSE_DIRECT_IO_ALLOW_MMAP, guests with Linux 6.6 and later)");
  compat->add_option("--rlimit-nofile", o.rlimit_nofile,
                     "Set RLIMIT_NOFILE (soft and hard) to this before opening anything (0: leave it); fsd's fd "
                     "budget then fits in it");
  compat->add_flag("--syslog", o.syslog, "Log to syslog (facility daemon) instead of stderr");
  compat->add_flag_callback("-d", [&o] { o.log_level = "debug"; }, "The same as --log-level debug");
  compat->add_flag("-f")->description("Run in the foreground: fsd always does");
  compat->add_flag("--preserve-noatime")
      ->description("Keep clients' O_NOATIME: fsd always does, and opens without it where the host refuses it (EPERM)");
  compat->add_option_function<unsigned>(
             "--thread-pool-size", [&o](unsigned n) { o.threads = std::max(1u, n); },
             "Worker threads (0, virtiofsd's \"no pool\": one worker serves the queues)")
      ->check(CLI::Range(0u, 256u));
  compat->add_flag("--print-capabilities", o.print_capabilities, "Print the vhost-user back-end capabilities (JSON) and exit");
  compat->add_option("--inode-file-handles", o.inode_file_handles,
                     "How nodes whose cached fd was closed are reopened. never (default): by name, checked to be "
                     "the same inode; prefer: by file handle where the file system has them (needs "
                     "CAP_DAC_READ_SEARCH), else by name; mandatory: never by name (an export without handles fails "
                     "to start, a node without one fails its lookup)")
      ->check(CLI::IsMember({"never", "prefer", "mandatory"}));
  compat->add_flag("--xattr")->description("Serve xattrs: fsd always does (privileged namespaces only to privileged callers)");
  compat->add_flag("--killpriv-v2")
      ->description("Clear set-id bits on write, truncate and chown as the kernel does: fsd always does");
  compat->add_flag("--writeback", o.writeback,
                   "FUSE/virtio-fs clients cache written data and send it later in large writes "
                   "(FUSE_WRITEBACK_CACHE), on every export (export option writeback)");
  for (auto [flag, why] : {std::pair{"--no-killpriv-v2", "fsd always clears set-id bits itself (FUSE_HANDLE_KILLPRIV_V2)"},
                           {"--no-announce-submounts", ""}}) {
    std::string f = flag, w = why;
    compat->add_flag_callback(flag, [&o, f, w] { if (!w.empty()) o.ignored.push_back(f + ": " + w); },
                              w.empty() ? "Accepted (fsd's behaviour)" : "Ignored, with a warning: " + w);
  }
  compat->add_flag("--security-label", o.security_label,
                   "Set the security label a client's LSM gives each new file (FUSE_SECURITY_CTX: security.selinux "
                   "or security.SMACK64, through the xattr map) before the file's name appears, on every export "
                   "(export option security-label); fsd fails to start where the host cannot hold the label");
  for (auto [flag, why] : {std::pair{"--migration-mode", "fsd cannot migrate a virtio-fs device's state"},
                           {"--migration-on-error", "fsd cannot migrate a virtio-fs device's state"},
                           {"--migration-verify-handles", "fsd cannot migrate a virtio-fs device's state"},
                           {"--migration-confirm-paths", "fsd cannot migrate a virtio-fs device's state"}}) {
    std::string f = flag, w = why;
    bool takes_value = f == "--migration-mode" || f == "--migration-on-error";
    auto refuse = [&o, f, w] { o.refused.emplace_back(f, w); };
    if (takes_value)
      compat->add_option_function<std::string>(f, [refuse](const std::string&) { refuse(); }, "Refused: " + w);
    else
      compat->add_flag_callback(f, refuse, "Refused: " + w);
  }
  compat->add_option("--uid-map", o.uid_map,
                     "Unprivileged fsd: map host uids into the user namespace of its sandbox (repeatable; implies "
                     "--sandbox namespace). Only its own uid, count 1: fsd writes the map itself; ranges of "
                     "subordinate uids (/etc/subuid): through newuidmap, and requests then act as their callers")
      ->type_name(":INSIDE:HOST:COUNT:");
  compat->add_option("--gid-map", o.gid_map, "Likewise for gids (newgidmap, /etc/subgid)")->type_name(":INSIDE:HOST:COUNT:");
  compat->add_option("--xattrmap", o.xattrmap,
                     "Rename, hide or refuse xattrs between clients and the host, for every export (virtiofsd's "
                     "rules: e.g. ':map:security.:user.guest.:' keeps a guest's security.* under user.guest. on the host)")
      ->type_name("RULES");
  compat->add_option("--translate-uid", o.translate_uid,
                     "Translate uids between clients and the host, for every export (repeatable): "
                     "guest|host|map|squash-guest|squash-host:FROM:TO:COUNT, or forbid-guest:FROM:COUNT")
      ->type_name("RULE");
  compat->add_option("--translate-gid", o.translate_gid, "Translate gids likewise (repeatable)")->type_name("RULE");
}

}  // namespace fsd::cli
