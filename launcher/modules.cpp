#include "launcher/modules.h"

#include <libkmod.h>

#include <functional>
#include <set>
#include <stdexcept>

namespace fsd::launcher {

std::vector<std::string> resolve_modules(const std::string& module_dir, const std::vector<std::string>& names) {
  kmod_ctx* ctx = kmod_new(module_dir.c_str(), nullptr);
  if (!ctx) throw std::runtime_error("cannot read kernel modules in " + module_dir);
  std::vector<std::string> out;
  std::set<std::string> seen;
  // Depth first, dependencies before the module itself.
  std::function<void(kmod_module*)> visit = [&](kmod_module* m) {
    std::string name = kmod_module_get_name(m);
    if (!seen.insert(name).second) return;
    kmod_list* deps = kmod_module_get_dependencies(m);
    kmod_list* it;
    kmod_list_foreach(it, deps) {
      kmod_module* d = kmod_module_get_module(it);
      visit(d);
      kmod_module_unref(d);
    }
    kmod_module_unref_list(deps);
    if (const char* path = kmod_module_get_path(m)) out.emplace_back(path);  // null: built in
  };
  for (const auto& n : names) {
    kmod_list* list = nullptr;
    if (kmod_module_new_from_lookup(ctx, n.c_str(), &list) < 0 || list == nullptr) {
      kmod_unref(ctx);
      throw std::runtime_error("kernel module '" + n + "' not found in " + module_dir);
    }
    kmod_list* it;
    kmod_list_foreach(it, list) {
      kmod_module* m = kmod_module_get_module(it);
      visit(m);
      kmod_module_unref(m);
    }
    kmod_module_unref_list(list);
  }
  kmod_unref(ctx);
  return out;
}

}  // namespace fsd::launcher
