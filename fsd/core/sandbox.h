// The sandbox fsd enters once everything it serves is open, before any
// worker thread starts (capabilities are per thread; new threads inherit
// the sandbox's).
//
//   namespace: new pid, mount, network and IPC namespaces (started by an
//              ordinary user, first a user namespace: see NamespaceIds);
//              fsd serves as pid 1 of the new pid namespace,
//              while the process that started stays outside as a waiter
//              with no capabilities; the root becomes an empty read-only
//              tmpfs holding only /proc and the exports, each bound at
//              /exports/N of its own (nodev unless the export allows
//              devices, read-only for a read-only export, nosuid), so
//              that above an export's root lies only that empty root;
//              sockets and devices are reached through fds opened
//              before; capabilities cut
//              to those file serving needs, in the effective, permitted,
//              inheritable and bounding sets; no_new_privs.
//   landlock:  for an fsd an ordinary user started, where a user namespace
//              would show the host's other owners as 65534: fsd stays in
//              the host's namespaces and confines its own file access to
//              its exports with Landlock (fsd/core/landlock.h), with
//              no_new_privs.
//   none:      none of that.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "fsd/core/seccomp.h"

namespace fsd {

enum class SandboxMode { kNone, kNamespace, kLandlock };

// "none", "namespace" or "landlock" ("chroot", virtiofsd's other mode, is
// taken as namespace, which confines fsd at least as much); throws
// std::invalid_argument naming --sandbox for anything else.
SandboxMode parse_sandbox(std::string_view text);

// The ids an unprivileged fsd's sandbox user namespace maps (virtiofsd's
// --uid-map/--gid-map, ":INSIDE:HOST:COUNT:", repeatable). None given:
// fsd's own uid and gid, each as itself. Only fsd's own id (count 1) can
// be mapped by fsd itself; anything else is written by newuidmap/newgidmap
// (Debian's uidmap package) from the host's subordinate ids
// (/etc/subuid, /etc/subgid), and then fsd acts as its callers there.
struct IdRange {
  uint32_t inside = 0, host = 0, count = 0;
  bool operator==(const IdRange&) const = default;
};
struct NamespaceIds {
  std::vector<IdRange> uids, gids;
};

// Parses ":INSIDE:HOST:COUNT:" for `flag` (--uid-map or --gid-map); throws
// std::invalid_argument naming the flag and the text for anything else
// (a zero count, a range past 4294967295).
IdRange parse_namespace_map(std::string_view flag, std::string_view text);

// Checks one side's ranges: no two overlap inside or on the host, at most
// 340 (the kernel's limit). Throws std::invalid_argument naming `flag`.
void check_namespace_maps(std::string_view flag, const std::vector<IdRange>& ranges);

// Whether `ranges` map only `own` (count 1), which fsd writes itself.
bool maps_only(const std::vector<IdRange>& ranges, uint32_t own);

// The capabilities a sandboxed fsd keeps, as a mask of CAP_* bits: its
// file-system capabilities, setuid/setgid (to act as its callers), mknod
// (FIFOs), and setfcap (xattrs passed through).
uint64_t default_capabilities();
// virtiofsd's --modcaps: "+NAME:-NAME:..." adds to or takes from `base`
// (names as capabilities(7) gives them, with or without "cap_", in any
// case). Throws std::invalid_argument naming --modcaps.
uint64_t parse_modcaps(std::string_view text, uint64_t base);
// "chown,dac_override,...", for the log.
std::string capability_names(uint64_t mask);

// An export's directory, as the sandbox mounts it.
struct ExportMount {
  std::string path;       // looked up again inside the new mount namespace
  bool read_only = false;  // the mount is read-only
  bool devices = false;    // the mount keeps device nodes usable (no nodev)
};

// Enters the sandbox, keeping the capabilities in `keep`; throws
// std::runtime_error naming the step that failed. Must be called while fsd
// has one thread. Returns in the server, with an O_PATH fd on each of
// `exports`' root in the sandbox (in order; the caller checks that each is
// the directory it opened before); the waiter never returns
// (`waiter_seccomp` is its filter).
std::vector<Fd> enter_sandbox(SandboxMode mode, SeccompAction waiter_seccomp, const std::vector<ExportMount>& exports,
                              NamespaceIds ids = {}, uint64_t keep = default_capabilities());

}  // namespace fsd
