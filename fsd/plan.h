// fsd's plan: the command line (Options, after virtiofsd's form is turned
// into fsd's by apply_compat), checked and decided, before anything is
// opened. Pure: the same options and identity give the same plan, and
// every refusal is a std::invalid_argument naming its flag.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fsd/core/sandbox.h"
#include "fsd/core/seccomp.h"
#include "fsd/options.h"
#include "fsd/transport/socket_server.h"
#include "fsd/uring/ring.h"
#include "fsd/vfs/export.h"
#include "fsd/vhost/vsock_device.h"

namespace fsd {

// A vhost-user socket passed by socket activation: TAG=systemd:NAME.
inline constexpr std::string_view kPassedPrefix = "systemd:";

// Who fsd runs as: what the plan's defaults and checks depend on.
struct Self {
  uid_t uid = 0;
  gid_t gid = 0;
  static Self current();
};

// The command line, checked: what to export and where to serve it.
struct Plan {
  std::vector<ExportConfig> exports;
  std::vector<ListenAddress> listens;
  std::vector<std::pair<std::string, std::string>> fuse_mounts, virtiofs_sockets, virtio9p_sockets;  // tag, path
  std::vector<vhost::VsockSocketSpec> vsock_sockets;
  Ring::MetadataIo metadata_io = Ring::MetadataIo::kAdaptive;
  SocketAccess socket_access;  // mode 0600 unless --socket-mode/--socket-group widen it
  SandboxMode sandbox = SandboxMode::kNone;
  SeccompAction seccomp = SeccompAction::kNone;
  NamespaceIds namespace_ids;
  uint64_t capabilities = default_capabilities();  // what the sandbox keeps
};

// Checks `o` (after apply_compat) into a plan; may fill in o.sandbox.
Plan make_plan(cli::Options& o, const Self& self = Self::current());

}  // namespace fsd
