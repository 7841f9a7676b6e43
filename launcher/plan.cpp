#include "launcher/plan.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "launcher/guest/guest_plan.h"

namespace fsd::launcher {
namespace {

GuestMount mount(const std::string& fstype, const std::string& source, const std::string& target,
                 const std::string& options, bool ro) {
  return GuestMount{.fstype = fstype, .source = source, .target = target, .options = options,
                    .flags = ro ? std::vector<std::string>{"ro"} : std::vector<std::string>{}};
}

// QEMU option values separate fields with commas; a comma inside a value is doubled.
std::string qemu_escape(const std::string& v) {
  std::string out;
  for (char c : v) out += c == ',' ? std::string(",,") : std::string(1, c);
  return out;
}
// KEY=VALUE of a QEMU option list, the value escaped: a comma in a spec's
// path must not start an option of its own.
std::string opt(std::string_view key, const std::string& value) { return std::string(key) + "=" + qemu_escape(value); }
// One word for the command QEMU's guestfwd runs (which splits it as a shell
// would, quotes and all): quoted so that nothing in it is a shell's.
std::string shell_word(const std::string& v) {
  std::string out = "'";
  for (char c : v) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The guest's 9p cache mode for a cache policy.
const char* nine_p_cache(Cache c) { return c == Cache::kNever ? "none" : c == Cache::kAuto ? "mmap" : "loose"; }

// Boot mode: where the system's root is put together.
constexpr const char* kNewRoot = "/sysroot";

// The guest's name of the n-th virtio disk: vda ... vdz, vdaa, ...
std::string disk_device(size_t n) {
  std::string letters;
  for (size_t i = n + 1; i > 0; i = (i - 1) / 26) letters.insert(letters.begin(), static_cast<char>('a' + (i - 1) % 26));
  return "/dev/vd" + letters;
}

// The n-th disk's World Wide Name on SCSI and IDE: NAA 5 with a made-up
// company id, the disk's number below it. The guest sees it as the disk's
// /sys/block/*/device/wwid, "naa." and these hex digits.
std::string disk_wwn(size_t n) {
  char b[32];
  std::snprintf(b, sizeof b, "0x5%06x%09llx", 0xf5d000u, static_cast<unsigned long long>(n + 1) & 0xfffffffffull);
  return b;
}

// q35's AHCI controller: one disk per port.
constexpr size_t kAhciPorts = 6;

std::string hex2(unsigned v) {
  char b[3];
  std::snprintf(b, sizeof b, "%02x", v & 0xff);
  return b;
}

// The guest's MAC on a vlan, as qemu-vm.nix numbers them: 52:54:00:12:VLAN:HOST.
std::string vlan_mac_of(unsigned vlan, unsigned host) { return "52:54:00:12:" + hex2(vlan) + ":" + hex2(host); }

// Plan is built in steps that share what they decide here.
struct Builder {
  const Spec& s;
  const PlanInputs& in;
  Plan& p;
  GuestPlan guest;
  // Every file-system share the guest mounts, the store and the Nix database
  // first, each mounted at its target.
  std::vector<ShareSpec> transports;
  std::vector<std::pair<std::string, std::string>> devices;  // virtio-fs: tag, socket
  bool fsd_9p = false, qemu_9p = false, net = false;
  std::string vsock_socket = in.run_dir + "/vsock.sock";
  // The store's overlay: the read-only share, and the upper's file system.
  std::string ro_store, rw_store;

  std::string vlan_mac(unsigned vlan) const { return vlan_mac_of(vlan, s.vlan_host); }

  // With a system: exec (vm-exec's context around the command) or boot
  // (the system's own init); auto picks exec when there is a command.
  bool has_system() const { return !s.system.path.empty(); }
  bool boot() const {
    return has_system() && (s.system.mode == SystemMode::kBoot || (s.system.mode == SystemMode::kAuto && !s.has_command()));
  }
  bool exec_system() const { return has_system() && !boot(); }
  bool aarch64() const { return s.arch == Arch::kAarch64; }

  void collect_shares() {
    std::string parent = std::filesystem::path(s.store.mount_point).parent_path().string();
    if (parent == "/") parent.clear();
    bool overlay = s.store.writable != Writable::kNone;
    ro_store = overlay ? parent + "/.ro-store" : s.store.mount_point;
    rw_store = parent + "/.rw-store";
    // Booted, a NixOS system finds its store by qemu-vm.nix's tag.
    if (s.store.image == StoreImage::kNone)
      transports.push_back({.tag = boot() ? "nix-store" : "store", .source = s.store.path, .target = ro_store,
                            .read_only = true, .proto = s.store.proto, .cache = s.store.cache, .msize = s.store.msize,
                            .closure = s.store.closure});
    if (!s.nix_db.empty()) transports.push_back({"nix-db", s.nix_db, "/nix/.ro-db", true, Proto::kVirtiofs, Cache::kAuto});
    transports.insert(transports.end(), s.shares.begin(), s.shares.end());
  }

  // fsd: every virtiofs share on its own socket; 9p shares are exports
  // attached by tag on one 9p socket.
  void fsd_command() {
    p.fsd_argv = {in.fsd_binary, "--log-level", "warn"};
    // Under TCG, QEMU's own threads relay every virtqueue notification (there
    // is no ioeventfd/irqfd in the kernel), and the CPU fsd would spend polling
    // for the next request is theirs: guest workloads ran 10-25% slower with it.
    if (in.accel == Accel::kTcg) p.fsd_argv.insert(p.fsd_argv.end(), {"--poll-us", "0"});
    for (const auto& sh : transports) {
      if (sh.proto == Proto::kVirtiofs) virtiofs(sh);
      if (sh.proto == Proto::k9p) fsd_export(sh), fsd_9p = true;
      if (sh.proto == Proto::k9pQemu) qemu_9p = true;
    }
    // fsd's 9p reaches the guest over virtio-vsock, fsd being the device's
    // back-end: the guest init connects to kNinePPort from a reserved port
    // (so fsd serves it as guest root) and mounts with trans=fd.
    if (fsd_9p)
      p.fsd_argv.insert(p.fsd_argv.end(), {"--vsock-socket", qemu_escape(vsock_socket) + ",cid=" + std::to_string(kGuestCid) +
                                                                 ",port=" + std::to_string(kNinePPort)});
    net = s.network == Network::kUser;
    if (!in.net_opts.empty() && s.network != Network::kUser)
      throw SpecError("QEMU_NET_OPTS is set, for the user network's -netdev, but the spec has none (\"network\": \"user\")");
  }
  // fsd's --export TAG=PATH,OPTIONS from the share's fields: the tag was
  // checked to be a plain word (spec.cpp), a comma in the path is doubled
  // (fsd reads ",," as one; so in the closure's file name), and the
  // options are vmlaunch's own words.
  void fsd_export(const ShareSpec& sh) {
    std::string e = sh.tag + "=" + qemu_escape(sh.source) + (sh.read_only ? ",ro" : "") + ",cache=" + std::string(name_of(sh.cache));
    if (sh.writeback && sh.proto == Proto::kVirtiofs) e += ",writeback";
    if (!sh.closure.empty()) e += ",closure=" + qemu_escape(sh.closure);
    p.fsd_argv.insert(p.fsd_argv.end(), {"--export", e});
  }
  void virtiofs(const ShareSpec& sh) {
    std::string sock = in.run_dir + "/" + sh.tag + ".sock";
    fsd_export(sh);
    p.fsd_argv.insert(p.fsd_argv.end(), {"--virtiofs-socket", sh.tag + "=" + sock});
    devices.emplace_back(sh.tag, sock);
  }

  // The disks the guest mounts: the root, the spec's in order, then the
  // store's.
  struct MountedDisk {
    const DiskSpec* disk;
    size_t index;  // in PlanInputs::disks, so /dev/vd[a + index]
    std::string target;
  };
  std::vector<MountedDisk> mounted_disks() const {
    std::vector<MountedDisk> out;
    size_t next = 0;
    if (!s.root.file.empty()) out.push_back({&s.root, next++, kNewRoot});
    for (const auto& d : s.disks) {
      if (!d.mount_point.empty()) out.push_back({&d, next, d.mount_point});
      next++;
    }
    next += s.empty_disks_mib.size();
    if (s.store.writable == Writable::kDisk) out.push_back({&s.store.disk, next++, rw_store});
    if (s.store.image != StoreImage::kNone) out.push_back({&store_image, next++, ro_store});
    return out;
  }
  // The store's image, as a read-only disk.
  DiskSpec store_image{.read_only = true, .fs_type = std::string(name_of(s.store.image))};

  // The guest loads modules, then mounts in order, then runs the command.
  void guest_modules() {
    p.modules = {"virtio_pci"};
    auto need = [&](std::initializer_list<const char*> names) {
      for (const char* n : names)
        if (std::find(p.modules.begin(), p.modules.end(), n) == p.modules.end()) p.modules.emplace_back(n);
    };
    for (const auto& sh : transports) {
      if (sh.proto == Proto::kVirtiofs) need({"virtiofs"});
      if (sh.proto == Proto::k9pQemu) need({"9pnet_virtio", "9p"});
      if (sh.proto == Proto::k9p) need({"vmw_vsock_virtio_transport", "9pnet_fd", "9p"});
    }
    if (s.store.writable != Writable::kNone || !s.nix_db.empty()) need({"overlay"});
    if (!in.disks.empty()) {
      if (s.disk_interface == DiskInterface::kVirtio) need({"virtio_blk"});
      if (s.disk_interface == DiskInterface::kScsi) need({"virtio_scsi", "sd_mod"});
      if (s.disk_interface == DiskInterface::kIde) need({"ahci", "sd_mod"});
    }
    if (s.guest_agent) need({"virtio_console"});
    for (const auto& d : mounted_disks()) {
      p.modules.push_back("fs-" + d.disk->fs_type);  // the kernel's own alias for a file system's module
      if (d.disk->fs_type == "vfat") need({"nls_cp437", "nls_utf8"});  // vfat's default code page and charset
    }
    if (net || !s.vlans.empty()) need({"virtio_net"});
    if (s.rng) need({"virtio_rng"});
    // The power button (QMP system_powerdown): ACPI's button driver, read through evdev.
    // On aarch64's virt machine it is a GPIO key (a device-tree gpio-keys
    // node), and the status port is a virtio console.
    if (aarch64()) {
      need({"gpio_keys", "evdev"});
      if (!in.status_file.empty()) need({"virtio_console"});
    } else {
      need({"button", "evdev"});
    }
  }

  // A share at its target, through its transport.
  void share_mount(const ShareSpec& sh) {
    std::string where = sh.tag + " (" + sh.source + ") -> " + sh.target;
    if (sh.proto == Proto::kVirtiofs) {
      guest.mounts.push_back(mount("virtiofs", sh.tag, sh.target, "", sh.read_only));
      p.mount_plan.push_back("virtiofs " + where + (sh.read_only ? " (read-only" : " (read-write") + ", cache " +
                             std::string(name_of(sh.cache)) + ")");
      return;
    }
    std::string cache = nine_p_cache(sh.cache);
    std::string opts = "version=9p2000.L,msize=" + std::to_string(sh.msize) + ",cache=" + cache;
    std::string about = ", msize " + std::to_string(sh.msize) + ", cache=" + cache;
    if (sh.proto == Proto::k9pQemu) {
      guest.mounts.push_back(mount("9p", sh.tag, sh.target, "trans=virtio," + opts, sh.read_only));
      p.mount_plan.push_back("9p (QEMU's server) " + where + about);
      return;
    }
    GuestMount m = mount("9p", sh.tag, sh.target, "aname=" + sh.tag + "," + opts, sh.read_only);
    m.vsock_port = kNinePPort;
    guest.mounts.push_back(m);
    p.mount_plan.push_back("9p (fsd, vsock port " + std::to_string(kNinePPort) + ") " + where + about);
  }

  // `lower` overlaid at `target`, its upper and work directories on the file
  // system mounted at `rw`; writable, the writes kept as long as `rw` is.
  void overlay(const std::string& lower, const std::string& rw, const std::string& target) {
    guest.mounts.push_back({.mkdir = rw + "/upper"});
    guest.mounts.push_back({.mkdir = rw + "/work"});
    guest.mounts.push_back(
        mount("overlay", "overlay", target, "lowerdir=" + lower + ",upperdir=" + rw + "/upper,workdir=" + rw + "/work", false));
  }
  void tmpfs(const std::string& target) {
    guest.mounts.push_back(mount("tmpfs", "tmpfs", target, "mode=0755", false));
    p.mount_plan.push_back("tmpfs -> " + target);
  }
  void disk_mount(const MountedDisk& d) {
    // A SCSI or IDE disk by its WWN (the guest init finds its device): the
    // kernel finds those disks asynchronously, their sdX names in no fixed order.
    std::string dev = s.disk_interface == DiskInterface::kVirtio ? disk_device(d.index) : "wwn:naa." + disk_wwn(d.index).substr(2);
    guest.mounts.push_back(mount(d.disk->fs_type, dev, d.target, "", d.disk->read_only));
    const std::string& file = d.index < in.disks.size() ? in.disks[d.index].file : d.disk->file;
    p.mount_plan.push_back(d.disk->fs_type + " " + dev + " (" + file + ") -> " + d.target +
                           (d.disk->read_only ? " (read-only)" : "") + (d.disk->auto_format ? " (formatted when new)" : ""));
  }

  // vm-exec's context: the system's /etc (a tmpfs overlay), its kernel
  // modules, /run/current-system, its PATH, /bin/sh and /usr/bin/env, a
  // root account and the nixbld group, and its bash for the command.
  void system_context() {
    const std::string& top = s.system.in_guest;
    if (s.system.has_etc) {
      guest.mounts.push_back({.mkdir = "/run/vmlaunch/etc/upper"});
      guest.mounts.push_back({.mkdir = "/run/vmlaunch/etc/work"});
      guest.mounts.push_back(mount("overlay", "overlay", "/etc",
                                   "lowerdir=" + top + "/etc,upperdir=/run/vmlaunch/etc/upper,workdir=/run/vmlaunch/etc/work", false));
      p.mount_plan.push_back("overlay " + top + "/etc + tmpfs -> /etc (writable, changes thrown away)");
    }
    guest.links["/run/current-system"] = top;
    guest.links["/run/booted-system"] = top;
    if (s.system.has_modules) guest.links["/lib/modules"] = top + "/kernel-modules/lib/modules";
    if (s.system.has_sh) guest.links["/bin/sh"] = top + "/sw/bin/sh";
    if (s.system.has_env) guest.links["/usr/bin/env"] = top + "/sw/bin/env";
    std::string shell = s.system.has_bash ? "/run/current-system/sw/bin/bash" : "/bin/sh";
    guest.late_files["/etc/passwd"] = "root:x:0:0:System administrator:/root:" + shell + "\n";
    guest.late_files["/etc/group"] = "root:x:0:\nnixbld:x:30000:\n";
    guest.shell = shell;
    guest.env["PATH"] = "/run/current-system/sw/bin";
    guest.env["HOME"] = "/root";
    for (const auto& [link, target] : guest.links) p.mount_plan.push_back("link " + link + " -> " + target);
  }

  // The store first, then the disks, then the shares (in the spec's order).
  void guest_plan() {
    auto disks = mounted_disks();
    auto take_disk = [&](const std::string& target) {  // mounts the disk for target (the root's, the store's)
      auto it = std::find_if(disks.begin(), disks.end(), [&](auto& d) { return d.target == target; });
      disk_mount(*it);
      disks.erase(it);
    };
    if (!s.root.file.empty() && !has_system() && !s.boot_loader)
      throw SpecError("root: a root disk holds a system's root (\"system\")");
    if (exec_system() && s.system.guix)
      throw SpecError("system: " + s.system.path + " is a Guix system, which boots (leave the command out, or systemMode boot); "
                      "exec mode's context is a NixOS system's");
    if (exec_system() && !s.root.file.empty()) {
      // The command runs on the disk: mounted first, everything else moves
      // into it, and the init goes on there as PID 1.
      take_disk(kNewRoot);
      guest.switch_root = kNewRoot;
    }
    if (boot()) {
      if (s.has_command()) throw SpecError("systemMode boot runs the system's own init; a command needs systemMode exec");
      if (!s.system.has_init) throw SpecError("system: " + s.system.path + " has no init to boot (give a command to run it in exec mode)");
      if (!s.root.file.empty()) {
        take_disk(kNewRoot);
      } else {
        guest.mounts.push_back(mount("tmpfs", "tmpfs", kNewRoot, "mode=0755", false));
        p.mount_plan.push_back(std::string("tmpfs -> ") + kNewRoot + " (the system's root)");
      }
    }
    if (s.store.image != StoreImage::kNone) take_disk(ro_store);
    else share_mount(transports[0]);
    if (s.store.writable != Writable::kNone) {
      if (s.store.writable == Writable::kTmpfs) tmpfs(rw_store);
      else take_disk(rw_store);
      overlay(ro_store, rw_store, s.store.mount_point);
      p.mount_plan.push_back("overlay " + ro_store + " + " + rw_store + "/upper -> " + s.store.mount_point + " (writable" +
                             (s.store.writable == Writable::kDisk ? ", kept on the disk)" : ")"));
    }
    for (const auto& d : disks) disk_mount(d);
    for (size_t i = s.store.image == StoreImage::kNone ? 1 : 0; i < transports.size(); i++) {
      share_mount(transports[i]);
      if (transports[i].tag != "nix-db") continue;
      // Nix's database, read-only from the host with a tmpfs overlay (as vm-exec does).
      guest.mounts.push_back(mount("tmpfs", "tmpfs", "/nix/.rw-db", "mode=0755", false));
      overlay("/nix/.ro-db", "/nix/.rw-db", "/nix/var/nix/db");
      p.mount_plan.push_back("overlay /nix/.ro-db + tmpfs -> /nix/var/nix/db (writable, changes thrown away)");
    }
    guest.env = {{"PATH", "/bin"}, {"HOME", "/tmp"}, {"TERM", "linux"}};
    if (exec_system()) system_context();
    if (exec_system() && !s.root.file.empty())
      p.mount_plan.push_back("then: every mount moves into " + std::string(kNewRoot) + ", which becomes / for the command");
    if (boot()) {
      guest.switch_root = kNewRoot;
      guest.init = s.system.in_guest + (s.system.guix ? "/boot" : "/init");
      p.mount_plan.push_back("then: every mount moves into " + std::string(kNewRoot) + ", which becomes /, and " + guest.init +
                             " runs as PID 1");
    }
    if (!s.store.registration.empty()) {
      guest.registration = kGuestRegistration;
      guest.nix_store = s.system.in_guest + "/sw/bin/nix-store";
      p.mount_plan.push_back("then: " + guest.nix_store + " --load-db < " +
                             (s.store.registration_is_list ? "a registration of the store paths " : "the registration ") +
                             s.store.registration + (boot() ? ", before the system's init" : ", before the command"));
    }
    guest.narrate = s.console == Console::kStage1;  // vm-exec's --initrd-console
    if (s.command_shell) guest.command = {guest.shell, "-c", *s.command_shell};
    else guest.command = s.command_argv;
    for (const auto& [k, v] : s.env) guest.env[k] = v;
    guest.workdir = "/tmp/xchg";
    if (net) {
      // QEMU's user network: the guest is 10.0.2.15, the gateway 10.0.2.2, DNS 10.0.2.3.
      guest.late_files["/etc/resolv.conf"] = "nameserver 10.0.2.3\n";  // unless the system has its own
      guest.setup = {{"/bin/ip", "link", "set", "lo", "up"},
                     {"/bin/ip", "link", "set", "eth0", "up"},
                     {"/bin/ip", "addr", "add", "10.0.2.15/24", "dev", "eth0"},
                     {"/bin/ip", "route", "add", "default", "via", "10.0.2.2"}};
    }
    // Each vlan's NIC, found by its MAC address (its name depends on the
    // order the guest probes them).
    for (unsigned vlan : s.vlans) {
      std::string addr = "192.168." + std::to_string(vlan) + "." + std::to_string(s.vlan_host);
      guest.setup.push_back(
          {"/bin/sh", "-c",
           "for d in /sys/class/net/*; do if [ \"$(/bin/cat $d/address)\" = " + vlan_mac(vlan) + " ]; then "
           "/bin/ip link set ${d##*/} up && /bin/ip addr add " + addr + "/24 dev ${d##*/}; exit; fi; done; "
           "echo 'no NIC for vlan " + std::to_string(vlan) + "' >&2; exit 1"});
      p.mount_plan.push_back("vlan " + std::to_string(vlan) + ": " + addr + "/24 (" + vlan_group(in.uid, vlan) + ")");
    }
    // The command's status (or the interactive shell's) goes out on a serial
    // port of its own, whatever the shares are.
    if (!in.status_file.empty()) guest.status_file = aarch64() ? kStatusPortAarch64 : kStatusPort;
    p.guest = guest;
  }

  // QEMU: shared memory for vhost-user, direct kernel boot, the console on serial.
  void qemu_command() {
    auto add = [&](std::initializer_list<std::string> args) { p.qemu_argv.insert(p.qemu_argv.end(), args); };
    std::string mem = std::to_string(s.memory_mib) + "M";
    // q35: its PCI interrupts need no ACPI link set-up, which on the older
    // i440fx machine cost a TCG boot 0.55 s (four _SB_.LNKx evaluated at
    // 145 ms each).
    p.qemu_argv = {s.qemu_binary, "-name", opt("guest", s.name), "-machine", aarch64() ? "virt" : "q35", "-accel",
                   std::string(name_of(in.accel)), "-smp", std::to_string(s.cpus), "-m", mem,
                   "-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on", "-numa", "node,memdev=mem"};
    // virt's CPU: all TCG emulates, or the host's under KVM.
    if (aarch64()) add({"-cpu", in.accel == Accel::kKvm ? "host" : "max"});
    if (s.firmware == Firmware::kUefi)
      add({"-drive", "if=pflash,format=raw,unit=0,readonly=on," + opt("file", in.ovmf_code), "-drive",
           "if=pflash,format=raw,unit=1," + opt("file", s.efi_vars)});
    // Direct kernel boot, unless the first disk's bootloader boots.
    if (!s.boot_loader) add({"-kernel", in.boot_kernel.empty() ? s.kernel : in.boot_kernel, "-initrd", in.initrd});
    // The last console is /dev/console. A booted system with a display has
    // it there, as qemu-vm.nix does; a command's output stays on the
    // serial console, where vmlaunch's caller reads it.
    std::string serial = aarch64() ? "console=ttyAMA0" : "console=ttyS0";  // virt's PL011, or the PC's 16550
    std::string append = !s.graphics ? serial + " panic=-1"
                         : boot()    ? serial + " console=tty0 panic=-1"
                                     : "console=tty0 " + serial + " panic=-1";
    if (s.console != Console::kSerial) append += " quiet loglevel=1";
    // Then, as qemu-vm.nix orders them: a booted system's own parameters,
    // the spec's, and $QEMU_KERNEL_PARAMS.
    // A Guix system is told where it is, as Guix's own VM script does
    // (vmlaunch's init mounts the root itself; --root is for the system).
    if (boot() && s.system.guix)
      append += (s.system.guix_root.empty() ? "" : " --root=" + s.system.guix_root) + " gnu.system=" + s.system.in_guest +
                " gnu.load=" + s.system.in_guest + "/boot";
    if (boot() && !s.system.kernel_params.empty()) append += " " + s.system.kernel_params;
    if (!s.cmdline.empty()) append += " " + s.cmdline;
    if (!in.extra_kernel_params.empty()) append += " " + in.extra_kernel_params;
    if (!s.boot_loader) add({"-append", append});
    add({"-nodefaults", "-no-reboot", "-serial", "stdio"});
    if (!in.status_file.empty() && !s.boot_loader) {
      if (!aarch64()) {
        add({"-serial", "file:" + in.status_file});  // the guest's kStatusPort
      } else {  // virt has one UART: a virtio console (kStatusPortAarch64)
        add({"-device", "virtio-serial-pci,id=vstatus", "-chardev", "file,id=status," + opt("path", in.status_file), "-device",
             "virtconsole,bus=vstatus.0,chardev=status"});
      }
    }
    // graphics: a VGA display beside the serial console (the guest's status
    // has a serial port of its own), of the spec's size, with a tablet.
    if (s.graphics) {
      add({"-device", s.resolution.x ? "VGA,edid=on,xres=" + std::to_string(s.resolution.x) +
                                           ",yres=" + std::to_string(s.resolution.y)
                                     : "VGA"});
      if (s.usb_tablet) add({"-device", "qemu-xhci,id=usb0", "-device", "usb-tablet,bus=usb0.0"});
    } else {
      add({"-display", "none"});
    }
    // A QEMU guest agent's channel: the guest's qemu-ga finds the port by its name.
    if (s.guest_agent) {
      p.guest_agent_socket = s.guest_agent_socket.empty() ? in.run_dir + "/qga.sock" : s.guest_agent_socket;
      add({"-device", "virtio-serial-pci,id=vser0", "-chardev",
           "socket,id=qga0," + opt("path", p.guest_agent_socket) + ",server=on,wait=off", "-device",
           "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0"});
    }
    // The monitor, for a graceful power-off on SIGTERM.
    if (!in.qmp_socket.empty()) add({"-qmp", "unix:" + qemu_escape(in.qmp_socket) + ",server=on,wait=off"});
    for (size_t n = 0; n < devices.size(); n++) {
      std::string id = "fs" + std::to_string(n);
      add({"-chardev", "socket,id=" + id + "," + opt("path", devices[n].second), "-device",
           "vhost-user-fs-pci,chardev=" + id + "," + opt("tag", devices[n].first)});
    }
    if (fsd_9p)
      add({"-chardev", "socket,id=vsock0," + opt("path", vsock_socket), "-device", "vhost-user-vsock-pci,chardev=vsock0"});
    for (const auto& sh : transports)
      if (sh.proto == Proto::k9pQemu)
        add({"-virtfs", "local," + opt("path", sh.source) + ",security_model=none," + opt("mount_tag", sh.tag) +
                            (sh.read_only ? ",readonly=on" : "")});
    if (net) add({"-netdev", netdev(), "-device", "virtio-net-pci,netdev=n0"});
    for (unsigned vlan : s.vlans) {
      std::string id = "vlan" + std::to_string(vlan);
      add({"-netdev", "socket,id=" + id + ",mcast=" + vlan_group(in.uid, vlan) + ",localaddr=127.0.0.1", "-device",
           "virtio-net-pci,netdev=" + id + ",mac=" + vlan_mac(vlan)});
    }
    if (s.rng) add({"-device", "virtio-rng-pci"});
    // The disks: /dev/vda, /dev/vdb, ... (or sda, ...) in this order.
    if (s.disk_interface == DiskInterface::kIde && in.disks.size() > kAhciPorts)
      throw SpecError("diskInterface: ide attaches at most " + std::to_string(kAhciPorts) + " disks (q35's AHCI ports); this VM has " +
                      std::to_string(in.disks.size()) + " (the root, disks, emptyDisks, store.disk and the store's image)");
    if (s.disk_interface == DiskInterface::kIde)
      for (const auto& d : in.disks)
        if (d.read_only)
          throw SpecError("diskInterface: QEMU's IDE disks cannot be read-only, and " + d.file +
                          " is (readOnly, or the store's image): use virtio or scsi");
    if (s.disk_interface == DiskInterface::kScsi && !in.disks.empty()) add({"-device", "virtio-scsi-pci,id=scsi0"});
    for (size_t i = 0; i < in.disks.size(); i++) {
      const auto& d = in.disks[i];
      std::string id = "disk" + std::to_string(i);
      std::string drive = opt("file", d.file) + (s.disk_interface == DiskInterface::kVirtio ? ",if=virtio," : ",if=none,id=" + id + ",") +
                          opt("format", d.format) + (d.read_only ? ",readonly=on" : "") + (d.snapshot ? ",snapshot=on" : "");
      add({"-drive", drive});
      // SCSI and ATA disks are found asynchronously, so their names need
      // not follow their order: each has a WWN, by which the guest finds it.
      std::string wwn = ",wwn=" + disk_wwn(i);
      if (s.disk_interface == DiskInterface::kScsi)
        add({"-device", "scsi-hd,drive=" + id + ",bus=scsi0.0,channel=0,scsi-id=" + std::to_string(i) + ",lun=0" + wwn});
      if (s.disk_interface == DiskInterface::kIde) add({"-device", "ide-hd,drive=" + id + ",bus=ide." + std::to_string(i) + wwn});
    }
    p.qemu_argv.insert(p.qemu_argv.end(), s.qemu_extra_args.begin(), s.qemu_extra_args.end());
    p.qemu_argv.insert(p.qemu_argv.end(), in.extra_qemu_args.begin(), in.extra_qemu_args.end());
  }

  // The user network; restrict=on (no way out) unless "network": "user"
  // asks for one.
  std::string netdev() const {
    std::string netdev = s.network == Network::kUser ? "user,id=n0" : "user,id=n0,restrict=on";
    for (const auto& f : s.forward_ports) {
      if (f.from_host) {
        netdev += ",hostfwd=" + f.proto + ":" + f.host.address + ":" + std::to_string(f.host.port) + "-" + f.guest.address +
                  ":" + std::to_string(f.guest.port);
        continue;
      }
      // guest -> host: each connection to guest.address:port in the guest
      // runs a relay (vmlaunch itself) connected to host.address:port.
      // The addresses were checked to be host names or IP addresses
      // (spec.cpp); every word is quoted all the same.
      std::string relay = shell_word(in.relay_binary) + " --relay-to " +
                          shell_word((f.host.address.empty() ? "127.0.0.1" : f.host.address) + ":" + std::to_string(f.host.port));
      netdev += ",guestfwd=" + f.proto + ":" + (f.guest.address.empty() ? "10.0.2.100" : f.guest.address) + ":" +
                std::to_string(f.guest.port) + "-cmd:" + qemu_escape(relay);
    }
    if (!in.net_opts.empty()) netdev += "," + in.net_opts;
    return netdev;
  }
};

}  // namespace

std::string vlan_group(uint32_t uid, unsigned vlan) {
  return "230." + std::to_string((uid >> 8) & 0xff) + "." + std::to_string(uid & 0xff) + "." + std::to_string(vlan) + ":21000";
}

Plan make_plan(const Spec& s, const PlanInputs& in) {
  Plan p;
  Builder b{s, in, p};
  b.collect_shares();
  b.fsd_command();
  b.guest_modules();
  b.guest_plan();
  b.qemu_command();
  return p;
}

}  // namespace fsd::launcher
