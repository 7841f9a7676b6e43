#include "launcher/spec.h"

#include <sys/stat.h>

#include <concepts>
#include <filesystem>
#include <fstream>
#include <set>

#include "common/closure.h"
#include "launcher/disks.h"
#include "launcher/registration.h"
#include "launcher/sexp.h"

namespace fsd::launcher {
namespace {

// A tag: one plain word, safe as a file name, a QEMU option value and a
// mount source.
bool plain_word(const std::string& w) {
  return !w.empty() && w != "." && w != ".." &&
         w.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-") == std::string::npos;
}
// A host name or an IPv4 address: what QEMU's hostfwd and guestfwd take
// between their ':' and '-' separators.
bool host_name(const std::string& a) {
  return a.size() <= 253 && a.front() != '-' &&
         a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") == std::string::npos;
}

using json = nlohmann::json;

std::string type_of(const json& v) {
  if (v.is_string()) return "the string " + v.dump();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number()) return "the number " + v.dump();
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  return "null";
}

bool is_dir(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(const std::string& p) {
  struct stat st{};
  return ::stat(p.c_str(), &st) == 0;
}

struct Range {
  uint64_t min, max;
};

// Fields whose JSON takes more than one shape.
struct CommandField {  // "command": a string for sh -c, or an argv list
  std::optional<std::string>& shell;
  std::vector<std::string>& argv;
};
struct NixDbField {  // "nixDb": true, false or a directory
  std::string& path;
};
struct GuestAgentField {  // "guestAgent": true, false or the socket's path
  bool& on;
  std::string& socket;
};

// The tables of the fields that are not enums in the Spec.
inline constexpr EnumName<bool> kFromNames[] = {{"host", true}, {"guest", false}};
inline constexpr EnumName<std::string_view> kForwardProtoNames[] = {{"tcp", "tcp"}, {"udp", "udp"}};

// ---- the schema: every field of the spec once, in the order a spec is
// checked. Reader and Writer walk it alike; a field with a default keeps
// it unless the spec gives one.

template <class V>
void schema(V& v, DiskSpec& d) {
  v.field("file", d.file);
  v.field("size", d.size_mib, Range{1, 1ull << 24});
  v.field("readOnly", d.read_only);
  v.field("snapshot", d.snapshot);
  v.field("fsType", d.fs_type);
  v.field("mountPoint", d.mount_point);
  v.field("label", d.label);
  v.field("autoFormat", d.auto_format);
}

template <class V>
void schema(V& v, StoreSpec& s) {
  v.field("path", s.path);
  v.field("mountPoint", s.mount_point);
  v.field("writable", s.writable);
  if constexpr (V::kReading) s.disk = {.fs_type = "ext4", .label = "nix-rw-store", .auto_format = true};
  if (V::kReading || s.writable == Writable::kDisk) v.object("disk", [&](auto& o) { schema(o, s.disk); });
  v.field("cache", s.cache);
  v.field("proto", s.proto);
  v.field("msize", s.msize, Range{4096, 16 << 20});  // 9p only
  v.field("image", s.image);
  v.field("closure", s.closure);
  v.field("registration", s.registration);
}

template <class V>
void schema(V& v, ShareSpec& s) {
  v.field("tag", s.tag);
  v.field("source", s.source);
  v.field("target", s.target);
  v.field("readOnly", s.read_only);
  v.field("proto", s.proto);
  if constexpr (V::kReading) s.cache = s.read_only ? Cache::kAlways : Cache::kAuto;  // the default follows readOnly
  v.field("cache", s.cache);
  v.field("msize", s.msize, Range{4096, 16 << 20});  // 9p only
  v.field("writeback", s.writeback);                 // virtio-fs only
}

template <class V>
void schema(V& v, Endpoint& e) {
  v.field("address", e.address);
  v.field("port", e.port, Range{1, 65535});
}

template <class V>
void schema(V& v, ForwardPort& f) {
  v.choice("from", f.from_host, kFromNames);
  v.choice("proto", f.proto, kForwardProtoNames);
  v.object("host", [&](auto& o) { schema(o, f.host); });
  v.object("guest", [&](auto& o) { schema(o, f.guest); });
}

template <class V>
void schema(V& v, Spec& s) {
  v.field("name", s.name);
  v.field("memory", s.memory_mib, Range{128, 1 << 20});
  v.field("cpus", s.cpus, Range{1, 256});
  v.field("accel", s.accel);
  v.field("system", s.system.path);
  v.field("systemMode", s.system.mode);
  if constexpr (V::kReading) s.root = {.size_mib = 1024, .fs_type = "ext4", .label = "nixos", .auto_format = true};
  if (V::kReading || !s.root.file.empty()) v.object("root", [&](auto& o) { schema(o, s.root); });
  v.field("kernel", s.kernel);
  v.field("initrd", s.initrd);
  v.field("modules", s.modules);
  v.field("cmdline", s.cmdline);
  v.object("store", [&](auto& o) { schema(o, s.store); });
  v.list("shares", s.shares);
  v.field("command", CommandField{s.command_shell, s.command_argv});
  v.field("env", s.env);
  v.field("timeout", s.timeout_s, Range{0, 7 * 24 * 3600});
  v.field("console", s.console);
  v.field("network", s.network);
  v.list("forwardPorts", s.forward_ports);
  v.field("vlans", s.vlans, Range{1, 255});
  v.field("vlanHost", s.vlan_host, Range{0, 254});  // 0: none
  v.field("arch", s.arch);
  v.object("qemu", [&](auto& o) {
    o.field("binary", s.qemu_binary);
    o.field("extraArgs", s.qemu_extra_args);
  });
  v.list("disks", s.disks);
  v.field("emptyDisks", s.empty_disks_mib, Range{1, 1ull << 24});
  v.field("graphics", s.graphics);
  if (V::kReading || s.resolution.x != 0)
    v.object("resolution", [&](auto& o) {
      o.field("x", s.resolution.x, Range{320, 16384});
      o.field("y", s.resolution.y, Range{200, 16384});
    });
  v.field("usbTablet", s.usb_tablet);
  v.field("diskInterface", s.disk_interface);
  v.field("guestAgent", GuestAgentField{s.guest_agent, s.guest_agent_socket});
  v.field("firmware", s.firmware);
  v.field("efiVars", s.efi_vars);
  v.field("bootLoader", s.boot_loader);
  v.field("rng", s.rng);
  v.field("nixDb", NixDbField{s.nix_db});
}

// ---- reading

template <class T>
concept Named = requires(T v) { names(v); };

// Reads one JSON object through the schema; a field the spec leaves out (or
// gives as null) keeps its default. Unknown fields are reported by finish().
class Reader {
 public:
  static constexpr bool kReading = true;

  Reader(const json& j, std::string path, const SpecContext& ctx) : j_(j), path_(std::move(path)), ctx_(ctx) {
    if (!j_.is_object()) fail("", "expected an object, got " + type_of(j_));
  }
  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw SpecError(ctx_.file + ": " + field_path(key) + ": " + why);
  }
  std::string field_path(const std::string& key) const {
    if (key.empty()) return path_.empty() ? "(top level)" : path_;
    return path_.empty() ? key : path_ + "." + key;
  }
  void finish() const {
    for (const auto& [k, v] : j_.items()) {
      if (known_.count(k)) continue;
      std::string expected;
      for (const auto& n : known_) expected += (expected.empty() ? "" : ", ") + n;
      fail(k, "unknown field (known here: " + expected + ")");
    }
  }

  void field(const std::string& key, std::string& out) {
    if (const json* v = find(key)) out = expect(key, *v, v->is_string(), "a string").get<std::string>();
  }
  void field(const std::string& key, bool& out) {
    if (const json* v = find(key)) out = expect(key, *v, v->is_boolean(), "true or false").get<bool>();
  }
  template <std::unsigned_integral T>
  void field(const std::string& key, T& out, Range r) {
    if (const json* v = find(key)) out = static_cast<T>(number(key, *v, r));
  }
  template <Named E>
  void field(const std::string& key, E& out) {
    choice(key, out, names(E{}));
  }
  template <class Out, class Table>
  void choice(const std::string& key, Out& out, const Table& table) {
    std::string s;
    field(key, s);
    if (!find(key)) return;
    for (const auto& n : table)
      if (n.name == s) return void(out = Out(n.value));
    std::string all;
    for (const auto& n : table) all += (all.empty() ? "" : ", ") + std::string(n.name);
    fail(key, "\"" + s + "\" is not one of: " + all);
  }
  void field(const std::string& key, std::vector<std::string>& out) {
    const json* v = find(key);
    if (!v) return;
    expect(key, *v, v->is_array(), "a list of strings");
    out.clear();
    for (size_t i = 0; i < v->size(); i++)
      out.push_back(expect(key + "[" + std::to_string(i) + "]", (*v)[i], (*v)[i].is_string(), "a string").get<std::string>());
  }
  void field(const std::string& key, std::vector<uint64_t>& out, Range r) {
    const json* v = find(key);
    if (!v) return;
    expect(key, *v, v->is_array(), "a list of whole numbers");
    out.clear();
    for (size_t i = 0; i < v->size(); i++) out.push_back(number(key + "[" + std::to_string(i) + "]", (*v)[i], r));
  }
  void field(const std::string& key, std::map<std::string, std::string>& out) {
    const json* v = find(key);
    if (!v) return;
    expect(key, *v, v->is_object(), "an object of strings");
    for (const auto& [k, x] : v->items()) {
      expect(key + "." + k, x, x.is_string(), "a string");
      if (k.empty() || k.find('=') != std::string::npos) fail(key + "." + k, "is not a valid variable name");
      out[k] = x.get<std::string>();
    }
  }
  void field(const std::string& key, CommandField c) {
    const json* v = find(key);
    if (!v) return;
    if (v->is_string()) {
      c.shell = v->get<std::string>();
    } else if (v->is_array()) {
      field(key, c.argv);
      if (c.argv.empty()) fail(key, "an empty list runs nothing; leave it out for a shell");
    } else {
      fail(key, "expected a string or a list of strings, got " + type_of(*v));
    }
  }
  // nixDb: true shares the host's database when there is one.
  void field(const std::string& key, NixDbField n) {
    const json* v = find(key);
    if (!v) return;
    if (v->is_boolean()) {
      n.path = v->get<bool>() ? kNixDb : "";
      if (!n.path.empty() && !is_dir(n.path))
        fail(key, std::string("true, but this host has no Nix database at ") + kNixDb + " (give a directory, or false)");
    } else if (v->is_string()) {
      n.path = v->get<std::string>();
      if (!is_dir(n.path)) fail(key, "\"" + n.path + "\" is not a directory");
    } else {
      fail(key, "expected true, false or a directory, got " + type_of(*v));
    }
  }
  void field(const std::string& key, GuestAgentField g) {
    const json* v = find(key);
    if (!v) return;
    if (v->is_boolean()) {
      g.on = v->get<bool>();
    } else if (v->is_string()) {
      g.on = true;
      g.socket = v->get<std::string>();
      if (g.socket.empty() || g.socket[0] != '/') fail(key, "\"" + g.socket + "\" is not an absolute path (the guest agent's socket)");
      if (!is_dir(std::filesystem::path(g.socket).parent_path().string()))
        fail(key, "\"" + g.socket + "\": its directory does not exist");
      struct stat st{};
      if (::lstat(g.socket.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode))
        fail(key, "\"" + g.socket + "\" exists and is not a socket (QEMU would replace it)");
    } else {
      fail(key, "expected true, false or the socket's path, got " + type_of(*v));
    }
  }
  template <class F>
  void object(const std::string& key, F read) {
    if (const json* v = find(key)) {
      Reader o(*v, field_path(key), ctx_);
      read(o);
      o.finish();
    }
  }
  template <class T>
  void list(const std::string& key, std::vector<T>& out) {
    const json* v = find(key);
    if (!v) return;
    expect(key, *v, v->is_array(), "a list");
    for (size_t i = 0; i < v->size(); i++) {
      Reader o((*v)[i], field_path(key) + "[" + std::to_string(i) + "]", ctx_);
      T item;
      schema(o, item);
      o.finish();
      out.push_back(std::move(item));
    }
  }

 private:
  const json* find(const std::string& key) {
    known_.insert(key);
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  const json& expect(const std::string& key, const json& v, bool ok, const char* what) const {
    if (!ok) fail(key, std::string("expected ") + what + ", got " + type_of(v));
    return v;
  }
  uint64_t number(const std::string& key, const json& v, Range r) const {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
      fail(key, "expected a whole number, got " + type_of(v));
    uint64_t n = v.get<uint64_t>();
    if (n < r.min || n > r.max)
      fail(key, std::to_string(n) + " is out of range (" + std::to_string(r.min) + " to " + std::to_string(r.max) + ")");
    return n;
  }

  const json& j_;
  std::string path_;
  const SpecContext& ctx_;
  std::set<std::string> known_;
};

// ---- writing (--print-spec): the same schema, into JSON that reads back
// to the same spec.

class Writer {
 public:
  static constexpr bool kReading = false;
  explicit Writer(json& j) : j_(j) { j_ = json::object(); }

  template <class T>
    requires(!Named<T>)
  void field(const std::string& key, const T& v) {
    j_[key] = v;
  }
  template <class T>
  void field(const std::string& key, const T& v, Range) {
    j_[key] = v;
  }
  template <Named E>
  void field(const std::string& key, E v) {
    j_[key] = name_of(v);
  }
  template <class In, class Table>
  void choice(const std::string& key, const In& v, const Table& table) {
    for (const auto& n : table)
      if (n.value == v) j_[key] = n.name;
  }
  void field(const std::string& key, CommandField c) {
    if (c.shell) j_[key] = *c.shell;
    else if (!c.argv.empty()) j_[key] = c.argv;
  }
  void field(const std::string& key, NixDbField n) {
    if (n.path.empty()) j_[key] = false;
    else j_[key] = n.path;
  }
  void field(const std::string& key, GuestAgentField g) {
    if (!g.socket.empty()) j_[key] = g.socket;
    else j_[key] = g.on;
  }
  template <class F>
  void object(const std::string& key, F write) {
    Writer o(j_[key]);
    write(o);
  }
  template <class T>
  void list(const std::string& key, std::vector<T>& items) {
    json& a = j_[key] = json::array();
    for (auto& item : items) {
      json e;
      Writer o(e);
      schema(o, item);
      a.push_back(std::move(e));
    }
  }

 private:
  json& j_;
};

// ---- what the schema cannot say: required fields, files that must exist,
// and rules across fields. In the order the spec reads.

class Checker {
 public:
  explicit Checker(const SpecContext& ctx) : ctx_(ctx) {}
  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw SpecError(ctx_.file + ": " + field + ": " + why);
  }

  void check(Spec& s) {
    // A system gives the kernel, and it must be in the store: those first.
    bool system = !s.system.path.empty() || !ctx_.system_override.empty();
    if (system) check_store(s.store);
    check_system(s);
    check_firmware(s);
    check_arch(s);
    if (s.kernel.empty() && !s.boot_loader) fail("kernel", "is required (scripts/setup fetches a default guest kernel)");
    if (!s.kernel.empty() && !exists(s.kernel)) fail("kernel", "\"" + s.kernel + "\" does not exist");
    if (!s.initrd.empty() && !exists(s.initrd)) fail("initrd", "\"" + s.initrd + "\" does not exist");
    if (!s.modules.empty() && !is_dir(s.modules)) fail("modules", "\"" + s.modules + "\" is not a directory");
    if (!system) check_store(s.store);
    if (s.resolution.x != 0 && !s.graphics) fail("resolution", "is the display's: needs \"graphics\": true");
    if (!s.store.closure.empty() && !s.nix_db.empty())
      fail("store.closure", "the shared Nix database (nixDb) holds every path of the host's store as valid, those the closure hides too; leave nixDb out");
    check_registration(s);
    for (size_t i = 0; i < s.shares.size(); i++) check_share(s.shares[i], i);
    add_xchg_and_shared(s);
    for (size_t i = 0; i < s.forward_ports.size(); i++) {
      std::string at = "forwardPorts[" + std::to_string(i) + "]";
      const ForwardPort& f = s.forward_ports[i];
      if (f.host.port == 0) fail(at + ".host.port", "is required");
      if (f.guest.port == 0) fail(at + ".guest.port", "is required");
      if (!f.from_host && f.proto != "tcp") fail(at + ".proto", "QEMU forwards only tcp from the guest to the host");
      if (f.proto != "tcp" && f.proto != "udp") fail(at + ".proto", "\"" + f.proto + "\" is neither tcp nor udp");
      for (auto [end, name] : {std::pair{&f.host, ".host.address"}, std::pair{&f.guest, ".guest.address"}})
        if (!end->address.empty() && !host_name(end->address))
          fail(at + name, "\"" + end->address + "\" is not a host name or an IPv4 address");
    }
    if (!s.forward_ports.empty() && s.network != Network::kUser) fail("forwardPorts", "needs \"network\": \"user\"");
    if (!s.vlans.empty() && s.vlan_host == 0) fail("vlanHost", "is required with vlans (1 to 254: this guest is 192.168.VLAN.vlanHost)");
    for (size_t i = 0; i < s.vlans.size(); i++)
      for (size_t j = 0; j < i; j++)
        if (s.vlans[i] == s.vlans[j]) fail("vlans[" + std::to_string(i) + "]", std::to_string(s.vlans[i]) + " is listed twice");
    for (size_t i = 0; i < s.disks.size(); i++) check_disk(s.disks[i], "disks[" + std::to_string(i) + "]");
    if (!ctx_.root_disk_override.empty()) s.root.file = ctx_.root_disk_override;
    if (!s.root.file.empty()) {
      std::string at = ctx_.root_disk_override.empty() ? "root" : "root (NIX_DISK_IMAGE)";
      if (s.system.path.empty() && !s.boot_loader) fail(at, "a root disk holds a system's root (\"system\"): without one, the command's tools are the initramfs's, which are not on the disk");
      if (!s.root.mount_point.empty()) fail("root.mountPoint", "is / (the system's root)");
      if (s.root.fs_type.empty()) fail("root.fsType", "is required");
      if (s.root.read_only) fail("root.readOnly", "a system's root must be writable");
      check_disk(s.root, at);
    }
    if (s.store.writable == Writable::kDisk) {
      if (!s.store.disk.mount_point.empty()) fail("store.disk.mountPoint", "is the store's own (" + rw_store(s.store) + ")");
      check_disk(s.store.disk, "store.disk");
    } else if (!s.store.disk.file.empty()) {
      fail("store.disk", "needs \"writable\": \"disk\"");
    }
  }

  // Where the store's overlay keeps its upper and work directories.
  static std::string rw_store(const StoreSpec& store) {
    std::string parent = std::filesystem::path(store.mount_point).parent_path().string();
    return (parent == "/" ? "" : parent) + "/.rw-store";
  }

 private:
  void check_store(StoreSpec& store) {
    if (store.mount_point.empty() || store.mount_point[0] != '/') fail("store.mountPoint", "must be an absolute path");
    if (store.mount_point.find_first_of(",:\\") != std::string::npos)
      fail("store.mountPoint", "\"" + store.mount_point + "\" may not hold ',', ':' or '\\' (an overlay mount's options name it)");
    if (!ctx_.store_override.empty()) store.path = ctx_.store_override;
    if (store.path.empty()) fail("store", "no store: give store.path or --store");
    if (!is_dir(store.path))
      fail(ctx_.store_override.empty() ? "store.path" : "store (--store)", "\"" + store.path + "\" is not a directory");
    claim_mount_point(store.mount_point, "store.mountPoint");
    if (!store.closure.empty()) {
      if (store.image == StoreImage::kErofs)
        fail("store.closure", "an erofs image holds the whole store (mkfs.erofs takes no list of what to leave out): use "
                              "\"image\": \"squashfs\", or no image");
      if (store.proto == Proto::k9pQemu)
        fail("store.closure", "needs fsd's share of the store (\"proto\": \"virtiofs\" or \"9p\"); QEMU's own 9p shows the whole directory");
      try {
        store.closure = std::filesystem::absolute(store.closure).string();  // fsd's own working directory may differ
        store.closure_list = std::make_shared<const fsd::Closure>(fsd::Closure::load(store.closure));
        closure_ = store.closure_list.get();
      } catch (const std::runtime_error& e) {
        fail("store.closure", e.what());
      }
    }
  }

  // store.registration: the guest system's Nix loads it into a database
  // of the guest's own, so every path it registers must be in the store
  // the guest sees.
  void check_registration(Spec& s) {
    StoreSpec& store = s.store;
    if (!ctx_.registration_override.empty()) store.registration = ctx_.registration_override;
    if (store.registration.empty()) return;
    std::string at = ctx_.registration_override.empty() ? "store.registration" : "store.registration (--registration)";
    if (s.system.path.empty()) fail(at, "the guest system's Nix loads it: needs a \"system\" with sw/bin/nix-store");
    if (s.system.guix) fail(at, "is Nix's; a Guix system keeps its store's database itself");
    if (!s.system.has_nix_store) fail(at, "the system " + s.system.path + " has no sw/bin/nix-store to load it with");
    if (!s.nix_db.empty()) fail(at, "gives the guest a database of its own; leave nixDb out");
    if (store.writable == Writable::kNone)
      fail(at, "Nix writes to the store it opens: needs a writable store (\"writable\": \"tmpfs\" or \"disk\")");
    std::string file = std::filesystem::absolute(store.registration).string();
    if (is_dir(file)) {
      file += "/registration";  // a closureInfo
      if (!exists(file)) fail(at, "\"" + store.registration + "\" is a directory without a registration file (a closureInfo's)");
    } else if (!exists(file)) {
      fail(at, "\"" + store.registration + "\" does not exist");
    }
    std::ifstream in(file, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) fail(at, "cannot read " + file);
    store.registration = file;
    store.registration_is_list = !is_registration(text);
    std::vector<std::string> names;
    try {
      if (store.registration_is_list) {
        fsd::Closure list;
        list.add_list(text, file);
        names = store.registration_names = list.names();
      } else {
        store.registration_given = parse_registration(text, store.mount_point, file);
        for (const auto& p : store.registration_given) names.push_back(std::filesystem::path(p.path).filename().string());
      }
    } catch (const std::exception& e) {
      fail(at, e.what());
    }
    if (names.empty()) fail(at, file + " names no store paths");
    for (const auto& name : names) {
      if (!is_store_name(name)) fail(at, file + ": \"" + name + "\" is not a store path's name (HASH-NAME, as Nix makes them)");
      if (!exists(std::filesystem::path(store.path) / name)) fail(at, file + ": " + name + " is not in the store (" + store.path + ")");
      if (closure_ && !closure_->shows(name)) fail(at, file + ": " + name + " is hidden by store.closure, so the guest could not reach it");
    }
  }

  // The system must be in the store; its kernel and modules are the defaults.
  void check_system(Spec& s) {
    SystemSpec& sys = s.system;
    if (!ctx_.system_override.empty()) sys.path = ctx_.system_override;
    if (ctx_.system_mode_override) sys.mode = *ctx_.system_mode_override;
    if (sys.path.empty()) {
      if (sys.mode != SystemMode::kAuto) fail("systemMode", "needs a system");
      return;
    }
    std::string at = ctx_.system_override.empty() ? "system" : "system (--system)";
    if (!is_dir(sys.path)) fail(at, "\"" + sys.path + "\" is not a directory");
    std::error_code ec;
    auto top = std::filesystem::canonical(sys.path, ec), store = std::filesystem::canonical(s.store.path, ec);
    auto rel = top.lexically_relative(store);
    if (rel.empty() || *rel.begin() == ".." || rel == ".")
      fail(at, "\"" + sys.path + "\" is not inside the store (" + store.string() + "), where the guest would find it");
    sys.in_guest = (std::filesystem::path(s.store.mount_point) / rel).string();
    if (closure_ && !closure_->shows(rel.begin()->string()))
      fail("store.closure", "does not list the system's store path (" + rel.begin()->string() + "), so the guest could not reach it");
    if (sys.in_guest.find_first_of(",:\\") != std::string::npos)
      fail(at, "\"" + sys.path + "\" may not hold ',', ':' or '\\' (an overlay mount's options name it)");
    auto has = [&](const char* p) { return exists(top / p); };
    sys.has_bash = has("sw/bin/bash");
    sys.has_sh = has("sw/bin/sh");
    sys.has_env = has("sw/bin/env");
    sys.has_etc = is_dir(top / "etc");
    sys.has_init = has("init");
    sys.has_nix_store = has("sw/bin/nix-store");
    if (has("parameters")) read_guix_parameters(s, top, at);
    if (s.kernel.empty()) {
      if (!has("kernel")) fail(at, "\"" + sys.path + "\" has no kernel (give \"kernel\")");
      s.kernel = top / "kernel";
    }
    std::filesystem::path mods = top / "kernel-modules/lib/modules";
    sys.has_modules = is_dir(mods);
    if (s.modules.empty() && sys.has_modules)
      for (auto& e : std::filesystem::directory_iterator(mods, ec))
        if (e.is_directory()) s.modules = e.path().string();
    if (sys.mode == SystemMode::kBoot && !sys.has_init)
      fail("systemMode", std::string("boot needs the system's ") + (sys.guix ? "boot script" : "init") + ", and \"" + sys.path +
                             "\" has none");
    if (!sys.guix && has("kernel-params")) sys.kernel_params = read_kernel_params(top / "kernel-params", at);
  }

  // The firmware and what it boots.
  // aarch64: QEMU's virt machine, which has no VGA and no IDE; its UEFI
  // firmware is not wired up yet.
  void check_arch(Spec& s) {
    std::string arch(name_of(s.arch));
    if (s.qemu_binary.empty()) s.qemu_binary = "qemu-system-" + arch;
    std::string bin = std::filesystem::path(s.qemu_binary).filename().string();
    if (bin.starts_with("qemu-system-") && bin != "qemu-system-" + arch)
      fail("qemu.binary", "\"" + s.qemu_binary + "\" runs " + bin.substr(12) + " guests, and \"arch\" is " + arch +
                              " (give \"arch\": \"" + bin.substr(12) + "\", or leave qemu.binary out)");
    if (s.arch != Arch::kAarch64) return;
    if (s.firmware == Firmware::kUefi) fail("firmware", "uefi is x86_64's here; an aarch64 guest boots its kernel directly");
    if (s.boot_loader) fail("bootLoader", "needs UEFI firmware, which is x86_64's here");
    if (s.graphics) fail("graphics", "the aarch64 virt machine has no VGA; aarch64 guests have the serial console only");
    if (s.disk_interface == DiskInterface::kIde) fail("diskInterface", "the aarch64 virt machine has no IDE: use virtio or scsi");
  }

  void check_firmware(Spec& s) {
    if (!ctx_.efi_vars_override.empty()) s.efi_vars = ctx_.efi_vars_override;
    std::string vars_at = ctx_.efi_vars_override.empty() ? "efiVars" : "efiVars (NIX_EFI_VARS)";
    if (s.firmware == Firmware::kUefi) {
      if (s.efi_vars.empty()) s.efi_vars = s.name + "-efi-vars.fd";
      s.efi_vars = std::filesystem::absolute(s.efi_vars).string();
      if (!is_dir(std::filesystem::path(s.efi_vars).parent_path().string()))
        fail(vars_at, "\"" + s.efi_vars + "\": its directory does not exist");
    } else if (!s.efi_vars.empty() && ctx_.efi_vars_override.empty()) {
      fail("efiVars", "is UEFI's: needs \"firmware\": \"uefi\"");
    }
    if (!s.boot_loader) return;
    if (s.has_command()) fail("bootLoader", "the disk's bootloader boots what it holds; a command needs vmlaunch's own kernel boot");
    if (!s.system.path.empty()) fail("bootLoader", "the disk's bootloader boots what it holds; leave \"system\" out");
    if (!s.kernel.empty()) fail("bootLoader", "the disk's bootloader loads its own kernel; leave \"kernel\" out");
    if (s.root.file.empty() && s.disks.empty()) fail("bootLoader", "needs a disk to boot from (\"root\" or \"disks\")");
  }

  // A Guix system: its boot parameters (an s-expression) name the kernel,
  // its arguments, the root device and where the store is mounted; its
  // `boot` script is what runs as PID 1.
  void read_guix_parameters(Spec& s, const std::filesystem::path& top, const std::string& at) {
    SystemSpec& sys = s.system;
    std::string file = (top / "parameters").string();
    std::ifstream in(file, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) fail(at, "cannot read " + file);
    if (text.size() > (1 << 20)) fail(at, file + " is larger than a system's boot parameters are");
    Sexp p;
    try {
      p = read_sexp(text);
    } catch (const std::invalid_argument& e) {
      fail(at, file + ": " + e.what());
    }
    if (!p.is_list() || p.items.empty() || p.items[0].text != "boot-parameters")
      fail(at, file + " holds no (boot-parameters ...): it is not a Guix system's");
    sys.guix = true;
    sys.has_init = exists(top / "boot");
    std::string store_at = "/gnu/store";
    if (const Sexp* store = p.field("store"))
      if (std::string m = store->string_of("mount-point"); !m.empty()) store_at = m;
    if (s.store.mount_point != store_at)
      fail("store.mountPoint", "the Guix system " + sys.path + " finds its store at " + store_at +
                                   " (its parameters say so): give \"mountPoint\": \"" + store_at + "\"");
    // Its kernel, named in the guest's store: the same file in the host's.
    std::string kernel = p.string_of("kernel");
    if (kernel.empty()) fail(at, file + " names no kernel");
    if (!kernel.starts_with(store_at + "/")) fail(at, "its kernel " + kernel + " is not in the store (" + store_at + ")");
    std::filesystem::path host_kernel = std::filesystem::path(s.store.path) / kernel.substr(store_at.size() + 1);
    if (s.kernel.empty()) {
      if (!exists(host_kernel.string())) fail(at, "its kernel " + host_kernel.string() + " does not exist");
      s.kernel = host_kernel.string();
    }
    // Its modules are the kernel package's.
    std::error_code ec;
    if (s.modules.empty())
      for (auto& e : std::filesystem::directory_iterator(host_kernel.parent_path() / "lib/modules", ec))
        if (e.is_directory()) s.modules = e.path().string(), sys.has_modules = true;
    if (const Sexp* args = p.field("kernel-arguments"); args && args->items.size() > 1 && args->items[1].is_list())
      for (const auto& a : args->items[1].items) {
        if (!a.is_string()) fail(at, file + ": kernel-arguments holds something other than strings");
        if (a.text.find_first_of(" \t\n") != std::string::npos)
          fail(at, file + ": the kernel argument \"" + a.text + "\" holds white space");
        sys.kernel_params += (sys.kernel_params.empty() ? "" : " ") + a.text;
      }
    if (sys.kernel_params.size() > 2048) fail(at, file + ": its kernel-arguments are too long for a kernel command line");
    sys.guix_root = p.string_of("root-device");
    if (sys.guix_root.find_first_of(" \t\n") != std::string::npos) sys.guix_root.clear();
  }

  // A system's kernel-params: words separated by any white space, made one
  // line; at most what a kernel command line holds.
  std::string read_kernel_params(const std::filesystem::path& file, const std::string& at) const {
    constexpr size_t kMax = 2048;  // x86's COMMAND_LINE_SIZE
    std::ifstream in(file, std::ios::binary);
    std::string raw(16 * kMax, '\0');  // more than that cannot fold to kMax
    in.read(raw.data(), static_cast<std::streamsize>(raw.size()));
    if (in.bad() || (in.fail() && !in.eof())) fail(at, "cannot read " + file.string());
    raw.resize(static_cast<size_t>(in.gcount()));
    if (in.peek() != std::ifstream::traits_type::eof()) fail(at, file.string() + " is too large for kernel parameters");
    std::string out;
    for (char c : raw) {
      if (c == '\0') fail(at, file.string() + " holds a NUL byte");
      bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r';
      if (!space) out += c;
      else if (!out.empty() && out.back() != ' ') out += ' ';
    }
    if (!out.empty() && out.back() == ' ') out.pop_back();
    if (out.size() > kMax) fail(at, file.string() + " is " + std::to_string(out.size()) + " bytes of kernel parameters; a kernel command line holds " + std::to_string(kMax));
    return out;
  }

  void check_disk(const DiskSpec& d, const std::string& at) {
    if (d.file.empty()) fail(at + ".file", "is required");
    if (d.size_mib == 0 && !exists(d.file)) fail(at + ".file", "\"" + d.file + "\" does not exist (give a size to create it)");
    if (!d.fs_type.empty() && d.fs_type.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") != std::string::npos)
      fail(at + ".fsType", "\"" + d.fs_type + "\" is not a file system type");
    if (!d.mount_point.empty() && d.fs_type.empty()) fail(at + ".mountPoint", "needs an fsType");
    if (!d.mount_point.empty() && d.mount_point[0] != '/') fail(at + ".mountPoint", "must be an absolute path in the guest");
    if (!d.mount_point.empty()) claim_mount_point(d.mount_point, at + ".mountPoint");
    if (d.auto_format && d.fs_type.empty()) fail(at + ".autoFormat", "needs an fsType");
    if (d.auto_format && mkfs_command(d.fs_type, "", "").empty())
      fail(at + ".autoFormat", "vmlaunch cannot format " + d.fs_type + " (it formats " + formattable_file_systems() + ")");
    if (!d.mount_point.empty() && !d.auto_format && !exists(d.file))
      fail(at + ".file", "\"" + d.file + "\" does not exist, and a new disk is blank: set autoFormat to format it");
    if (d.auto_format && d.read_only) fail(at + ".autoFormat", "a read-only disk cannot be formatted");
  }

  void check_share(const ShareSpec& share, size_t i) {
    std::string at = "shares[" + std::to_string(i) + "]";
    if (share.tag.empty()) fail(at + ".tag", "is required");
    size_t max = share.proto == Proto::kVirtiofs ? kMaxVirtiofsTag : kMaxNinePTag;
    if (share.tag.size() > max)
      fail(at + ".tag", "\"" + share.tag + "\" is " + std::to_string(share.tag.size()) + " bytes; " +
                            (share.proto == Proto::kVirtiofs ? "virtio-fs" : "9p") + " allows at most " + std::to_string(max));
    if (!plain_word(share.tag))
      fail(at + ".tag", "\"" + share.tag + "\" may hold only letters, digits, '.', '_', '+' and '-' (it names a socket "
                        "file, a device option and the guest's mount source)");
    if (auto [it, fresh] = tags_.emplace(share.tag, at); !fresh) fail(at + ".tag", "\"" + share.tag + "\" is used by " + it->second + " too");
    if (share.source.empty()) fail(at + ".source", "is required");
    if (!is_dir(share.source)) fail(at + ".source", "\"" + share.source + "\" is not an existing directory");
    if (share.target.empty() || share.target[0] != '/') fail(at + ".target", "must be an absolute path in the guest");
    if (share.writeback && share.proto != Proto::kVirtiofs)
      fail(at + ".writeback", "is for virtio-fs shares (FUSE's writeback cache); 9p clients have their own cache= modes");
    if (share.writeback && share.read_only) fail(at + ".writeback", "a read-only share takes no writes");
    claim_mount_point(share.target, at + ".target");
  }

  // xchg and shared, unless the spec defines them itself.
  void add_xchg_and_shared(Spec& s) {
    std::string xchg = ctx_.xchg_dir.empty() ? "(a fresh temporary directory)" : ctx_.xchg_dir;
    if (!tags_.count("xchg")) {
      claim_mount_point("/tmp/xchg", "xchg");
      s.shares.push_back({"xchg", xchg, "/tmp/xchg", false, Proto::kVirtiofs, Cache::kNever});
    }
    if (!tags_.count("shared")) {
      claim_mount_point("/tmp/shared", "shared");
      s.shares.push_back({"shared", ctx_.shared_dir.empty() ? xchg : ctx_.shared_dir, "/tmp/shared", false,
                          Proto::kVirtiofs, Cache::kNever});
    }
  }

  const SpecContext& ctx_;
  const fsd::Closure* closure_ = nullptr;  // store.closure, read (the spec's closure_list)
  // One mount per guest path: a second would hide the first.
  void claim_mount_point(const std::string& path, const std::string& at) {
    std::string p = std::filesystem::path(path).lexically_normal().string();
    if (p.size() > 1 && p.back() == '/') p.pop_back();
    if (auto [it, fresh] = mount_points_.emplace(p, at); !fresh)
      fail(at, "\"" + path + "\" is where " + it->second + " is mounted too");
  }
  std::map<std::string, std::string> mount_points_;
  // Tags in use, and by what; vmlaunch's own come first.
  std::map<std::string, std::string> tags_{
      {"store", "the store"}, {"nix-store", "the store (in boot mode)"}, {"nix-db", "the Nix database (nixDb)"}};
};

}  // namespace

Spec parse_spec(const json& j, const SpecContext& ctx) {
  Spec s;
  Reader top(j, "", ctx);
  schema(top, s);
  top.finish();
  Checker(ctx).check(s);
  return s;
}

Spec load_spec(const std::string& path, const SpecContext& ctx) {
  std::ifstream in(path);
  if (!in) throw SpecError(path + ": cannot be read");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::parse_error& e) {
    throw SpecError(path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  SpecContext c = ctx;
  c.file = path;
  return parse_spec(j, c);
}

nlohmann::json to_json(const Spec& s) {
  json j;
  Writer w(j);
  schema(w, const_cast<Spec&>(s));  // the Writer only reads
  return j;
}

}  // namespace fsd::launcher
