#include "launcher/plan.h"

#include <filesystem>

#include "launcher/guest/guest_plan.h"

namespace fsd::launcher {
namespace {

GuestMount mount(const std::string& fstype, const std::string& source, const std::string& target,
                 const std::string& options, bool ro) {
  return GuestMount{.fstype = fstype, .source = source, .target = target, .options = options,
                    .flags = ro ? std::vector<std::string>{"ro"} : std::vector<std::string>{}};
}

// A read-only virtio-fs tag at `lower`, with a tmpfs at `rw` holding the
// upper and work directories, overlaid at `target`: writable, and the
// writes thrown away with the guest.
void overlay_mounts(std::vector<GuestMount>& mounts, const std::string& tag, const std::string& lower,
                    const std::string& rw, const std::string& target) {
  mounts.push_back(mount("virtiofs", tag, lower, "", true));
  mounts.push_back(mount("tmpfs", "tmpfs", rw, "mode=0755", false));
  mounts.push_back({.mkdir = rw + "/upper"});
  mounts.push_back({.mkdir = rw + "/work"});
  mounts.push_back(mount("overlay", "overlay", target, "lowerdir=" + lower + ",upperdir=" + rw + "/upper,workdir=" + rw + "/work", false));
}

// QEMU option values separate fields with commas; a comma inside a value is doubled.
std::string qemu_escape(const std::string& v) {
  std::string out;
  for (char c : v) out += c == ',' ? std::string(",,") : std::string(1, c);
  return out;
}

// The guest's 9p cache mode for a cache policy.
const char* nine_p_cache(Cache c) { return c == Cache::kNever ? "none" : c == Cache::kAuto ? "mmap" : "loose"; }

// Plan is built in steps that share what they decide here.
struct Builder {
  const Spec& s;
  const PlanInputs& in;
  Plan& p;
  GuestPlan guest;
  std::vector<std::pair<std::string, std::string>> devices;  // virtio-fs: tag, socket
  std::vector<std::string> nine_p_forwards;                  // guestfwd= for fsd's 9p shares
  bool fsd_9p = false, qemu_9p = false, net = false;
  std::string nine_p_socket = in.run_dir + "/9p.sock";

  // fsd: the store and every virtiofs share, each on its own socket; 9p
  // shares are exports attached by tag on one 9p socket.
  void fsd_command() {
    p.fsd_argv = {in.fsd_binary, "--log-level", "warn"};
    // Under TCG, QEMU's own threads relay every virtqueue notification (there
    // is no ioeventfd/irqfd in the kernel), and the CPU fsd would spend polling
    // for the next request is theirs: guest workloads ran 10-25% slower with it.
    if (in.accel == Accel::kTcg) p.fsd_argv.insert(p.fsd_argv.end(), {"--poll-us", "0"});
    virtiofs("store", s.store.path, true, s.store.cache);
    if (!s.nix_db.empty()) virtiofs("nix-db", s.nix_db, true, Cache::kAuto);
    for (const auto& sh : s.shares) {
      if (sh.proto == Proto::kVirtiofs) virtiofs(sh.tag, sh.source, sh.read_only, sh.cache);
      if (sh.proto == Proto::k9p) fsd_export(sh.tag, sh.source, sh.read_only, sh.cache), fsd_9p = true;
      if (sh.proto == Proto::k9pQemu) qemu_9p = true;
    }
    // fsd's 9p reaches the guest as TCP through QEMU's user network: each
    // share's port at kNinePAddress is forwarded (guestfwd) into fsd's unix
    // socket. A guestfwd to a character device is one stream, opened when
    // QEMU starts, which suits 9p (one connection per mount) and costs no
    // process per connection; see the README.
    if (fsd_9p) p.fsd_argv.insert(p.fsd_argv.end(), {"--listen", "unix:" + nine_p_socket});
    net = s.network == Network::kUser || fsd_9p;
    if (!in.net_opts.empty() && s.network != Network::kUser)
      throw SpecError("QEMU_NET_OPTS is set, for the user network's -netdev, but the spec has none (\"network\": \"user\")");
  }
  void fsd_export(const std::string& tag, const std::string& path, bool ro, Cache cache) {
    p.fsd_argv.insert(p.fsd_argv.end(),
                      {"--export", tag + "=" + path + (ro ? ",ro" : "") + ",cache=" + std::string(name_of(cache))});
  }
  void virtiofs(const std::string& tag, const std::string& path, bool ro, Cache cache) {
    std::string sock = in.run_dir + "/" + tag + ".sock";
    fsd_export(tag, path, ro, cache);
    p.fsd_argv.insert(p.fsd_argv.end(), {"--virtiofs-socket", tag + "=" + sock});
    devices.emplace_back(tag, sock);
  }

  // The guest loads modules, then mounts in order, then runs the command.
  void guest_modules() {
    p.modules = {"virtio_pci", "virtiofs"};
    if (qemu_9p) p.modules.insert(p.modules.end(), {"9pnet_virtio", "9p"});
    if (fsd_9p) p.modules.insert(p.modules.end(), {"9pnet_fd", "9p"});
    if (s.store.writable_tmpfs || !s.nix_db.empty()) p.modules.push_back("overlay");
    if (!in.disks.empty()) p.modules.push_back("virtio_blk");
    if (net) p.modules.push_back("virtio_net");
    // The power button (QMP system_powerdown): ACPI's button driver, read through evdev.
    p.modules.insert(p.modules.end(), {"button", "evdev"});
  }

  void store_mounts() {
    const std::string& mp = s.store.mount_point;
    std::string cache = std::string(name_of(s.store.cache));
    if (!s.store.writable_tmpfs) {
      guest.mounts.push_back(mount("virtiofs", "store", mp, "", true));
      p.mount_plan.push_back("virtiofs store -> " + mp + " (read-only, cache " + cache + ")");
      return;
    }
    std::string parent = std::filesystem::path(mp).parent_path().string();
    if (parent == "/") parent.clear();
    std::string ro_store = parent + "/.ro-store", rw_store = parent + "/.rw-store";
    overlay_mounts(guest.mounts, "store", ro_store, rw_store, mp);
    p.mount_plan.push_back("virtiofs store -> " + ro_store + " (read-only, cache " + cache + ")");
    p.mount_plan.push_back("tmpfs -> " + rw_store);
    p.mount_plan.push_back("overlay " + ro_store + " + " + rw_store + "/upper -> " + mp + " (writable)");
  }

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
    std::string port = std::to_string(kNinePPort + nine_p_forwards.size());
    nine_p_forwards.push_back("guestfwd=tcp:" + std::string(kNinePAddress) + ":" + port + "-unix:" + qemu_escape(nine_p_socket));
    guest.mounts.push_back(
        mount("9p", kNinePAddress, sh.target, "trans=tcp,port=" + port + ",aname=" + sh.tag + "," + opts, sh.read_only));
    p.mount_plan.push_back("9p (fsd, TCP " + std::string(kNinePAddress) + ":" + port + ") " + where + about);
  }

  void guest_plan() {
    store_mounts();
    for (const auto& sh : s.shares) share_mount(sh);
    if (!s.nix_db.empty()) {
      // Nix's database, read-only from the host with a tmpfs overlay (as vm-exec does).
      overlay_mounts(guest.mounts, "nix-db", "/nix/.ro-db", "/nix/.rw-db", "/nix/var/nix/db");
      p.mount_plan.push_back("virtiofs nix-db (" + s.nix_db + ") -> /nix/.ro-db (read-only)");
      p.mount_plan.push_back("overlay /nix/.ro-db + tmpfs -> /nix/var/nix/db (writable, changes thrown away)");
    }
    if (s.command_shell) guest.command = {"/bin/sh", "-c", *s.command_shell};
    else guest.command = s.command_argv;
    guest.env = {{"PATH", "/bin"}, {"HOME", "/tmp"}, {"TERM", "linux"}};
    for (const auto& [k, v] : s.env) guest.env[k] = v;
    guest.workdir = "/tmp/xchg";
    if (net) {
      // QEMU's user network: the guest is 10.0.2.15, the gateway 10.0.2.2, DNS 10.0.2.3.
      guest.files["/etc/resolv.conf"] = "nameserver 10.0.2.3\n";
      guest.setup = {{"/bin/ip", "link", "set", "lo", "up"},
                     {"/bin/ip", "link", "set", "eth0", "up"},
                     {"/bin/ip", "addr", "add", "10.0.2.15/24", "dev", "eth0"},
                     {"/bin/ip", "route", "add", "default", "via", "10.0.2.2"}};
    }
    // The command's status (or the interactive shell's) goes out on a serial
    // port of its own, whatever the shares are.
    if (!in.status_file.empty()) guest.status_file = kStatusPort;
    p.guest = guest;
  }

  // QEMU: shared memory for vhost-user, direct kernel boot, the console on serial.
  void qemu_command() {
    auto add = [&](std::initializer_list<std::string> args) { p.qemu_argv.insert(p.qemu_argv.end(), args); };
    std::string mem = std::to_string(s.memory_mib) + "M";
    p.qemu_argv = {s.qemu_binary, "-name", s.name, "-accel", std::string(name_of(in.accel)),
                   "-smp", std::to_string(s.cpus), "-m", mem,
                   "-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on", "-numa", "node,memdev=mem",
                   "-kernel", s.kernel, "-initrd", in.initrd};
    std::string append = s.graphics ? "console=tty0 console=ttyS0 panic=-1" : "console=ttyS0 panic=-1";
    if (s.console == Console::kQuiet) append += " quiet loglevel=1";
    if (!s.cmdline.empty()) append += " " + s.cmdline;
    if (!in.extra_kernel_params.empty()) append += " " + in.extra_kernel_params;
    add({"-append", append, "-nodefaults", "-no-reboot", "-serial", "stdio"});
    if (!in.status_file.empty()) add({"-serial", "file:" + in.status_file});  // the guest's kStatusPort
    // graphics: a VGA display beside the serial console (which stays the
    // kernel's /dev/console, so vmlaunch still reads the guest's status).
    if (s.graphics) add({"-device", "VGA"});
    else add({"-display", "none"});
    // The monitor, for a graceful power-off on SIGTERM.
    if (!in.qmp_socket.empty()) add({"-qmp", "unix:" + in.qmp_socket + ",server=on,wait=off"});
    for (size_t n = 0; n < devices.size(); n++) {
      std::string id = "fs" + std::to_string(n);
      add({"-chardev", "socket,id=" + id + ",path=" + devices[n].second, "-device",
           "vhost-user-fs-pci,chardev=" + id + ",tag=" + devices[n].first});
    }
    for (const auto& sh : s.shares)
      if (sh.proto == Proto::k9pQemu)
        add({"-virtfs", "local,path=" + sh.source + ",security_model=none,mount_tag=" + sh.tag + (sh.read_only ? ",readonly=on" : "")});
    if (net) add({"-netdev", netdev(), "-device", "virtio-net-pci,netdev=n0"});
    for (const auto& d : in.disks)  // /dev/vda, /dev/vdb, ... in this order
      add({"-drive", "file=" + d.file + ",if=virtio,format=" + d.format + (d.read_only ? ",readonly=on" : "") +
                         (d.snapshot ? ",snapshot=on" : "")});
    p.qemu_argv.insert(p.qemu_argv.end(), s.qemu_extra_args.begin(), s.qemu_extra_args.end());
    p.qemu_argv.insert(p.qemu_argv.end(), in.extra_qemu_args.begin(), in.extra_qemu_args.end());
  }

  // Without "network": "user" the network only carries fsd's 9p:
  // restrict=on cuts the guest off from the outside.
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
      std::string relay = in.relay_binary + " --relay-to " + (f.host.address.empty() ? "127.0.0.1" : f.host.address) + ":" +
                          std::to_string(f.host.port);
      netdev += ",guestfwd=" + f.proto + ":" + (f.guest.address.empty() ? "10.0.2.100" : f.guest.address) + ":" +
                std::to_string(f.guest.port) + "-cmd:" + qemu_escape(relay);
    }
    for (const auto& fwd : nine_p_forwards) netdev += "," + fwd;
    if (!in.net_opts.empty()) netdev += "," + in.net_opts;
    return netdev;
  }
};

}  // namespace

Plan make_plan(const Spec& s, const PlanInputs& in) {
  Plan p;
  Builder b{s, in, p};
  b.fsd_command();
  b.guest_modules();
  b.guest_plan();
  b.qemu_command();
  return p;
}

}  // namespace fsd::launcher
