// vmlaunch: spec.json -> fsd + QEMU -> a guest with the store, xchg, shared
// and a writable overlay store; runs one command and returns its status.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <optional>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "common/closure.h"
#include "common/fd.h"
#include "common/signals.h"
#include "launcher/disks.h"
#include "launcher/host_links.h"
#include "launcher/initramfs.h"
#include "launcher/kernel_image.h"
#include "launcher/modules.h"
#include "launcher/plan.h"
#include "launcher/process.h"
#include "launcher/registration.h"
#include "launcher/spec.h"

namespace fs = std::filesystem;
using namespace fsd::launcher;
using fsd::Fd;

namespace {

// Exit statuses of vmlaunch's own outcomes (else: the guest command's status).
constexpr int kExitUsage = 2;         // bad command line or spec
constexpr int kExitGuestPanic = 121;  // the guest kernel panicked
constexpr int kExitTimeout = 124;     // the spec's timeout passed
constexpr int kExitFsdFailed = 125;   // fsd failed to start or died
constexpr int kExitQemuFailed = 126;  // QEMU failed, or the guest stopped without a status
constexpr int kExitNoCommandStatus = 0;
// How long a guest asked to power off (SIGTERM) gets before it is killed.
constexpr auto kPowerdownGrace = std::chrono::seconds(20);

// Ends vmlaunch with `code` after unwinding, so every temp dir and child is cleaned up.
struct Exit {
  int code;
  std::string message;
};
[[noreturn]] void die(int code, const std::string& msg) { throw Exit{code, msg}; }

std::string self_dir() {
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec).parent_path().string();
}

std::string cache_root() {
  if (const char* c = std::getenv("FSD_CACHE"); c && *c) return c;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/fsd";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/fsd";
  return "/tmp/fsd-cache";
}

std::string default_kernel() {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(cache_root() + "/kernel", ec))
    if (fs::exists(e.path() / "vmlinuz")) return (e.path() / "vmlinuz").string();
  return "";
}

std::vector<std::string> split_words(const char* s) {
  std::vector<std::string> out;
  if (!s) return out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Where the initramfs keeps the modules the init loads (not /lib/modules,
// which a system's modules may take).
const std::string kGuestModules = "/vmlaunch/modules/";

// busybox applets linked in the guest's /bin.
constexpr const char* kApplets[] = {
    "sh", "ls", "cat", "echo", "mkdir", "rm", "cp", "mv", "touch", "sync", "sleep", "true", "false", "test", "[",
    "env", "id", "uname", "grep", "wc", "find", "tar", "md5sum", "sha256sum", "dd", "head", "tail", "mount", "umount",
    "df", "du", "stat", "ln", "chmod", "readlink", "poweroff", "date", "seq", "sort", "tr", "cut", "xargs", "vi",
    "less", "ip", "nc", "wget", "ping", "hostname"};

// The cached part of the initramfs: init, busybox and modules. Keyed by
// the content of what goes in (and the applet list), so it is rebuilt
// exactly when one of them changes.
std::string base_initramfs(const std::vector<ModuleFile>& modules, const std::string& init_binary, const std::string& busybox) {
  std::string key = "layout 2;";
  for (const char* a : kApplets) key += std::string(a) + ",";
  auto add = [&](const std::string& p) {
    std::ifstream in(p, std::ios::binary | std::ios::ate);
    std::string content(static_cast<size_t>(std::max<std::streamoff>(0, in.tellg())), '\0');
    in.seekg(0).read(content.data(), static_cast<std::streamsize>(content.size()));
    char h[24];
    std::snprintf(h, sizeof h, "%016zx", std::hash<std::string>{}(content));
    key += fs::path(p).filename().string() + ":" + std::to_string(content.size()) + ":" + h + ";";
  };
  add(init_binary);
  add(busybox);
  for (auto& m : modules) add(m.path);
  char hex[32];
  std::snprintf(hex, sizeof hex, "%016zx", std::hash<std::string>{}(key));
  std::string dir = cache_root() + "/initramfs";
  fs::create_directories(dir);
  std::string path = dir + "/" + hex + ".img";
  if (fs::exists(path)) return path;
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    Initramfs ar(tmp);
    for (const char* d : {"bin", "dev", "proc", "sys", "run", "tmp", "mnt", "lib", "lib/modules", "nix", "root", "vmlaunch",
                          "vmlaunch/modules"})
      ar.add_dir(d);
    ar.add_char_device("dev/console", 5, 1);
    ar.add_host_file("bin/busybox", busybox, 0755);
    for (const char* applet : kApplets) ar.add_symlink(std::string("bin/") + applet, "busybox");
    ar.add_host_file("init", init_binary, 0755);
    for (auto& m : modules) ar.add_host_file(kGuestModules.substr(1) + fs::path(m.path).filename().string(), m.path, 0644);
    ar.close();
  }
  fs::rename(tmp, path);
  return path;
}

void append_file(std::ofstream& out, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  out << in.rdbuf();
}

struct Options {
  std::string spec_path, store, system, system_mode, accel, fsd_binary, relay_to, registration;
  bool dry_run = false, print_spec = false, keep = false;
  int timeout = -1;
  std::vector<std::string> command;
};

// The built-in demo: the demo store scripts/setup makes, the default kernel,
// and a command that shows the guest's view.
nlohmann::json demo_spec(const std::string& kernel) {
  return {{"name", "vmlaunch-demo"},
          {"memory", 512},
          {"console", "quiet"},
          {"kernel", kernel},
          {"store", {{"path", cache_root() + "/demo-store"}}},
          {"command",
           "echo '== the store (read-only, with a writable overlay):'; ls /nix/store; "
           "echo '== running a program from the store:'; /nix/store/*-hello-1.0/bin/hello; "
           "echo '== writing a new store path in the overlay:'; mkdir /nix/store/0000000000000000000000000000000n-new && "
           "ls -d /nix/store/*-new; echo '== writing to xchg:'; uname -a > /tmp/xchg/uname.txt && cat /tmp/xchg/uname.txt"}};
}

// A directory for one run (xchg, sockets, logs, the initramfs), removed
// with everything in it when the run ends, however it ends, unless kept.
class WorkDir {
 public:
  WorkDir(const std::string& base, bool keep) : path_(base + "/vmlaunch-XXXXXX"), keep_(keep) {
    if (!::mkdtemp(path_.data())) die(1, "cannot create a directory in " + base + ": " + std::strerror(errno));
  }
  ~WorkDir() {
    if (keep_) {
      std::fprintf(stderr, "vmlaunch: kept %s\n", path_.c_str());
    } else {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  WorkDir(const WorkDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool keep_;
};

// Where vmlaunch's own files go: $TMPDIR unless USE_TMPDIR=0.
std::string temp_base() {
  const char* tmpdir = std::getenv("TMPDIR");
  const char* use_tmpdir = std::getenv("USE_TMPDIR");
  return (tmpdir && *tmpdir && !(use_tmpdir && std::string(use_tmpdir) == "0")) ? tmpdir : "/tmp";
}

// With USE_TMPDIR (any value but 0) and TMPDIR, xchg is $TMPDIR/xchg itself,
// kept with what the guest wrote, as qemu-vm.nix does (vm-exec fills it
// before a run and reads it after); "" otherwise.
std::string kept_xchg_dir() {
  const char* tmpdir = std::getenv("TMPDIR");
  const char* use_tmpdir = std::getenv("USE_TMPDIR");
  if (!tmpdir || !*tmpdir || !use_tmpdir || !*use_tmpdir || std::string(use_tmpdir) == "0") return "";
  return std::string(tmpdir) + "/xchg";
}

std::string join_words(const std::vector<std::string>& v) {
  std::string s;
  for (auto& w : v) s += (s.empty() ? "" : " ") + (w.find(' ') != std::string::npos ? "'" + w + "'" : w);
  return s;
}

// What the console relay shows: with console "quiet", only the command's
// output (between the guest init's start and exit lines), its own messages,
// and a panic.
class ConsoleFilter {
 public:
  explicit ConsoleFilter(Console mode) : mode_(mode) {}
  void feed(std::string_view chunk) {
    if (mode_ == Console::kSerial) {
      (void)!::write(1, chunk.data(), chunk.size());
      return;
    }
    line_ += chunk;
    for (size_t nl; (nl = line_.find('\n')) != std::string::npos; line_.erase(0, nl + 1)) {
      std::string_view line(line_.data(), nl + 1);
      auto has = [&](const char* s) { return line.find(s) != std::string_view::npos; };
      if (has("fsd-guest-init: started") || has("fsd-guest-init: exit")) {
        relaying_ = has("fsd-guest-init: started");
        continue;
      }
      if (relaying_ || has("fsd-guest-init:") || has("Kernel panic")) (void)!::write(1, line.data(), line.size());
    }
  }

 private:
  Console mode_;
  std::string line_;
  bool relaying_ = false;
};

// One run of vmlaunch, phase by phase. Every resource is a member that
// cleans up after itself: the children are killed and reaped, then the work
// directory is removed (members go in reverse order of declaration).
class Launch {
 public:
  explicit Launch(const Options& o) : o_(o), work_(temp_base(), o.keep), xchg_dir_(kept_xchg_dir()) {
    if (xchg_dir_.empty()) xchg_dir_ = path("xchg");
  }

  int run() {
    make_dirs();
    read_spec();
    if (o_.print_spec) {
      std::printf("%s\n", to_json(spec_).dump(2).c_str());
      return 0;
    }
    plan_inputs();
    prepare_disks();
    make_run_plan();
    if (o_.dry_run) return print_plan();
    if (!spec_.boot_loader) build_initramfs();
    block_signals();
    start_fsd();
    start_qemu();
    int outcome = supervise();
    qemu_.stop(std::chrono::seconds(10));
    fsd_.stop(std::chrono::seconds(5));
    if (outcome < 0) outcome = guest_outcome();
    if (!why_.empty()) std::fprintf(stderr, "vmlaunch: %s\n", why_.c_str());
    return outcome;
  }

 private:
  std::string path(const std::string& name) const { return work_.path() + "/" + name; }

  void make_dirs() {
    std::error_code ec;
    fs::create_directories(xchg_dir_, ec);
    if (ec) die(1, "cannot create " + xchg_dir_ + ": " + ec.message());
    fs::create_directories(path("run"));
  }

  // The spec (or the built-in demo), with the command line's overrides.
  void read_spec() {
    SpecContext ctx;
    ctx.store_override = o_.store;
    ctx.system_override = o_.system;
    ctx.registration_override = o_.registration.empty() ? "" : fs::absolute(o_.registration).string();
    if (const char* image = std::getenv("NIX_DISK_IMAGE"); image && *image) ctx.root_disk_override = image;
    if (const char* vars = std::getenv("NIX_EFI_VARS"); vars && *vars) ctx.efi_vars_override = vars;
    for (const auto& n : kSystemModeNames)
      if (o_.system_mode == n.name) ctx.system_mode_override = n.value;
    ctx.xchg_dir = xchg_dir_;
    if (const char* sd = std::getenv("SHARED_DIR"); sd && *sd) ctx.shared_dir = sd;
    try {
      if (o_.spec_path.empty()) {
        std::string kernel = default_kernel();
        if (kernel.empty()) die(kExitUsage, "no spec given and no default guest kernel: run scripts/setup");
        ctx.file = "(built-in demo)";
        spec_ = parse_spec(demo_spec(kernel), ctx);
      } else {
        spec_ = load_spec(o_.spec_path, ctx);
      }
    } catch (const SpecError& e) {
      die(kExitUsage, e.what());
    }
    // After "--": one word is a shell command line (as vm-exec takes it),
    // several are an argv.
    if (o_.command.size() == 1) {
      spec_.command_argv.clear();
      spec_.command_shell = o_.command[0];
    } else if (!o_.command.empty()) {
      spec_.command_shell.reset();
      spec_.command_argv = o_.command;
    }
    if (o_.timeout >= 0) spec_.timeout_s = static_cast<unsigned>(o_.timeout);
    if (!o_.accel.empty()) spec_.accel = o_.accel == "kvm" ? Accel::kKvm : o_.accel == "tcg" ? Accel::kTcg : Accel::kAuto;
    filter_ = ConsoleFilter(spec_.console);
  }

  void plan_inputs() {
    // fsd: given; beside vmlaunch (installed); in the build tree; on PATH.
    in_.fsd_binary = o_.fsd_binary;
    for (const std::string& candidate : {self_dir() + "/fsd", self_dir() + "/../fsd/fsd"})
      if (in_.fsd_binary.empty() && fs::is_regular_file(candidate)) in_.fsd_binary = candidate;
    if (in_.fsd_binary.empty()) in_.fsd_binary = "fsd";
    in_.run_dir = path("run");
    in_.qmp_socket = path("run/qmp.sock");
    in_.relay_binary = fs::read_symlink("/proc/self/exe").string();
    in_.initrd = path("initrd.img");
    if (!spec_.boot_loader) {  // else the disk's bootloader brings its own kernel
      in_.module_dir = spec_.modules.empty() ? find_module_dir(spec_.kernel) : spec_.modules;
      // Decompressed once on the host, the kernel boots without unpacking
      // itself in the guest (seconds under TCG; see kernel_image.h).
      if (spec_.arch == Arch::kX86_64) in_.boot_kernel = pvh_kernel(spec_.kernel, cache_root());
    }
    in_.status_file = path("status");
    in_.uid = ::getuid();
    // auto: KVM when it can be opened, else TCG; a KVM guest that stays
    // silent is caught by supervise().
    // KVM runs only guests of the host's own architecture.
    utsname host{};
    ::uname(&host);
    bool native = std::string(host.machine) == fsd::name_of(spec_.arch);
    bool kvm_ok = native && ::access("/dev/kvm", R_OK | W_OK) == 0;
    if (spec_.accel == Accel::kKvm && !native)
      die(kExitUsage, std::string("accel kvm: KVM runs ") + host.machine + " guests on this host, and \"arch\" is " +
                          std::string(fsd::name_of(spec_.arch)) + " (use tcg or auto)");
    in_.accel = spec_.accel == Accel::kAuto ? (kvm_ok ? Accel::kKvm : Accel::kTcg) : spec_.accel;
    in_.extra_kernel_params = std::getenv("QEMU_KERNEL_PARAMS") ? std::getenv("QEMU_KERNEL_PARAMS") : "";
    in_.extra_qemu_args = split_words(std::getenv("QEMU_OPTS"));
    if (const char* net = std::getenv("QEMU_NET_OPTS")) {
      std::string opts = net;
      opts.erase(0, opts.find_first_not_of(" \t,"));
      opts.erase(opts.find_last_not_of(" \t,") + 1);
      in_.net_opts = opts;
    }
  }

  // Disks, in the plan's order: the root (/dev/vda, as qemu-vm.nix puts
  // it), the spec's (created and formatted as asked), the throw-away empty
  // ones, then the store's.
  void prepare_disks() {
    auto prepare = [&](const DiskSpec& d) {
      PreparedDisk p{.format = "qcow2"};
      if (!o_.dry_run) {
        try {
          p = prepare_disk(d, path("disk-tools.log"));
        } catch (const std::exception& e) {
          die(kExitQemuFailed, e.what());
        }
        if (p.formatted) std::fprintf(stderr, "vmlaunch: formatted %s as %s\n", d.file.c_str(), d.fs_type.c_str());
      } else if (fs::exists(d.file)) {
        p.format = is_qcow2(d.file) ? "qcow2" : "raw";
      } else if (d.auto_format) {
        p.format = "raw";
      }
      in_.disks.push_back({d.file, p.format, d.read_only, d.snapshot});
    };
    if (spec_.firmware == Firmware::kUefi && !fs::exists(spec_.efi_vars)) {
      // The VM's own UEFI variables, from OVMF's template, kept across runs.
      if (!fs::exists(in_.ovmf_vars)) die(kExitUsage, "firmware uefi: no " + in_.ovmf_vars + " (install Debian's ovmf package)");
      if (!o_.dry_run) {
        std::error_code ec;
        fs::copy_file(in_.ovmf_vars, spec_.efi_vars, ec);
        if (ec) die(1, "cannot make " + spec_.efi_vars + ": " + ec.message());
        std::fprintf(stderr, "vmlaunch: made the UEFI variables file %s\n", spec_.efi_vars.c_str());
      }
    }
    if (spec_.firmware == Firmware::kUefi && !fs::exists(in_.ovmf_code))
      die(kExitUsage, "firmware uefi: no " + in_.ovmf_code + " (install Debian's ovmf package)");
    if (!spec_.root.file.empty()) prepare(spec_.root);
    for (const auto& d : spec_.disks) prepare(d);
    for (size_t i = 0; i < spec_.empty_disks_mib.size(); i++)
      prepare({.file = path("empty-" + std::to_string(i) + ".qcow2"), .size_mib = spec_.empty_disks_mib[i]});
    if (spec_.store.writable == Writable::kDisk) prepare(spec_.store.disk);
    if (spec_.store.image != StoreImage::kNone) {
      std::string image = "(the store's " + std::string(fsd::name_of(spec_.store.image)) + " image)";
      if (!o_.dry_run) {
        try {
          image = store_image(spec_.store.image, spec_.store.path, cache_root(), path("disk-tools.log"),
                              spec_.store.closure_list.get());
        } catch (const std::exception& e) {
          die(1, e.what());
        }
      }
      in_.disks.push_back({image, "raw", true, false});
    }
  }

  void make_run_plan() {
    try {
      plan_ = make_plan(spec_, in_);
    } catch (const SpecError& e) {
      die(kExitUsage, (o_.spec_path.empty() ? "(built-in demo)" : o_.spec_path) + ": " + e.what());
    }
  }

  int print_plan() const {
    std::printf("fsd:\n  %s\nqemu:\n  %s\nguest mounts:\n", join_words(plan_.fsd_argv).c_str(),
                join_words(plan_.qemu_argv).c_str());
    for (auto& m : plan_.mount_plan) std::printf("  %s\n", m.c_str());
    std::string command = plan_.guest.contains("init")      ? "(none: the system's init runs)"
                          : plan_.guest.contains("command") ? plan_.guest["command"].dump()
                                                            : "(interactive shell)";
    std::printf("guest command:\n  %s\n", command.c_str());
    return 0;
  }

  // The initramfs: [the spec's initrd] + the cached base + this run's plan.
  void build_initramfs() {
    if (in_.module_dir.empty()) die(kExitUsage, "no kernel modules for " + spec_.kernel + ": set \"modules\" in the spec");
    std::vector<ModuleFile> mods;
    try {
      mods = resolve_modules(indexed_module_dir(in_.module_dir, cache_root()), plan_.modules);
    } catch (const std::exception& e) {
      die(kExitUsage, e.what());
    }
    nlohmann::json guest = plan_.guest;
    guest["modules"] = guest["optional_modules"] = nlohmann::json::array();
    for (auto& m : mods) {
      std::string in_guest = kGuestModules + fs::path(m.path).filename().string();
      guest["modules"].push_back(in_guest);
      if (m.optional) guest["optional_modules"].push_back(in_guest);
    }
    // The guest's init: beside vmlaunch (the build tree), or where it is installed.
    // The guest's init and shell, of the guest's architecture.
    bool aarch64 = spec_.arch == Arch::kAarch64;
    std::string init_name = aarch64 ? "fsd-guest-init-aarch64" : "fsd-guest-init";
    std::string init_binary = self_dir() + "/" + init_name;
    std::string installed = self_dir() + "/" FSD_GUEST_INIT_FROM_BIN "/" + init_name;
    if (!fs::exists(init_binary)) init_binary = installed;
    if (!fs::exists(init_binary))
      die(1, init_name + " is missing: neither beside vmlaunch nor at " + fs::path(installed).lexically_normal().string() +
                 (aarch64 ? " (it is built where Debian's g++-aarch64-linux-gnu is installed)" : ""));
    std::string busybox = aarch64 ? aarch64_busybox() : "/bin/busybox";
    std::string base_img = base_initramfs(mods, init_binary, busybox);
    Initramfs ar(path("plan.img"));
    ar.add_file("init.json", guest.dump(), 0644);
    if (!spec_.store.registration.empty()) {  // the base image has /vmlaunch
      ar.add_file(std::string(kGuestRegistration).substr(1), registration(), 0644);
    }
    ar.close();
    std::ofstream out(in_.initrd, std::ios::binary);
    if (!spec_.initrd.empty()) append_file(out, spec_.initrd);
    append_file(out, base_img);
    append_file(out, path("plan.img"));
  }

  // A static busybox for aarch64 guests: beside their kernel, or where
  // scripts/fetch-guest-kernel arm64 puts Debian's.
  std::string aarch64_busybox() {
    std::string beside = (fs::path(spec_.kernel).parent_path() / "busybox").string();
    if (fs::is_regular_file(beside)) return beside;
    std::error_code ec;
    for (auto& e : fs::directory_iterator(cache_root() + "/kernel-arm64", ec))
      if (fs::is_regular_file(e.path() / "busybox")) return (e.path() / "busybox").string();
    die(kExitUsage, "arch aarch64: no aarch64 busybox for the guest's shell, beside the kernel or in " + cache_root() +
                        "/kernel-arm64 (scripts/fetch-guest-kernel arm64 fetches Debian's)");
  }

  // store.registration's text: the registration the spec check read, or
  // one computed from the list of store paths it read.
  std::string registration() {
    const StoreSpec& store = spec_.store;
    if (!store.registration_is_list) return format_registration(store.registration_given);
    try {
      auto started = std::chrono::steady_clock::now();
      auto reg = compute_registration(store.path, store.mount_point, store.registration_names);
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      uint64_t bytes = 0;
      for (const auto& p : reg) bytes += p.nar_size;
      std::fprintf(stderr, "vmlaunch: registered %zu store paths (%.1f MiB hashed in %.1f s)\n", reg.size(), bytes / 1048576.0, secs);
      return format_registration(reg);
    } catch (const std::exception& e) {
      die(kExitUsage, "store.registration: " + std::string(e.what()));
    }
  }

  // Signals are read from a signalfd in supervise().
  void block_signals() {
    sigset_t sigs = fsd::block_signals({SIGINT, SIGTERM, SIGHUP});
    signals_.reset(::signalfd(-1, &sigs, SFD_CLOEXEC));
  }

  // fsd, and wait until every socket accepts (it says so on a pipe).
  void start_fsd() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) die(1, "pipe failed");
    Fd ready_r(p[0]), ready_w(p[1]);
    std::vector<std::string> argv = plan_.fsd_argv;
    argv.insert(argv.end(), {"--ready-fd", std::to_string(ready_w.get())});
    Fd log = open_log(path("fsd.log"));
    fsd_ = Child::spawn(argv, -1, log.get(), log.get(), ready_w.get());
    ready_w.reset();
    char buf[16];
    pollfd rp{ready_r.get(), POLLIN, 0};
    if (::poll(&rp, 1, 30000) <= 0 || ::read(ready_r.get(), buf, sizeof buf) <= 0) {
      fsd_.stop(std::chrono::seconds(2));
      die(kExitFsdFailed, "fsd did not start:\n" + read_tail(path("fsd.log")));
    }
  }

  // QEMU. With a command, its console is relayed (and watched for panics);
  // without one, the terminal is the guest's.
  void start_qemu() {
    agent_socket_.path = spec_.guest_agent_socket;
    console_.reset();
    Fd console_w;
    if (interactive()) {
      Fd log = open_log(path("qemu.log"));
      qemu_ = Child::spawn(plan_.qemu_argv, -1, -1, log.get());
    } else {
      int p[2];
      if (::pipe2(p, O_CLOEXEC) != 0) die(1, "pipe failed");
      console_.reset(p[0]);
      console_w.reset(p[1]);
      Fd log = open_log(path("qemu.log"));
      Fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      qemu_ = Child::spawn(plan_.qemu_argv, devnull.get(), console_w.get(), log.get());
    }
    started_ = std::chrono::steady_clock::now();
    if (!plan_.guest_agent_socket.empty())
      std::fprintf(stderr, "vmlaunch: the guest agent's socket: %s\n", plan_.guest_agent_socket.c_str());
  }
  bool interactive() const { return !spec_.has_command(); }

  // Runs until the VM ends; returns vmlaunch's status, or -1 when QEMU
  // exited by itself (then the guest's report decides).
  int supervise() {
    deadline_ = spec_.timeout_s ? started_ + std::chrono::seconds(spec_.timeout_s) : Clock::time_point::max();
    for (;;) {
      pollfd p[4] = {{signals_.get(), POLLIN, 0}, {fsd_.pidfd(), POLLIN, 0}, {qemu_.pidfd(), POLLIN, 0},
                     {console_.get(), POLLIN, 0}};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
      int wait_ms = deadline_ == Clock::time_point::max() ? 1000 : static_cast<int>(std::clamp<long>(left, 0, 1000));
      ::poll(p, interactive() ? 3 : 4, wait_ms);
      if (!interactive() && (p[3].revents & (POLLIN | POLLHUP))) relay_console();
      if (p[0].revents & POLLIN) {
        if (int outcome = on_signal(); outcome >= 0) return outcome;
        continue;  // the guest was asked to power off
      }
      if (auto outcome = check_children()) return *outcome;
      if (auto outcome = check_time()) return *outcome;
    }
  }

  void relay_console() {
    char b[4096];
    ssize_t n = ::read(console_.get(), b, sizeof b);
    if (n == 0) console_.reset();
    if (n <= 0) return;
    seen_output_ = true;
    filter_.feed({b, static_cast<size_t>(n)});
    tail_.append(b, static_cast<size_t>(n));
    if (tail_.find("Kernel panic") != std::string::npos) panicked_ = true;
    if (tail_.size() > 8192) tail_.erase(0, tail_.size() - 4096);
  }

  // SIGTERM asks the guest to power off and gives it a grace period; a
  // second signal, or any other, stops the VM now. Returns the outcome, or -1.
  int on_signal() {
    signalfd_siginfo si;
    (void)!::read(signals_.get(), &si, sizeof si);
    int sig = static_cast<int>(si.ssi_signo);
    if (sig == SIGTERM && !powering_down_ && qmp_powerdown(in_.qmp_socket)) {
      std::fprintf(stderr, "vmlaunch: %s: asking the guest to power off (%lld s before it is stopped)\n", strsignal(sig),
                   static_cast<long long>(kPowerdownGrace.count()));
      powering_down_ = true;
      deadline_ = std::min(deadline_, Clock::now() + kPowerdownGrace);
      return -1;
    }
    why_ = std::string(strsignal(sig)) + ": stopping the VM";
    return 128 + sig;
  }

  std::optional<int> check_children() {
    qemu_.reap();
    if (qemu_.reaped()) {
      if (!powering_down_) return -1;
      why_ = "the guest powered off as asked (SIGTERM)";
      return 128 + SIGTERM;
    }
    fsd_.reap();
    if (fsd_.reaped()) {
      why_ = "fsd exited unexpectedly (status " + std::to_string(fsd_.status()) + "); stopping the VM\n" +
             read_tail(path("fsd.log"));
      return kExitFsdFailed;
    }
    return std::nullopt;
  }

  std::optional<int> check_time() {
    auto now = Clock::now();
    if (now >= deadline_ && powering_down_) {
      why_ = "the guest did not power off within " + std::to_string(kPowerdownGrace.count()) + " s of SIGTERM; stopped it";
      return 128 + SIGTERM;
    }
    if (now >= deadline_) {
      why_ = "timeout after " + std::to_string(spec_.timeout_s) + " s; stopping the VM";
      return kExitTimeout;
    }
    if (in_.accel != Accel::kKvm || interactive() || seen_output_ || now - started_ <= std::chrono::seconds(20))
      return std::nullopt;
    if (spec_.accel != Accel::kAuto) {
      why_ = "the guest printed nothing in 20 s under KVM; nested KVM can hang silently. Rerun with --accel tcg";
      return kExitQemuFailed;
    }
    // Nested KVM can hang a guest silently: fall back to TCG once.
    std::fprintf(stderr, "vmlaunch: the guest printed nothing in 20 s under KVM (nested KVM can hang); retrying with TCG\n");
    qemu_.stop(std::chrono::seconds(5));
    in_.accel = Accel::kTcg;
    plan_ = make_plan(spec_, in_);
    start_qemu();
    return std::nullopt;
  }

  // QEMU is gone by itself: what did the guest report?
  int guest_outcome() {
    std::string status = read_tail(in_.status_file, 64);
    if (panicked_) {
      why_ = "the guest kernel panicked";
      return kExitGuestPanic;
    }
    if (!status.empty()) return std::atoi(status.c_str());
    if (interactive() && qemu_.status() == 0) return kExitNoCommandStatus;
    if (qemu_.status() != 0) {
      why_ = "QEMU failed (status " + std::to_string(qemu_.status()) + "):\n" + read_tail(path("qemu.log"));
      return kExitQemuFailed;
    }
    why_ = "the guest powered off without reporting the command's status";
    return kExitQemuFailed;
  }

  using Clock = std::chrono::steady_clock;
  const Options& o_;
  WorkDir work_;  // first in, last out: removed after the children are gone
  std::string xchg_dir_;
  Spec spec_;
  PlanInputs in_;
  Plan plan_;
  Fd signals_;
  // A socket QEMU makes outside the work directory (the guest agent's at a
  // path the spec gives) and leaves behind: removed once QEMU is gone, on
  // every way out.
  struct Unlinked {
    std::string path;
    ~Unlinked() {
      if (!path.empty()) ::unlink(path.c_str());
    }
  } agent_socket_;
  Child fsd_;
  Child qemu_;
  Fd console_;  // QEMU's serial console, when relayed
  ConsoleFilter filter_{Console::kSerial};
  Clock::time_point started_, deadline_;
  bool seen_output_ = false, panicked_ = false, powering_down_ = false;
  std::string tail_;  // the console's last few KiB, to spot a panic
  std::string why_;   // said on stderr at the end
};

int run(const Options& o) { return Launch(o).run(); }

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"vmlaunch [OPTIONS] [SPEC] [-- COMMAND...]: boots a QEMU guest with a host store shared by fsd,\n"
               "and runs a command in it (the spec's, or COMMAND: one word is a shell command line, several an argv).\n"
               "Without a spec it runs a built-in demo. Exit status: the guest command's; or 2 bad spec/usage,\n"
               "121 guest kernel panic, 124 timeout, 125 fsd failed, 126 QEMU failed, 128+N killed by signal N."};
  app.add_option("spec", o.spec_path, "The VM spec (JSON); see the README")->check(CLI::ExistingFile);
  app.add_option("--store", o.store, "The host store to share (overrides store.path)");
  app.add_option("--system", o.system, "A NixOS-style system toplevel in the store (overrides the spec's system)");
  app.add_option("--registration", o.registration,
                 "Nix's registration of the paths the guest's database holds (a closureInfo, its registration file, or a "
                 "list of store paths to register; overrides store.registration)");
  app.add_option("--system-mode", o.system_mode, "exec: the command in the system's context; boot: the system's own init")
      ->check(CLI::IsMember({"auto", "exec", "boot"}));
  app.add_option("--accel", o.accel, "auto, kvm or tcg (overrides the spec)")->check(CLI::IsMember({"auto", "kvm", "tcg"}));
  app.add_option("--timeout", o.timeout, "Seconds before the VM is stopped (overrides the spec; 0: none)");
  app.add_option("--fsd", o.fsd_binary, "The fsd binary to use");
  app.add_flag("--dry-run", o.dry_run, "Print the fsd and QEMU command lines and the guest's mount plan; start nothing");
  app.add_flag("--print-spec", o.print_spec, "Print the effective spec, defaults included");
  app.add_option("--relay-to", o.relay_to, "(internal) relay stdin/stdout to HOST:PORT, for guest->host port forwards")
      ->group("");
  app.add_flag("--keep", o.keep, "Keep the temporary directory (xchg, logs, initramfs)");
  // Everything after the first "--" is the guest command, taken verbatim.
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; i--) args.push_back(argv[i]);  // CLI11 wants them reversed
  for (int i = 1; i < argc; i++) {
    if (std::string(argv[i]) == "--") {
      o.command.assign(argv + i + 1, argv + argc);
      args.assign(std::make_reverse_iterator(argv + i), std::make_reverse_iterator(argv + 1));
      break;
    }
  }
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "vmlaunch: %s (see vmlaunch --help)\n", e.what());
    return kExitUsage;
  }
  if (!o.relay_to.empty()) return relay(o.relay_to);
  try {
    return run(o);
  } catch (const Exit& e) {
    std::fprintf(stderr, "vmlaunch: %s\n", e.message.c_str());
    return e.code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vmlaunch: %s\n", e.what());
    return 1;
  }
}
