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

  // The path ends at the first single comma; ",," is a comma of the path
  // (as in QEMU's options), so that any path can be given.
  std::string_view rest = spec.substr(eq + 1);
  size_t comma = 0;
  for (;; comma += 2) {
    comma = rest.find(',', comma);
    if (comma == std::string_view::npos || comma + 1 >= rest.size() || rest[comma + 1] != ',') break;
  }
  for (size_t i = 0; i < std::min(comma, rest.size()); i++) {
    c.path += rest[i];
    if (rest[i] == ',') i++;  // the second of ",,"
  }
  if (c.path.empty()) fail("empty path");
  bool cache_given = false;
  while (comma != std::string_view::npos) {
    rest = rest.substr(comma + 1);
    comma = rest.find(',');
    std::string_view opt = rest.substr(0, comma);
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
    } else if (opt.starts_with("xattrmap=")) {
      try {
        c.xattrs = XattrMap::parse(opt.substr(9));
      } catch (const std::invalid_argument& e) {
        fail(std::string("xattrmap ") + e.what());
      }
    } else {
      fail("unknown option '" + std::string(opt) + "' (ro, rw, cache=…, devices, direct-io, no-readdirplus, allow-mmap, posix-acl, submounts, writeback, translate-uid=…, translate-gid=…, xattrmap=…)");
    }
  }
  if (!cache_given && c.read_only) c.cache = CachePolicy::kAlways;
  return c;
}

}  // namespace fsd
