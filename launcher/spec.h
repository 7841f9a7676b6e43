// Spec: what vmlaunch starts, read from a JSON file (documented field by
// field in the README; an example is in examples/).
//
// Every field is named once, in the schema in spec.cpp, which both reads a
// spec (parse_spec) and writes one (to_json, --print-spec). Each enum's
// names are in its table below, used by the schema and the plan alike.
//
// parse_spec() checks everything it can before anything starts: unknown
// fields, wrong types, a missing kernel, share sources that do not exist,
// duplicate tags, tags longer than the transport allows. Each problem is a
// SpecError whose message names the file and the field:
//     spec.json: shares[1].tag: "data" is used by shares[0] too
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/cache_policy.h"
#include "common/closure.h"
#include "common/enum_names.h"
#include "launcher/registration.h"

namespace fsd::launcher {

struct SpecError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Accel { kAuto, kKvm, kTcg };
enum class Proto { kVirtiofs, k9p, k9pQemu };
using Cache = fsd::CachePolicy;  // fsd's --export cache= takes the same names
enum class Console { kSerial, kQuiet, kStage1 };  // stage1: quiet, and the init tells each step
enum class Network { kNone, kUser };
enum class Writable { kNone, kTmpfs, kDisk };  // store.writable
enum class SystemMode { kAuto, kExec, kBoot };  // auto: exec with a command, boot without
enum class StoreImage { kNone, kErofs, kSquashfs };  // store.image
enum class DiskInterface { kVirtio, kScsi, kIde };   // diskInterface: how every disk is attached
enum class Firmware { kBios, kUefi };
enum class Arch { kX86_64, kAarch64 };  // the guest's

inline constexpr EnumName<Accel> kAccelNames[] = {{"auto", Accel::kAuto}, {"kvm", Accel::kKvm}, {"tcg", Accel::kTcg}};
inline constexpr EnumName<Proto> kProtoNames[] = {
    {"virtiofs", Proto::kVirtiofs}, {"9p", Proto::k9p}, {"9p-qemu", Proto::k9pQemu}};
inline constexpr EnumName<Console> kConsoleNames[] = {
    {"serial", Console::kSerial}, {"quiet", Console::kQuiet}, {"stage1", Console::kStage1}};
inline constexpr EnumName<Network> kNetworkNames[] = {{"none", Network::kNone}, {"user", Network::kUser}};
inline constexpr EnumName<SystemMode> kSystemModeNames[] = {
    {"auto", SystemMode::kAuto}, {"exec", SystemMode::kExec}, {"boot", SystemMode::kBoot}};
inline constexpr EnumName<StoreImage> kStoreImageNames[] = {
    {"none", StoreImage::kNone}, {"erofs", StoreImage::kErofs}, {"squashfs", StoreImage::kSquashfs}};
inline constexpr EnumName<Writable> kWritableNames[] = {
    {"tmpfs", Writable::kTmpfs}, {"none", Writable::kNone}, {"disk", Writable::kDisk}};
constexpr std::span<const EnumName<Accel>> names(Accel) { return kAccelNames; }
constexpr std::span<const EnumName<Proto>> names(Proto) { return kProtoNames; }
constexpr std::span<const EnumName<Console>> names(Console) { return kConsoleNames; }
constexpr std::span<const EnumName<Network>> names(Network) { return kNetworkNames; }
constexpr std::span<const EnumName<Writable>> names(Writable) { return kWritableNames; }
constexpr std::span<const EnumName<SystemMode>> names(SystemMode) { return kSystemModeNames; }
constexpr std::span<const EnumName<StoreImage>> names(StoreImage) { return kStoreImageNames; }
inline constexpr EnumName<DiskInterface> kDiskInterfaceNames[] = {
    {"virtio", DiskInterface::kVirtio}, {"scsi", DiskInterface::kScsi}, {"ide", DiskInterface::kIde}};
constexpr std::span<const EnumName<DiskInterface>> names(DiskInterface) { return kDiskInterfaceNames; }
inline constexpr EnumName<Firmware> kFirmwareNames[] = {{"bios", Firmware::kBios}, {"uefi", Firmware::kUefi}};
constexpr std::span<const EnumName<Firmware>> names(Firmware) { return kFirmwareNames; }
inline constexpr EnumName<Arch> kArchNames[] = {{"x86_64", Arch::kX86_64}, {"aarch64", Arch::kAarch64}};
constexpr std::span<const EnumName<Arch>> names(Arch) { return kArchNames; }

struct DiskSpec {
  std::string file;
  uint64_t size_mib = 0;  // 0: the file must exist; else it is created when missing
  bool read_only = false;
  bool snapshot = false;
  std::string fs_type;      // "": a bare block device; else mounted (ext4, xfs, ...)
  std::string mount_point;  // where the guest mounts it (needs fs_type)
  std::string label;        // the file system's label when vmlaunch formats it
  bool auto_format = false; // format a new or empty image with fs_type (see prepare_disk)
};

struct StoreSpec {
  std::string path;  // host store; --store overrides
  std::string mount_point = "/nix/store";
  Writable writable = Writable::kTmpfs;  // the overlay's upper: tmpfs, a disk, or no overlay
  DiskSpec disk;                         // writable: "disk"
  Cache cache = Cache::kAlways;
  Proto proto = Proto::kVirtiofs;
  uint32_t msize = 512 * 1024;  // 9p only
  // An image of the store (made on the host, cached) on a read-only disk
  // in place of the share.
  StoreImage image = StoreImage::kNone;
  // A list of store paths (nix-store -qR's output, a closureInfo, or a
  // directory of lists): the guest sees only these in the store (fsd's
  // closure view). "": the whole store. parse_spec reads it into
  // closure_list, which vmlaunch uses from there.
  std::string closure;
  std::shared_ptr<const fsd::Closure> closure_list;
  // What the guest's Nix database holds as valid, loaded at boot by the
  // system's own `nix-store --load-db`: a registration (closureInfo's
  // `registration` file, or its directory), or a list of store paths that
  // vmlaunch registers itself (their NAR hashes and references computed as
  // Nix does). "": none. parse_spec resolves it to the file it reads, and
  // says which of the two that is.
  std::string registration;
  bool registration_is_list = false;
  // What parse_spec read and checked there: a registration's paths, or a
  // list's store names (which vmlaunch registers).
  std::vector<ValidPath> registration_given;
  std::vector<std::string> registration_names;
};

struct ShareSpec {
  std::string tag;
  std::string source;  // host directory
  std::string target;  // guest mount point
  bool read_only = false;
  Proto proto = Proto::kVirtiofs;
  Cache cache = Cache::kAuto;
  uint32_t msize = 512 * 1024;  // 9p only
  bool writeback = false;       // virtio-fs only: the guest's page cache holds writes (fsd's export option)
  std::string closure;          // the store's share only: fsd's closure view (StoreSpec::closure)
};

struct Endpoint {
  std::string address;
  uint16_t port = 0;
};

struct ForwardPort {
  bool from_host = true;  // "from": "host" | "guest"
  std::string proto = "tcp";
  Endpoint host, guest;
};

// A system closure laid out as a NixOS toplevel: kernel, initrd,
// kernel-modules/lib/modules/VERSION, etc/, sw/bin/, init; or a Guix
// system: parameters (naming the kernel and its arguments) and boot. It
// must be in the store, where the guest finds it.
struct SystemSpec {
  std::string path;  // "": none; --system overrides
  SystemMode mode = SystemMode::kAuto;
  // Found by parse_spec:
  std::string in_guest;  // the toplevel's path in the guest (under the store's mount point)
  bool has_bash = false, has_sh = false, has_env = false, has_modules = false, has_etc = false, has_init = false;
  bool has_nix_store = false;  // sw/bin/nix-store (what loads store.registration)
  // Its kernel-params file, on one line ("" if it has none): boot mode
  // passes them to the kernel, as qemu-vm.nix does. For a Guix system: its
  // parameters' kernel-arguments.
  std::string kernel_params;
  // A Guix system: a `parameters` file (its boot parameters) and a `boot`
  // script, which boot mode runs as PID 1 (has_init says it is there).
  bool guix = false;
  std::string guix_root;  // the parameters' root-device, for --root= ("": none given)
};

struct Spec {
  std::string name = "vm";
  uint64_t memory_mib = 1024;
  unsigned cpus = 1;
  Accel accel = Accel::kAuto;
  SystemSpec system;
  // The root file system on a disk (boot mode): the system's state kept
  // across runs, as qemu-vm.nix's diskImage. file "": none.
  DiskSpec root;
  std::string kernel, initrd, modules, cmdline;  // kernel and modules default to the system's
  StoreSpec store;
  std::vector<ShareSpec> shares;  // includes xchg and shared
  std::optional<std::string> command_shell;  // "command": "string for sh -c"
  std::vector<std::string> command_argv;     // "command": ["argv", ...]
  std::map<std::string, std::string> env;
  unsigned timeout_s = 0;  // 0: none
  Console console = Console::kSerial;
  Network network = Network::kNone;
  std::vector<ForwardPort> forward_ports;
  // Virtual networks shared with other vmlaunch guests on this host, as
  // qemu-vm.nix's vlans: on vlan N this guest is 192.168.N.<vlan_host>.
  std::vector<uint64_t> vlans;
  unsigned vlan_host = 0;
  // The guest's architecture: x86_64 (q35) or aarch64 (QEMU's virt
  // machine, -cpu max, the console on ttyAMA0). qemu.binary defaults to
  // its qemu-system-ARCH.
  Arch arch = Arch::kX86_64;
  std::string qemu_binary;
  std::vector<std::string> qemu_extra_args;
  std::vector<DiskSpec> disks;
  std::vector<uint64_t> empty_disks_mib;
  bool graphics = false;
  // With graphics: the display's size (0: QEMU's default), and a USB
  // tablet, so that the pointer follows the viewer's (as qemu-vm.nix).
  struct Resolution {
    uint64_t x = 0, y = 0;
  } resolution;
  bool usb_tablet = true;
  DiskInterface disk_interface = DiskInterface::kVirtio;
  // A virtio-serial channel for a QEMU guest agent in the guest
  // (org.qemu.guest_agent.0), its socket at guest_agent_socket ("": in
  // vmlaunch's run directory).
  bool guest_agent = false;
  std::string guest_agent_socket;
  // The firmware: SeaBIOS, or OVMF (Debian's ovmf) with the VM's own
  // persistent variables file (efiVars; $NIX_EFI_VARS; else
  // ./NAME-efi-vars.fd, as qemu-vm.nix), made from OVMF's template when
  // missing. bootLoader: the first disk's bootloader boots it (no -kernel,
  // no vmlaunch init, no command), as qemu-vm.nix's useBootLoader.
  Firmware firmware = Firmware::kBios;
  std::string efi_vars;
  bool boot_loader = false;
  bool rng = true;     // a virtio-rng device, so the guest has entropy from the start
  std::string nix_db;  // the host's Nix database to share ("": none)

  bool has_command() const { return command_shell.has_value() || !command_argv.empty(); }
};

inline constexpr const char* kNixDb = "/nix/var/nix/db";

// Longest tags the transports accept (virtio-fs config space: 36 bytes).
inline constexpr size_t kMaxVirtiofsTag = 36;
inline constexpr size_t kMaxNinePTag = 31;

struct SpecContext {
  std::string file = "spec.json";  // named in errors
  std::string store_override;      // --store
  std::string system_override;     // --system
  std::optional<SystemMode> system_mode_override;  // --system-mode
  std::string root_disk_override;  // $NIX_DISK_IMAGE
  std::string efi_vars_override;   // $NIX_EFI_VARS
  std::string registration_override;  // --registration
  std::string shared_dir;          // $SHARED_DIR (default: xchg's directory)
  std::string xchg_dir;            // the fresh xchg directory
};

// Parses and validates; fills defaults. Throws SpecError.
Spec parse_spec(const nlohmann::json& j, const SpecContext& ctx);
// Reads the file first (a missing file or bad JSON is a SpecError too).
Spec load_spec(const std::string& path, const SpecContext& ctx);
// The effective spec, defaults included, as JSON (--print-spec).
nlohmann::json to_json(const Spec& s);

}  // namespace fsd::launcher
