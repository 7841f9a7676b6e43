// The two small conversations vmlaunch has with the host side of a guest:
// QEMU's monitor (QMP), and the per-connection relay QEMU runs for a
// guest->host port forward.
#pragma once

#include <string>

namespace fsd::launcher {

// Asks QEMU to power the guest off through its monitor socket: the guest
// sees an ACPI power-button press. False if the monitor did not take it.
bool qmp_powerdown(const std::string& socket_path);

// `vmlaunch --relay-to HOST:PORT`: copies stdin to HOST:PORT and HOST:PORT
// to stdout, passing each side's end on (half-close), until both directions
// are done. Returns the process's exit status.
int relay(const std::string& host_port);

}  // namespace fsd::launcher
