// A seccomp allow-list of the system calls fsd makes once it serves (after
// the sandbox is set up). io_uring requests do not pass through seccomp;
// each ring is restricted to the opcodes fsd submits instead (Ring).
#pragma once

#include <string_view>

namespace fsd {

// What a call outside the list does: virtiofsd's --seccomp values.
//   kill: the process dies (SIGSYS); log: the call is allowed and logged by
//   the kernel (to find a missing entry); trap: SIGSYS to the thread;
//   none: no filter.
enum class SeccompAction { kNone, kKill, kLog, kTrap };

// Throws std::invalid_argument naming --seccomp.
SeccompAction parse_seccomp(std::string_view text);

// Which calls the filter allows: the server's, or the sandbox waiter's
// (signals, waiting for the server, exit).
enum class SeccompList { kServer, kWaiter };

// Installs the filter on the calling thread (threads started after inherit
// it). Needs no_new_privs or CAP_SYS_ADMIN. Throws std::runtime_error.
void install_seccomp(SeccompAction action, SeccompList list = SeccompList::kServer);

}  // namespace fsd
