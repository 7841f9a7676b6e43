// The local rules fsd applies for a caller where the kernel, seeing fsd's
// own capabilities, would not: shared by the Vfs's operations.
#pragma once

#include <sys/stat.h>

#include "fsd/core/credentials.h"

namespace fsd::vfs_rules {

// fsd keeps CAP_SYS_ADMIN and CAP_SETFCAP while it acts as a client (only
// the file-system capabilities follow fsuid), so the kernel would let any
// client at the privileged xattr namespaces: fsd applies the local rules
// itself. Only a caller acting as root may set or remove trusted.* and
// security.* (file capabilities among them) or see trusted.*.
inline bool privileged_caller() {
  const Credentials* who = Credentials::applied();
  return (who ? who->uid() : Credentials::self()->uid()) == 0;
}
// What a write, truncation or chown by a caller without CAP_FSETID takes
// away: set-user-ID, and set-group-ID if the group may execute (without
// group execute, set-group-ID means mandatory locking and stays).
inline mode_t setid_bits_to_drop(mode_t mode) {
  if (!S_ISREG(mode)) return 0;
  mode_t drop = mode & S_ISUID;
  if ((mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP)) drop |= S_ISGID;
  return drop;
}

}  // namespace fsd::vfs_rules
