#include "fsd/vfs/export.h"

#include <stdexcept>

namespace fsd {

std::string_view to_string(CachePolicy c) {
  switch (c) {
    case CachePolicy::kNever: return "never";
    case CachePolicy::kAuto: return "auto";
    case CachePolicy::kAlways: return "always";
  }
  return "?";
}

ExportConfig parse_export(std::string_view spec) {
  auto fail = [&](const std::string& why) {
    throw std::invalid_argument("--export '" + std::string(spec) + "': " + why);
  };
  auto eq = spec.find('=');
  if (eq == std::string_view::npos) fail("expected TAG=PATH[,ro][,cache=never|auto|always]");
  ExportConfig c;
  c.tag = std::string(spec.substr(0, eq));
  if (c.tag.empty()) fail("empty tag");
  if (c.tag.size() > 255) fail("tag longer than 255 bytes");
  for (char ch : c.tag)
    if (ch == '/' || ch == ',' || static_cast<unsigned char>(ch) < 0x20) fail("tag may not contain '/', ',' or control characters");

  std::string_view rest = spec.substr(eq + 1);
  auto comma = rest.find(',');
  c.path = std::string(rest.substr(0, comma));
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
    } else if (opt.starts_with("cache=")) {
      auto v = opt.substr(6);
      if (v == "never" || v == "none") c.cache = CachePolicy::kNever;
      else if (v == "auto") c.cache = CachePolicy::kAuto;
      else if (v == "always") c.cache = CachePolicy::kAlways;
      else fail("unknown cache policy '" + std::string(v) + "' (never, auto, always)");
      cache_given = true;
    } else {
      fail("unknown option '" + std::string(opt) + "' (ro, rw, cache=…)");
    }
  }
  if (!cache_given && c.read_only) c.cache = CachePolicy::kAlways;
  return c;
}

}  // namespace fsd
