// The sandbox fsd enters once everything it serves is open, before any
// worker thread starts (capabilities are per thread; new threads inherit
// the sandbox's).
//
//   namespace: new pid, mount, network and IPC namespaces (started by an
//              ordinary user, first a user namespace mapping only its own
//              uid and gid); fsd serves as pid 1 of the new pid namespace,
//              while the process that started stays outside as a waiter
//              with no capabilities; the root becomes an empty read-only
//              tmpfs holding only /proc (fsd reaches its exports, sockets
//              and devices through fds opened before); capabilities cut
//              to those file serving needs, in the effective, permitted,
//              inheritable and bounding sets; no_new_privs.
//   none:      none of that.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "fsd/core/seccomp.h"

namespace fsd {

enum class SandboxMode { kNone, kNamespace };

// "none" or "namespace"; throws std::invalid_argument naming --sandbox for
// anything else ("chroot", virtiofsd's other mode, says why fsd lacks it).
SandboxMode parse_sandbox(std::string_view text);

// What an unprivileged fsd's own uid and gid are inside the user namespace
// of its sandbox (virtiofsd's --uid-map/--gid-map with one id): by
// default, themselves.
struct NamespaceIds {
  std::optional<uint32_t> uid, gid;
};

// Parses virtiofsd's ":INSIDE:HOST:COUNT:" for `flag` (--uid-map or
// --gid-map). Only fsd's own id (`own`) with COUNT 1 can be mapped without
// newuidmap/newgidmap and subordinate ids, which fsd does not use; anything
// else throws std::invalid_argument naming the flag and why.
uint32_t parse_namespace_map(std::string_view flag, std::string_view text, uint32_t own);

// Enters the sandbox; throws std::runtime_error naming the step that
// failed. Must be called while fsd has one thread. Returns in the server;
// the waiter never returns (`waiter_seccomp` is its filter).
void enter_sandbox(SandboxMode mode, SeccompAction waiter_seccomp, NamespaceIds ids = {});

// The capabilities a sandboxed fsd keeps, for its log and for tests: its
// file-system capabilities, setuid/setgid (to act as its callers), mknod
// (FIFOs), and setfcap (xattrs passed through).
std::string kept_capabilities();

}  // namespace fsd
