// Export: one host directory served to clients under a tag.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "fsd/core/cache_policy.h"

namespace fsd {

struct ExportConfig {
  std::string tag;   // 9p aname / virtio-fs tag
  std::string path;  // host directory (absolute after parse)
  bool read_only = false;
  CachePolicy cache = CachePolicy::kAuto;
  // Callers may create device nodes (still only callers the host kernel
  // lets: CAP_MKNOD, i.e. root ones). Off: mknod of a device is EPERM.
  bool devices = false;
};

// Parses "TAG=PATH[,ro][,rw][,cache=never|auto|always][,devices]". Read-only exports
// default to cache=always. Throws std::invalid_argument with a one-line
// message naming the problem. Does not touch the filesystem.
ExportConfig parse_export(std::string_view spec);

}  // namespace fsd
