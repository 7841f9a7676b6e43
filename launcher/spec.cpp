#include "launcher/spec.h"

#include <sys/stat.h>

#include <fstream>
#include <set>

namespace fsd::launcher {
namespace {

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

// A JSON object being read field by field; reports unknown fields at done().
class Obj {
 public:
  Obj(const json& j, std::string path, const SpecContext& ctx) : j_(j), path_(std::move(path)), ctx_(ctx) {
    if (!j_.is_object()) fail("", "expected an object, got " + type_of(j_));
  }
  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw SpecError(ctx_.file + ": " + field(key) + ": " + why);
  }
  std::string field(const std::string& key) const {
    if (key.empty()) return path_.empty() ? "(top level)" : path_;
    return path_.empty() ? key : path_ + "." + key;
  }
  const json* find(const std::string& key) {
    known_.insert(key);
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<std::string> str(const std::string& key) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail(key, "expected a string, got " + type_of(*v));
    return v->get<std::string>();
  }
  std::optional<bool> boolean(const std::string& key) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail(key, "expected true or false, got " + type_of(*v));
    return v->get<bool>();
  }
  std::optional<uint64_t> number(const std::string& key, uint64_t min, uint64_t max) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number_unsigned() && !(v->is_number_integer() && v->get<int64_t>() >= 0))
      fail(key, "expected a whole number, got " + type_of(*v));
    uint64_t n = v->get<uint64_t>();
    if (n < min || n > max) fail(key, std::to_string(n) + " is out of range (" + std::to_string(min) + " to " + std::to_string(max) + ")");
    return n;
  }
  template <class E>
  std::optional<E> choice(const std::string& key, const std::vector<std::pair<std::string, E>>& options) {
    auto s = str(key);
    if (!s) return std::nullopt;
    std::string names;
    for (const auto& [name, value] : options) {
      if (*s == name) return value;
      names += (names.empty() ? "" : ", ") + name;
    }
    fail(key, "\"" + *s + "\" is not one of: " + names);
  }
  std::vector<std::string> strings(const std::string& key) {
    std::vector<std::string> out;
    const json* v = find(key);
    if (!v) return out;
    if (!v->is_array()) fail(key, "expected a list of strings, got " + type_of(*v));
    for (size_t i = 0; i < v->size(); i++) {
      if (!(*v)[i].is_string()) fail(key + "[" + std::to_string(i) + "]", "expected a string, got " + type_of((*v)[i]));
      out.push_back((*v)[i].get<std::string>());
    }
    return out;
  }
  void done() const {
    for (const auto& [k, v] : j_.items()) {
      if (known_.count(k)) continue;
      std::string expected;
      for (const auto& n : known_) expected += (expected.empty() ? "" : ", ") + n;
      fail(k, "unknown field (known here: " + expected + ")");
    }
  }

 private:
  const json& j_;
  std::string path_;
  const SpecContext& ctx_;
  std::set<std::string> known_;
};

const std::vector<std::pair<std::string, Cache>> kCaches{{"never", Cache::kNever}, {"auto", Cache::kAuto}, {"always", Cache::kAlways}};

Endpoint endpoint(Obj& parent, const std::string& key, const SpecContext& ctx) {
  const json* v = parent.find(key);
  if (!v) parent.fail(key, "is required");
  Obj o(*v, parent.field(key), ctx);
  Endpoint e;
  e.address = o.str("address").value_or("");
  e.port = static_cast<uint16_t>(o.number("port", 1, 65535).value_or(0));
  if (e.port == 0) o.fail("port", "is required");
  o.done();
  return e;
}

}  // namespace

Spec parse_spec(const json& j, const SpecContext& ctx) {
  Spec s;
  Obj top(j, "", ctx);
  s.name = top.str("name").value_or(s.name);
  s.memory_mib = top.number("memory", 128, 1 << 20).value_or(s.memory_mib);
  s.cpus = static_cast<unsigned>(top.number("cpus", 1, 256).value_or(s.cpus));
  s.accel = top.choice<Accel>("accel", {{"auto", Accel::kAuto}, {"kvm", Accel::kKvm}, {"tcg", Accel::kTcg}}).value_or(s.accel);
  s.kernel = top.str("kernel").value_or("");
  s.initrd = top.str("initrd").value_or("");
  s.modules = top.str("modules").value_or("");
  s.cmdline = top.str("cmdline").value_or("");
  if (s.kernel.empty()) top.fail("kernel", "is required (scripts/setup fetches a default guest kernel)");
  if (!exists(s.kernel)) top.fail("kernel", "\"" + s.kernel + "\" does not exist");
  if (!s.initrd.empty() && !exists(s.initrd)) top.fail("initrd", "\"" + s.initrd + "\" does not exist");
  if (!s.modules.empty() && !is_dir(s.modules)) top.fail("modules", "\"" + s.modules + "\" is not a directory");

  if (const json* st = top.find("store")) {
    Obj o(*st, "store", ctx);
    s.store.path = o.str("path").value_or("");
    s.store.mount_point = o.str("mountPoint").value_or(s.store.mount_point);
    s.store.writable_tmpfs = o.choice<bool>("writable", {{"tmpfs", true}, {"none", false}}).value_or(true);
    s.store.cache = o.choice<Cache>("cache", kCaches).value_or(s.store.cache);
    if (s.store.mount_point.empty() || s.store.mount_point[0] != '/') o.fail("mountPoint", "must be an absolute path");
    o.done();
  }
  if (!ctx.store_override.empty()) s.store.path = ctx.store_override;
  if (s.store.path.empty()) top.fail("store", "no store: give store.path or --store");
  if (!is_dir(s.store.path)) top.fail(ctx.store_override.empty() ? "store.path" : "store (--store)", "\"" + s.store.path + "\" is not a directory");

  std::map<std::string, size_t> tags{{"store", SIZE_MAX}, {"nix-db", SIZE_MAX - 1}};  // vmlaunch's own tags
  if (const json* sh = top.find("shares")) {
    if (!sh->is_array()) top.fail("shares", "expected a list, got " + type_of(*sh));
    for (size_t i = 0; i < sh->size(); i++) {
      std::string at = "shares[" + std::to_string(i) + "]";
      Obj o((*sh)[i], at, ctx);
      ShareSpec share;
      share.tag = o.str("tag").value_or("");
      share.source = o.str("source").value_or("");
      share.target = o.str("target").value_or("");
      share.read_only = o.boolean("readOnly").value_or(false);
      share.proto = o.choice<Proto>("proto", {{"virtiofs", Proto::kVirtiofs}, {"9p", Proto::k9p}, {"9p-qemu", Proto::k9pQemu}})
                        .value_or(Proto::kVirtiofs);
      share.cache = o.choice<Cache>("cache", kCaches).value_or(share.read_only ? Cache::kAlways : Cache::kAuto);
      share.msize = static_cast<uint32_t>(o.number("msize", 4096, 16 << 20).value_or(share.msize));
      o.done();
      if (share.tag.empty()) o.fail("tag", "is required");
      size_t max = share.proto == Proto::kVirtiofs ? kMaxVirtiofsTag : kMaxNinePTag;
      if (share.tag.size() > max)
        o.fail("tag", "\"" + share.tag + "\" is " + std::to_string(share.tag.size()) + " bytes; " +
                          (share.proto == Proto::kVirtiofs ? "virtio-fs" : "9p") + " allows at most " + std::to_string(max));
      if (auto [it, fresh] = tags.emplace(share.tag, i); !fresh)
        o.fail("tag", "\"" + share.tag + "\" is used by " + (it->second == SIZE_MAX ? std::string("the store") : it->second == SIZE_MAX - 1 ? std::string("the Nix database (nixDb)") : "shares[" + std::to_string(it->second) + "]") + " too");
      if (share.source.empty()) o.fail("source", "is required");
      if (!is_dir(share.source)) o.fail("source", "\"" + share.source + "\" is not an existing directory");
      if (share.target.empty() || share.target[0] != '/') o.fail("target", "must be an absolute path in the guest");
      s.shares.push_back(share);
    }
  }
  // xchg and shared, unless the spec defines them itself.
  std::string xchg = ctx.xchg_dir.empty() ? "(a fresh temporary directory)" : ctx.xchg_dir;
  if (!tags.count("xchg")) s.shares.push_back({"xchg", xchg, "/tmp/xchg", false, Proto::kVirtiofs, Cache::kNever});
  if (!tags.count("shared"))
    s.shares.push_back({"shared", ctx.shared_dir.empty() ? xchg : ctx.shared_dir, "/tmp/shared", false, Proto::kVirtiofs, Cache::kNever});

  if (const json* c = top.find("command")) {
    if (c->is_string()) {
      s.command_shell = c->get<std::string>();
    } else if (c->is_array()) {
      s.command_argv = top.strings("command");
      if (s.command_argv.empty()) top.fail("command", "an empty list runs nothing; leave it out for a shell");
    } else {
      top.fail("command", "expected a string or a list of strings, got " + type_of(*c));
    }
  }
  if (const json* e = top.find("env")) {
    if (!e->is_object()) top.fail("env", "expected an object of strings, got " + type_of(*e));
    for (const auto& [k, v] : e->items()) {
      if (!v.is_string()) top.fail("env." + k, "expected a string, got " + type_of(v));
      if (k.empty() || k.find('=') != std::string::npos) top.fail("env." + k, "is not a valid variable name");
      s.env[k] = v.get<std::string>();
    }
  }
  s.timeout_s = static_cast<unsigned>(top.number("timeout", 0, 7 * 24 * 3600).value_or(0));
  s.console = top.choice<Console>("console", {{"serial", Console::kSerial}, {"quiet", Console::kQuiet}}).value_or(s.console);
  s.network = top.choice<Network>("network", {{"none", Network::kNone}, {"user", Network::kUser}}).value_or(s.network);
  if (const json* fp = top.find("forwardPorts")) {
    if (!fp->is_array()) top.fail("forwardPorts", "expected a list, got " + type_of(*fp));
    for (size_t i = 0; i < fp->size(); i++) {
      Obj o((*fp)[i], "forwardPorts[" + std::to_string(i) + "]", ctx);
      ForwardPort f;
      f.from_host = o.choice<bool>("from", {{"host", true}, {"guest", false}}).value_or(true);
      f.proto = o.choice<std::string>("proto", {{"tcp", "tcp"}, {"udp", "udp"}}).value_or("tcp");
      f.host = endpoint(o, "host", ctx);
      f.guest = endpoint(o, "guest", ctx);
      o.done();
      if (!f.from_host && f.proto != "tcp") o.fail("proto", "QEMU forwards only tcp from the guest to the host");
      s.forward_ports.push_back(f);
    }
    if (!s.forward_ports.empty() && s.network != Network::kUser) top.fail("forwardPorts", "needs \"network\": \"user\"");
  }
  if (const json* q = top.find("qemu")) {
    Obj o(*q, "qemu", ctx);
    s.qemu_binary = o.str("binary").value_or(s.qemu_binary);
    s.qemu_extra_args = o.strings("extraArgs");
    o.done();
  }
  if (const json* d = top.find("disks")) {
    if (!d->is_array()) top.fail("disks", "expected a list, got " + type_of(*d));
    for (size_t i = 0; i < d->size(); i++) {
      Obj o((*d)[i], "disks[" + std::to_string(i) + "]", ctx);
      DiskSpec disk;
      disk.file = o.str("file").value_or("");
      disk.size_mib = o.number("size", 1, 1ull << 24).value_or(0);
      disk.read_only = o.boolean("readOnly").value_or(false);
      disk.snapshot = o.boolean("snapshot").value_or(false);
      o.done();
      if (disk.file.empty()) o.fail("file", "is required");
      if (disk.size_mib == 0 && !exists(disk.file)) o.fail("file", "\"" + disk.file + "\" does not exist (give a size to create it)");
      s.disks.push_back(disk);
    }
  }
  if (const json* e = top.find("emptyDisks")) {
    if (!e->is_array()) top.fail("emptyDisks", "expected a list of sizes in MiB, got " + type_of(*e));
    for (size_t i = 0; i < e->size(); i++) {
      const json& v = (*e)[i];
      if (!v.is_number_integer() || v.get<int64_t>() <= 0)
        top.fail("emptyDisks[" + std::to_string(i) + "]", "expected a size in MiB, got " + type_of(v));
      s.empty_disks_mib.push_back(v.get<uint64_t>());
    }
  }
  s.graphics = top.boolean("graphics").value_or(false);
  // nixDb: true shares /nix/var/nix/db when the host has one; a string names the database directory.
  if (const json* v = top.find("nixDb")) {
    if (v->is_boolean()) {
      if (v->get<bool>() && is_dir(kNixDb)) s.nix_db = kNixDb;
    } else if (v->is_string()) {
      s.nix_db = v->get<std::string>();
      if (!is_dir(s.nix_db)) top.fail("nixDb", "\"" + s.nix_db + "\" is not a directory");
    } else {
      top.fail("nixDb", "expected true, false or a directory, got " + type_of(*v));
    }
  }
  top.done();
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
  auto cache = [](Cache c) { return c == Cache::kNever ? "never" : c == Cache::kAuto ? "auto" : "always"; };
  json j;
  j["name"] = s.name;
  j["memory"] = s.memory_mib;
  j["cpus"] = s.cpus;
  j["accel"] = s.accel == Accel::kAuto ? "auto" : s.accel == Accel::kKvm ? "kvm" : "tcg";
  j["kernel"] = s.kernel;
  if (!s.initrd.empty()) j["initrd"] = s.initrd;
  if (!s.modules.empty()) j["modules"] = s.modules;
  j["cmdline"] = s.cmdline;
  j["store"] = {{"path", s.store.path}, {"mountPoint", s.store.mount_point},
                {"writable", s.store.writable_tmpfs ? "tmpfs" : "none"}, {"cache", cache(s.store.cache)}};
  j["shares"] = json::array();
  for (const auto& sh : s.shares) {
    json o{{"tag", sh.tag}, {"source", sh.source}, {"target", sh.target}, {"readOnly", sh.read_only},
           {"proto", sh.proto == Proto::kVirtiofs ? "virtiofs" : sh.proto == Proto::k9p ? "9p" : "9p-qemu"},
           {"cache", cache(sh.cache)}};
    if (sh.proto != Proto::kVirtiofs) o["msize"] = sh.msize;
    j["shares"].push_back(o);
  }
  if (s.command_shell) j["command"] = *s.command_shell;
  else if (!s.command_argv.empty()) j["command"] = s.command_argv;
  j["env"] = s.env;
  j["timeout"] = s.timeout_s;
  j["console"] = s.console == Console::kSerial ? "serial" : "quiet";
  j["network"] = s.network == Network::kUser ? "user" : "none";
  j["forwardPorts"] = json::array();
  for (const auto& f : s.forward_ports)
    j["forwardPorts"].push_back({{"from", f.from_host ? "host" : "guest"}, {"proto", f.proto},
                                 {"host", {{"address", f.host.address}, {"port", f.host.port}}},
                                 {"guest", {{"address", f.guest.address}, {"port", f.guest.port}}}});
  j["qemu"] = {{"binary", s.qemu_binary}, {"extraArgs", s.qemu_extra_args}};
  j["disks"] = json::array();
  for (const auto& d : s.disks)
    j["disks"].push_back({{"file", d.file}, {"size", d.size_mib}, {"readOnly", d.read_only}, {"snapshot", d.snapshot}});
  j["emptyDisks"] = s.empty_disks_mib;
  j["graphics"] = s.graphics;
  if (s.nix_db.empty()) j["nixDb"] = false;
  else j["nixDb"] = s.nix_db;
  return j;
}

}  // namespace fsd::launcher
