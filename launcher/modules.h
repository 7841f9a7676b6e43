// Kernel modules a guest needs, resolved with their dependencies (libkmod,
// from the kernel's modules.dep).
#pragma once

#include <string>
#include <vector>

namespace fsd::launcher {

// Returns the .ko files for `names` and everything they depend on, each
// dependency before its users, without duplicates. Modules built into the
// kernel are skipped. `module_dir` is lib/modules/VERSION. Throws
// std::runtime_error naming a module that does not exist.
std::vector<std::string> resolve_modules(const std::string& module_dir, const std::vector<std::string>& names);

}  // namespace fsd::launcher
