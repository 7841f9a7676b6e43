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

}  // namespace

std::string default_module_dir(const std::string& kernel) {
  std::error_code ec;
  auto dir = std::filesystem::path(kernel).parent_path() / "lib/modules";
  for (auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.is_directory()) return e.path().string();
  return "";
}

Plan make_plan(const Spec& s, const PlanInputs& in) {
  auto unsupported = [](const std::string& field, const std::string& what) {
    throw SpecError(field + ": " + what + " is not supported by this vmlaunch yet");
  };
  for (size_t i = 0; i < s.shares.size(); i++)
    if (s.shares[i].proto == Proto::k9p) unsupported("shares[" + std::to_string(i) + "].proto", "\"9p\" (fsd's 9p over TCP)");
  if (s.nix_db) unsupported("nixDb", "sharing the Nix database");
  if (s.graphics) unsupported("graphics", "a graphical console");

  Plan p;
  // fsd: the store and every virtiofs share, each on its own socket.
  p.fsd_argv = {in.fsd_binary, "--log-level", "warn"};
  auto fsd_export = [&](const std::string& tag, const std::string& path, bool ro, Cache cache) {
    std::string sock = in.run_dir + "/" + tag + ".sock";
    p.fsd_argv.insert(p.fsd_argv.end(), {"--export", tag + "=" + path + (ro ? ",ro" : "") + ",cache=" + cache_name(cache),
                                         "--virtiofs-socket", tag + "=" + sock});
    return sock;
  };
  std::vector<std::pair<std::string, std::string>> devices;  // tag, socket
  devices.emplace_back("store", fsd_export("store", s.store.path, true, s.store.cache));
  for (const auto& sh : s.shares)
    if (sh.proto == Proto::kVirtiofs) devices.emplace_back(sh.tag, fsd_export(sh.tag, sh.source, sh.read_only, sh.cache));

  // The guest: modules, then mounts in order, then the command.
  p.modules = {"virtio_pci", "virtiofs"};
  bool nine_p = false;
  for (const auto& sh : s.shares) nine_p |= sh.proto == Proto::k9pQemu;
  if (nine_p) p.modules.insert(p.modules.end(), {"9pnet_virtio", "9p"});
  if (s.store.writable_tmpfs) p.modules.push_back("overlay");
  if (!in.disks.empty()) p.modules.push_back("virtio_blk");
  if (s.network == Network::kUser) p.modules.push_back("virtio_net");

  nlohmann::json mounts = nlohmann::json::array();
  const std::string& mp = s.store.mount_point;
  if (s.store.writable_tmpfs) {
    std::string ro_store = std::filesystem::path(mp).parent_path().string() + "/.ro-store";
    std::string rw_store = std::filesystem::path(mp).parent_path().string() + "/.rw-store";
    if (ro_store.starts_with("//")) ro_store = ro_store.substr(1), rw_store = rw_store.substr(1);
    mounts.push_back(mount("virtiofs", "store", ro_store, "", true));
    mounts.push_back(mount("tmpfs", "tmpfs", rw_store, "mode=0755", false));
    mounts.push_back({{"mkdir", rw_store + "/upper"}});
    mounts.push_back({{"mkdir", rw_store + "/work"}});
    mounts.push_back(mount("overlay", "overlay", mp,
                           "lowerdir=" + ro_store + ",upperdir=" + rw_store + "/upper,workdir=" + rw_store + "/work", false));
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
      std::string cache = sh.cache == Cache::kNever ? "none" : "loose";
      mounts.push_back(mount("9p", sh.tag, sh.target,
                             "trans=virtio,version=9p2000.L,msize=" + std::to_string(sh.msize) + ",cache=" + cache, sh.read_only));
      p.mount_plan.push_back("9p (QEMU's server) " + sh.tag + " (" + sh.source + ") -> " + sh.target + ", msize " +
                             std::to_string(sh.msize) + ", cache=" + cache);
    }
  }
  p.guest["mounts"] = mounts;
  if (s.command_shell) p.guest["command"] = {"/bin/sh", "-c", *s.command_shell};
  else if (!s.command_argv.empty()) p.guest["command"] = s.command_argv;
  nlohmann::json env = nlohmann::json::object({{"PATH", "/bin"}, {"HOME", "/tmp"}, {"TERM", "linux"}});
  for (const auto& [k, v] : s.env) env[k] = v;
  p.guest["env"] = env;
  p.guest["workdir"] = "/tmp/xchg";
  if (s.network == Network::kUser) {
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
  if (s.has_command()) p.guest["status_file"] = in.status_file;

  // QEMU: shared memory for vhost-user, direct kernel boot, the console on serial.
  std::string mem = std::to_string(s.memory_mib) + "M";
  p.qemu_argv = {s.qemu_binary, "-name", s.name, "-accel", in.accel == Accel::kKvm ? "kvm" : "tcg",
                 "-smp", std::to_string(s.cpus), "-m", mem,
                 "-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on", "-numa", "node,memdev=mem",
                 "-kernel", s.kernel, "-initrd", in.initrd};
  std::string append = "console=ttyS0 panic=-1";
  if (s.console == Console::kQuiet) append += " quiet loglevel=1";
  if (!s.cmdline.empty()) append += " " + s.cmdline;
  if (!in.extra_kernel_params.empty()) append += " " + in.extra_kernel_params;
  p.qemu_argv.insert(p.qemu_argv.end(), {"-append", append, "-nographic", "-nodefaults", "-no-reboot", "-serial", "stdio"});
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
  if (s.network == Network::kUser) {
    std::string netdev = "user,id=n0";
    for (const auto& f : s.forward_ports) {
      if (f.from_host) {
        netdev += ",hostfwd=" + f.proto + ":" + f.host.address + ":" + std::to_string(f.host.port) + "-" + f.guest.address + ":" +
                  std::to_string(f.guest.port);
      } else {
        // guest -> host: connections to guest.address:port in the guest reach host.address:port
        netdev += ",guestfwd=" + f.proto + ":" + (f.guest.address.empty() ? "10.0.2.100" : f.guest.address) + ":" +
                  std::to_string(f.guest.port) + "-tcp:" + (f.host.address.empty() ? "127.0.0.1" : f.host.address) + ":" +
                  std::to_string(f.host.port);
      }
    }
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
