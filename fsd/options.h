// fsd's command line as parsed: its own flags and virtiofsd's (see
// virtiofsd_compat.h), before make_plan (plan.h) checks them.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fsd/p9/session.h"
#include "fsd/transport/socket_server.h"

namespace CLI {
class App;
}

namespace fsd::cli {

struct Options {
  std::vector<std::string> exports;
  std::vector<std::string> listens;
  std::vector<std::string> fuse_mounts;
  std::vector<std::string> virtiofs_sockets;
  std::vector<std::string> virtio9p_sockets;
  std::vector<std::string> vsock_sockets;  // PATH[,cid=N][,port=P][,untrusted-as=UID:GID]
  std::string on_disconnect;  // "", "wait" or "exit"
  uint32_t msize_max = 1 << 20;
  unsigned threads = std::min(4u, std::max(1u, std::thread::hardware_concurrency()));
  unsigned fd_budget = 0;  // 0: from RLIMIT_NOFILE
  unsigned poll_us = 50;
  unsigned max_connections = fsd::SocketServer::kDefaultMaxConnections;
  uint32_t max_fids = fsd::p9::SessionConfig{}.max_fids;
  unsigned max_connections_per_peer = 0;  // 0: three quarters of max_connections
  unsigned frame_timeout = 30;  // seconds; 0: none (SocketServer::Timeouts)
  unsigned idle_timeout = 300;
  // Metadata calls (statx, openat2, mkdirat, ...) on warm dentries take
  // microseconds; through io_uring they are punted to io-wq threads, and the
  // extra wake-ups halved one connection's walk+getattr+clunk rate in
  // bench/run (2,813 vs 5,335 ops/s). Data I/O goes through io_uring either way.
  std::string metadata_io = "auto";
  std::string log_level = "info";
  std::optional<std::string> socket_mode, socket_group;  // of the unix sockets fsd creates
  // virtiofsd-compatible form
  std::string socket_path, shared_dir, cache;
  std::vector<std::string> compat_opts;  // each -o, comma-separated
  std::string sandbox;  // "": namespace when root (and nothing needs the host's mounts), else none
  std::string seccomp;  // "": kill inside the namespace sandbox, else none
  std::vector<std::string> translate_uid, translate_gid;  // rules for every export
  std::optional<std::string> xattrmap;                    // rules for every export
  std::vector<std::string> uid_map, gid_map;              // ids of fsd's user namespace
  std::vector<std::pair<std::string, std::string>> refused;  // security flags fsd cannot honour yet, and why
  int listen_fd = -1;
  int ready_fd = -1;
  bool readonly = false;
  bool print_capabilities = false;
  std::string inode_file_handles = "never";  // virtiofsd's --inode-file-handles (its default too)
  // virtiofsd's export flags, for every export
  bool direct_io = false, no_readdirplus = false, allow_mmap = false, posix_acl = false, submounts = false,
       writeback = false, security_label = false;
  std::optional<rlim_t> rlimit_nofile;  // virtiofsd's --rlimit-nofile (0: as it is)
  bool syslog = false;
  std::optional<std::string> device_tag;  // virtiofsd's --tag: the compat device's config space advertises it
  std::optional<std::string> modcaps;     // virtiofsd's: capabilities the sandbox keeps, changed
  std::vector<std::string> ignored;  // flags taken without effect, each with why (warned at start)
};

// Adds fsd's own flags to `app`, filling `o` (cli.cpp).
void add_options(CLI::App& app, Options& o);

// The export and device tag of virtiofsd's form.
constexpr const char* kCompatTag = "virtiofs";

}  // namespace fsd::cli
