#include "launcher/plan.h"

#include <filesystem>

namespace fsd::launcher {
namespace {

const char* cache_name(Cache c) { return c == Cache::kNever ? "never" : c == Cache::kAuto ? "auto" : "always"; }

nlohmann::json mount(const std::string& fstype, const std::string& source, const std::string& target,
                     const std::string& options, bool ro) {
  nlohmann::json m = nlohmann::json::object();
  m["fstype"] = fstype;
  m["source"] = source;
  m["target"] = target;
  if (!options.empty()) m["options"] = options;
  m["flags"] = ro ? nlohmann::json::array({"ro"}) : nlohmann::json::array();
  return m;
}

// A read-only virtio-fs tag at `lower`, with a tmpfs at `rw` holding the
// upper and work directories, overlaid at `target`: writable, and the
// writes thrown away with the guest.
void overlay_mounts(nlohmann::json& mounts, const std::string& tag, const std::string& lower, const std::string& rw,
                    const std::string& target) {
  mounts.push_back(mount("virtiofs", tag, lower, "", true));
  mounts.push_back(mount("tmpfs", "tmpfs", rw, "mode=0755", false));
  mounts.push_back({{"mkdir", rw + "/upper"}});
  mounts.push_back({{"mkdir", rw + "/work"}});
  mounts.push_back(mount("overlay", "overlay", target, "lowerdir=" + lower + ",upperdir=" + rw + "/upper,workdir=" + rw + "/work", false));
}

// QEMU option values separate fields with commas; a comma inside a value is doubled.
std::string qemu_escape(const std::string& v) {
  std::string out;
  for (char c : v) out += c == ',' ? std::string(",,") : std::string(1, c);
  return out;
}

}  // namespace

std::string default_module_dir(const std::string& kernel) {
  std::error_code ec;
  auto dir = std::filesystem::path(kernel).parent_path() / "lib/modules";
  for (auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_directory()) return e.path().string();
  return "";
}

Plan make_plan(const Spec& s, const PlanInputs& in) {
  Plan p;
  // fsd: the store and every virtiofs share, each on its own socket; 9p
  // shares are exports attached by tag on one 9p socket.
  p.fsd_argv = {in.fsd_binary, "--log-level", "warn"};
  // Under TCG, QEMU's own threads relay every virtqueue notification (there
  // is no ioeventfd/irqfd in the kernel), and the CPU fsd would spend polling
  // for the next request is theirs: guest workloads ran 10-25% slower with it.
  if (in.accel == Accel::kTcg) p.fsd_argv.insert(p.fsd_argv.end(), {"--poll-us", "0"});
  auto fsd_export = [&](const std::string& tag, const std::string& path, bool ro, Cache cache) {
    p.fsd_argv.insert(p.fsd_argv.end(), {"--export", tag + "=" + path + (ro ? ",ro" : "") + ",cache=" + cache_name(cache)});
  };
  std::vector<std::pair<std::string, std::string>> devices;  // tag, socket
  auto virtiofs = [&](const std::string& tag, const std::string& path, bool ro, Cache cache) {
    std::string sock = in.run_dir + "/" + tag + ".sock";
    fsd_export(tag, path, ro, cache);
    p.fsd_argv.insert(p.fsd_argv.end(), {"--virtiofs-socket", tag + "=" + sock});
    devices.emplace_back(tag, sock);
  };
  virtiofs("store", s.store.path, true, s.store.cache);
  if (!s.nix_db.empty()) virtiofs("nix-db", s.nix_db, true, Cache::kAuto);
  bool fsd_9p = false, qemu_9p = false;
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
  const std::string nine_p_socket = in.run_dir + "/9p.sock";
  if (fsd_9p) p.fsd_argv.insert(p.fsd_argv.end(), {"--listen", "unix:" + nine_p_socket});
  bool net = s.network == Network::kUser || fsd_9p;

  // The guest: modules, then mounts in order, then the command.
  p.modules = {"virtio_pci", "virtiofs"};
  if (qemu_9p) p.modules.insert(p.modules.end(), {"9pnet_virtio", "9p"});
  if (fsd_9p) p.modules.insert(p.modules.end(), {"9pnet_fd", "9p"});
  if (s.store.writable_tmpfs || !s.nix_db.empty()) p.modules.push_back("overlay");
  if (!in.disks.empty()) p.modules.push_back("virtio_blk");
  if (net) p.modules.push_back("virtio_net");
  // The power button (QMP system_powerdown): ACPI's button driver, read through evdev.
  p.modules.insert(p.modules.end(), {"button", "evdev"});

  nlohmann::json mounts = nlohmann::json::array();
  std::vector<std::string> nine_p_forwards;  // guestfwd= for fsd's 9p shares
  const std::string& mp = s.store.mount_point;
  if (s.store.writable_tmpfs) {
    std::string ro_store = std::filesystem::path(mp).parent_path().string() + "/.ro-store";
    std::string rw_store = std::filesystem::path(mp).parent_path().string() + "/.rw-store";
    if (ro_store.starts_with("//")) ro_store = ro_store.substr(1), rw_store = rw_store.substr(1);
    overlay_mounts(mounts, "store", ro_store, rw_store, mp);
    p.mount_plan.push_back("virtiofs store -> " + ro_store + " (read-only, cache " + cache_name(s.store.cache) + ")");
    p.mount_plan.push_back("tmpfs -> " + rw_store);
    p.mount_plan.push_back("overlay " + ro_store + " + " + rw_store + "/upper -> " + mp + " (writable)");
  } else {
    mounts.push_back(mount("virtiofs", "store", mp, "", true));
    p.mount_plan.push_back("virtiofs store -> " + mp + " (read-only, cache " + cache_name(s.store.cache) + ")");
  }
  for (const auto& sh : s.shares) {
    if (sh.proto == Proto::kVirtiofs) {
      mounts.push_back(mount("virtiofs", sh.tag, sh.target, "", sh.read_only));
      p.mount_plan.push_back("virtiofs " + sh.tag + " (" + sh.source + ") -> " + sh.target + (sh.read_only ? " (read-only" : " (read-write") +
                             ", cache " + cache_name(sh.cache) + ")");
    } else {
      std::string cache = sh.cache == Cache::kNever ? "none" : sh.cache == Cache::kAuto ? "mmap" : "loose";
      std::string opts = "version=9p2000.L,msize=" + std::to_string(sh.msize) + ",cache=" + cache;
      if (sh.proto == Proto::k9pQemu) {
        mounts.push_back(mount("9p", sh.tag, sh.target, "trans=virtio," + opts, sh.read_only));
        p.mount_plan.push_back("9p (QEMU's server) " + sh.tag + " (" + sh.source + ") -> " + sh.target + ", msize " +
                               std::to_string(sh.msize) + ", cache=" + cache);
      } else {
        unsigned port = kNinePPort + static_cast<unsigned>(nine_p_forwards.size());
        nine_p_forwards.push_back("guestfwd=tcp:" + std::string(kNinePAddress) + ":" + std::to_string(port) + "-unix:" +
                                  qemu_escape(nine_p_socket));
        mounts.push_back(mount("9p", kNinePAddress, sh.target,
                               "trans=tcp,port=" + std::to_string(port) + ",aname=" + sh.tag + "," + opts, sh.read_only));
        p.mount_plan.push_back("9p (fsd, TCP " + std::string(kNinePAddress) + ":" + std::to_string(port) + ") " + sh.tag + " (" +
                               sh.source + ") -> " + sh.target + ", msize " + std::to_string(sh.msize) + ", cache=" + cache);
      }
    }
  }
  if (!s.nix_db.empty()) {
    // Nix's database, read-only from the host with a tmpfs overlay (as vm-exec does).
    overlay_mounts(mounts, "nix-db", "/nix/.ro-db", "/nix/.rw-db", "/nix/var/nix/db");
    p.mount_plan.push_back("virtiofs nix-db (" + s.nix_db + ") -> /nix/.ro-db (read-only)");
    p.mount_plan.push_back("overlay /nix/.ro-db + tmpfs -> /nix/var/nix/db (writable, changes thrown away)");
  }
  p.guest["mounts"] = mounts;
  if (s.command_shell) p.guest["command"] = {"/bin/sh", "-c", *s.command_shell};
  else if (!s.command_argv.empty()) p.guest["command"] = s.command_argv;
  nlohmann::json env = nlohmann::json::object({{"PATH", "/bin"}, {"HOME", "/tmp"}, {"TERM", "linux"}});
  for (const auto& [k, v] : s.env) env[k] = v;
  p.guest["env"] = env;
  p.guest["workdir"] = "/tmp/xchg";
  if (net) {
    // QEMU's user network: the guest is 10.0.2.15, the gateway 10.0.2.2, DNS 10.0.2.3.
    nlohmann::json files = nlohmann::json::object();
    files["/etc/resolv.conf"] = "nameserver 10.0.2.3\n";
    p.guest["files"] = files;
    nlohmann::json setup = nlohmann::json::array();
    for (std::vector<std::string> step : {std::vector<std::string>{"/bin/ip", "link", "set", "lo", "up"},
                                          {"/bin/ip", "link", "set", "eth0", "up"},
                                          {"/bin/ip", "addr", "add", "10.0.2.15/24", "dev", "eth0"},
                                          {"/bin/ip", "route", "add", "default", "via", "10.0.2.2"}})
      setup.push_back(step);
    p.guest["setup"] = setup;
  }
  p.guest["status_file"] = in.status_file;  // the command's, or the interactive shell's

  // QEMU: shared memory for vhost-user, direct kernel boot, the console on serial.
  std::string mem = std::to_string(s.memory_mib) + "M";
  p.qemu_argv = {s.qemu_binary, "-name", s.name, "-accel", in.accel == Accel::kKvm ? "kvm" : "tcg",
                 "-smp", std::to_string(s.cpus), "-m", mem,
                 "-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on", "-numa", "node,memdev=mem",
                 "-kernel", s.kernel, "-initrd", in.initrd};
  std::string append = s.graphics ? "console=tty0 console=ttyS0 panic=-1" : "console=ttyS0 panic=-1";
  if (s.console == Console::kQuiet) append += " quiet loglevel=1";
  if (!s.cmdline.empty()) append += " " + s.cmdline;
  if (!in.extra_kernel_params.empty()) append += " " + in.extra_kernel_params;
  p.qemu_argv.insert(p.qemu_argv.end(), {"-append", append, "-nodefaults", "-no-reboot", "-serial", "stdio"});
  // graphics: a VGA display beside the serial console (which stays the
  // kernel's /dev/console, so vmlaunch still reads the guest's status).
  if (s.graphics) p.qemu_argv.insert(p.qemu_argv.end(), {"-device", "VGA"});
  else p.qemu_argv.insert(p.qemu_argv.end(), {"-display", "none"});
  // The monitor, for a graceful power-off on SIGTERM.
  if (!in.qmp_socket.empty()) p.qemu_argv.insert(p.qemu_argv.end(), {"-qmp", "unix:" + in.qmp_socket + ",server=on,wait=off"});
  int n = 0;
  for (const auto& [tag, sock] : devices) {
    std::string id = "fs" + std::to_string(n++);
    p.qemu_argv.insert(p.qemu_argv.end(), {"-chardev", "socket,id=" + id + ",path=" + sock, "-device",
                                           "vhost-user-fs-pci,chardev=" + id + ",tag=" + tag});
  }
  for (const auto& sh : s.shares)
    if (sh.proto == Proto::k9pQemu)
      p.qemu_argv.insert(p.qemu_argv.end(), {"-virtfs", "local,path=" + sh.source + ",security_model=none,mount_tag=" + sh.tag +
                                                            (sh.read_only ? ",readonly=on" : "")});
  if (net) {
    // Without "network": "user" the network only carries fsd's 9p: restrict=on cuts the guest off from the outside.
    std::string netdev = s.network == Network::kUser ? "user,id=n0" : "user,id=n0,restrict=on";
    for (const auto& f : s.forward_ports) {
      if (f.from_host) {
        netdev += ",hostfwd=" + f.proto + ":" + f.host.address + ":" + std::to_string(f.host.port) + "-" + f.guest.address + ":" +
                  std::to_string(f.guest.port);
      } else {
        // guest -> host: each connection to guest.address:port in the guest
        // runs a relay (vmlaunch itself) connected to host.address:port.
        std::string relay = in.relay_binary + " --relay-to " + (f.host.address.empty() ? "127.0.0.1" : f.host.address) + ":" +
                            std::to_string(f.host.port);
        netdev += ",guestfwd=" + f.proto + ":" + (f.guest.address.empty() ? "10.0.2.100" : f.guest.address) + ":" +
                  std::to_string(f.guest.port) + "-cmd:" + qemu_escape(relay);
      }
    }
    for (const auto& fwd : nine_p_forwards) netdev += "," + fwd;
    p.qemu_argv.insert(p.qemu_argv.end(), {"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"});
  }
  for (const auto& d : in.disks)  // /dev/vda, /dev/vdb, ... in this order
    p.qemu_argv.insert(p.qemu_argv.end(), {"-drive", "file=" + d.file + ",if=virtio,format=" + d.format +
                                                         (d.read_only ? ",readonly=on" : "") + (d.snapshot ? ",snapshot=on" : "")});
  p.qemu_argv.insert(p.qemu_argv.end(), s.qemu_extra_args.begin(), s.qemu_extra_args.end());
  p.qemu_argv.insert(p.qemu_argv.end(), in.extra_qemu_args.begin(), in.extra_qemu_args.end());
  return p;
}

}  // namespace fsd::launcher
