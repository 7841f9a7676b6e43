// Plan: what vmlaunch will run for a spec: the fsd and QEMU command lines,
// the guest init's plan (/init.json) and a readable mount plan. Pure: it
// only decides; vmlaunch carries it out (and --dry-run prints it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "launcher/spec.h"

namespace fsd::launcher {

// Debian's ovmf package: UEFI firmware and its variables' template.
inline constexpr const char* kOvmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd";
inline constexpr const char* kOvmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd";

struct PlanInputs {
  std::string fsd_binary;
  std::string ovmf_code = kOvmfCode, ovmf_vars = kOvmfVars;
  std::string run_dir;      // where fsd's sockets go
  std::string initrd;       // the initramfs vmlaunch built
  std::string boot_kernel;  // what -kernel boots: the spec's kernel, or its uncompressed PVH form ("": the spec's)
  std::string module_dir;   // lib/modules/VERSION of the guest kernel
  Accel accel = Accel::kTcg;  // resolved (not kAuto)
  std::string extra_kernel_params;          // $QEMU_KERNEL_PARAMS
  std::vector<std::string> extra_qemu_args; // $QEMU_OPTS, split
  // $QEMU_NET_OPTS: more options of the user network's -netdev (e.g.
  // "hostfwd=tcp::2222-:22"), appended as NixOS's qemu-vm.nix does.
  std::string net_opts;
  // Where the guest's status port (kStatusPort) is written on the host ("":
  // no status port).
  std::string status_file;
  // Whose vlans these are: each user's vlan N is a multicast group of its
  // own (vlan_group), so one user's guests do not see another's.
  uint32_t uid = 0;
  std::string qmp_socket;    // QEMU's monitor socket ("": none)
  std::string relay_binary = "vmlaunch";  // runs guest->host port forwards (--relay-to)
  // Disk images as the runner prepared them: spec.root, spec.disks in
  // order, then one per spec.emptyDisks entry (created in the temporary
  // directory), then store.disk, then the store's image.
  struct Disk {
    std::string file;
    std::string format;  // "qcow2" or "raw"
    bool read_only = false;
    bool snapshot = false;
  };
  std::vector<Disk> disks;
};

struct Plan {
  std::vector<std::string> fsd_argv;    // ready-fd is added by the runner
  std::vector<std::string> qemu_argv;
  nlohmann::json guest;                 // the init's plan
  std::vector<std::string> modules;     // module names the guest loads
  std::vector<std::string> mount_plan;  // "virtiofs store -> /nix/.ro-store (ro)" ...
  std::string guest_agent_socket;       // QEMU listens there for a guest agent ("": none)
};

// fsd's 9p shares reach the guest on this vsock port of the host (one
// connection per mount), on a virtio-vsock device giving the guest kGuestCid.
inline constexpr unsigned kNinePPort = 564;
inline constexpr unsigned kGuestCid = 3;

// vlan N of `uid`: a multicast group on the loopback interface, which every
// QEMU on it joins (-netdev socket,mcast=): "230.U.U.N:21000", the middle
// bytes from the uid.
std::string vlan_group(uint32_t uid, unsigned vlan);

// The guest's second serial port: the guest init writes the command's exit
// status there, and QEMU into PlanInputs::status_file.
inline constexpr const char* kStatusPort = "/dev/ttyS1";
inline constexpr const char* kStatusPortAarch64 = "/dev/hvc0";  // a virtconsole: virt has one UART
// Where the initramfs holds store.registration's text (vmlaunch writes it).
inline constexpr const char* kGuestRegistration = "/vmlaunch/registration";

Plan make_plan(const Spec& spec, const PlanInputs& in);

}  // namespace fsd::launcher
