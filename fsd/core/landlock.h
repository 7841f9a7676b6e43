// Landlock (Linux 5.13 and later): how an fsd an ordinary user started
// confines itself without a user namespace. A user namespace would show
// every file the host's other users own as owned by 65534 (only fsd's own
// ids are mapped there), which a guest would see; Landlock changes no id.
//
// Once confined, fsd can still open files only beneath its exports (read
// only beneath read-only ones) and read /proc; it can execute nothing,
// create device nodes only where an export allows devices, and (Linux 6.7
// and later) bind or connect no TCP socket. Sockets, eventfds and guest
// memory it holds already are not files Landlock governs.
#pragma once

#include <string>
#include <vector>

namespace fsd {

// One tree fsd may use: `dir` an fd (O_PATH will do) on its root.
struct LandlockTree {
  int dir = -1;
  bool writable = false;
  bool devices = false;  // device nodes may be made (and used) beneath it
};

struct LandlockResult {
  int abi = 0;       // the kernel's Landlock ABI version; 0: none
  bool confined = false;
  std::string why;   // when not confined: the reason, for the log
};

// The kernel's Landlock ABI version, 0 where it has none (or it is off).
int landlock_abi();

// Confines the calling thread, and the threads it starts after, to `trees`
// plus reading /proc; sets no_new_privs (Landlock needs it). Returns
// unconfined, with the reason, where the kernel has no Landlock, or only
// its first version while a tree is writable (it forbids every rename and
// link between directories); throws std::runtime_error if a step fails
// on a kernel that has it.
LandlockResult confine_with_landlock(const std::vector<LandlockTree>& trees);

}  // namespace fsd
