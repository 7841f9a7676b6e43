#include "fsd/vfs/export.h"

#include <algorithm>
#include <stdexcept>

namespace fsd {

ExportConfig parse_export(std::string_view spec) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("--export '" + std::string(spec) + "': " + why);
  };
  auto eq = spec.find('=');
  if (eq == std::string_view::npos) fail("expected TAG=PATH[,ro][,cache=never|auto|always][,devices]");
  ExportConfig c;
  c.tag = std::string(spec.substr(0, eq));
  if (c.tag.empty()) fail("empty tag");
  if (c.tag.size() > 255) fail("tag longer than 255 bytes");
  for (char ch : c.tag)
    if (ch == '/' || ch == ',' || static_cast<unsigned char>(ch) < 0x20) fail("tag may not contain '/', ',' or control characters");

  // Fields end at a single comma; ",," is a comma of the field (as in
  // QEMU's options), so that any path or file name can be given.
  std::string_view rest = spec.substr(eq + 1);
  bool more = true;
  auto next_field = [&rest, &more] {
    std::string field;
    size_t i = 0;
    for (; i < rest.size(); i++) {
      if (rest[i] == ',' && (i + 1 == rest.size() || rest[i + 1] != ',')) break;
      field += rest[i];
      if (rest[i] == ',') i++;  // the second of ",,"
    }
    more = i < rest.size();
    rest = more ? rest.substr(i + 1) : std::string_view{};
    return field;
  };
  c.path = next_field();
  if (c.path.empty()) fail("empty path");
  bool cache_given = false;
  while (more) {
    const std::string field = next_field();
    std::string_view opt = field;
    if (opt == "ro") {
      c.read_only = true;
    } else if (opt == "rw") {
      c.read_only = false;
    } else if (opt == "devices") {
      c.devices = true;
    } else if (opt == "direct-io") {
      c.direct_io = true;
    } else if (opt == "no-readdirplus") {
      c.readdirplus = false;
    } else if (opt == "allow-mmap") {
      c.allow_mmap = true;
    } else if (opt == "posix-acl") {
      c.posix_acl = true;
    } else if (opt == "submounts") {
      c.submounts = true;
    } else if (opt == "writeback") {
      c.writeback = true;
    } else if (opt == "security-label") {
      c.security_label = true;
    } else if (opt.starts_with("cache=")) {
      auto v = opt.substr(6);
      auto policy = value_of<CachePolicy>(v == "none" ? "never" : v);  // virtiofsd says none
      if (!policy) fail("unknown cache policy '" + std::string(v) + "' (" + name_list<CachePolicy>() + ")");
      c.cache = *policy;
      cache_given = true;
    } else if (opt.starts_with("translate-uid=") || opt.starts_with("translate-gid=")) {
      try {
        (opt[10] == 'u' ? c.uids : c.gids).add(opt.substr(14));
      } catch (const std::invalid_argument& e) {
        fail(std::string(opt.substr(0, 13)) + " " + e.what());
      }
    } else if (opt.starts_with("closure=")) {
      c.closure = std::string(opt.substr(8));
      if (c.closure.empty()) fail("closure= names no file");
    } else if (opt.starts_with("xattrmap=")) {
      try {
        c.xattrs = XattrMap::parse(opt.substr(9));
      } catch (const std::invalid_argument& e) {
        fail(std::string("xattrmap ") + e.what());
      }
    } else {
      fail("unknown option '" + std::string(opt) + "' (ro, rw, cache=…, devices, direct-io, no-readdirplus, allow-mmap, posix-acl, submounts, writeback, security-label, translate-uid=…, translate-gid=…, xattrmap=…, closure=…)");
    }
  }
  if (!c.closure.empty() && !c.read_only)
    fail("closure= is for read-only exports (add ro): a client could create or rename names the closure hides");
  if (!cache_given && c.read_only) c.cache = CachePolicy::kAlways;
  return c;
}

}  // namespace fsd
