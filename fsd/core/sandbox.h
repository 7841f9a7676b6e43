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

#include <string>
#include <string_view>

#include "fsd/core/seccomp.h"

namespace fsd {

enum class SandboxMode { kNone, kNamespace };

// "none" or "namespace"; throws std::invalid_argument naming --sandbox for
// anything else ("chroot", virtiofsd's other mode, says why fsd lacks it).
SandboxMode parse_sandbox(std::string_view text);

// Enters the sandbox; throws std::runtime_error naming the step that
// failed. Must be called while fsd has one thread. Returns in the server;
// the waiter never returns (`waiter_seccomp` is its filter).
void enter_sandbox(SandboxMode mode, SeccompAction waiter_seccomp);

// The capabilities a sandboxed fsd keeps, for its log and for tests: its
// file-system capabilities, setuid/setgid (to act as its callers), mknod
// (FIFOs), and setfcap (xattrs passed through).
std::string kept_capabilities();

}  // namespace fsd
