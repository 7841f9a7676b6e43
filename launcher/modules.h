// Kernel modules a guest needs: where a kernel's modules are, and which
// .ko files to load, in order, with their dependencies (libkmod, from the
// kernel's modules.dep and modules.softdep).
#pragma once

#include <string>
#include <vector>

namespace fsd::launcher {

// One module file to load. A soft dependency (modules.softdep, e.g. ext4's
// crc32c) is optional: one that fails to load (a CPU feature the guest
// lacks) is only reported.
struct ModuleFile {
  std::string path;
  bool optional = false;
  bool operator==(const ModuleFile&) const = default;
};

// Returns the .ko files for `names` and everything they depend on, each
// dependency before its users, without duplicates; the "pre" soft
// dependencies come before a module and its "post" ones after it. Modules
// built into the kernel are skipped. `module_dir` is lib/modules/VERSION.
// Throws std::runtime_error naming a module that does not exist.
std::vector<ModuleFile> resolve_modules(const std::string& module_dir, const std::vector<std::string>& names);

// The directory of modules that belongs to `kernel`, or "": VERSION under
// lib/modules beside it (scripts/setup's layout, a NixOS kernel package's
// bzImage), or in its package (../lib/modules), or /lib/modules/VERSION
// for a /boot/vmlinuz-VERSION. With several versions, the one the kernel
// file names, else the only one.
std::string find_module_dir(const std::string& kernel);

// `module_dir` itself when it has a modules.dep; otherwise an indexed view
// of it under `cache` (links to its files, and depmod's index beside
// them), made once and reused. Throws std::runtime_error saying what to do
// when depmod cannot be run.
std::string indexed_module_dir(const std::string& module_dir, const std::string& cache);

}  // namespace fsd::launcher
