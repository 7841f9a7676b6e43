#include "launcher/modules.h"

#include <libkmod.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <stdexcept>

#include "launcher/process.h"

namespace fs = std::filesystem;

namespace fsd::launcher {
namespace {

// Owns a kmod_list of modules.
struct ModuleList {
  kmod_list* list = nullptr;
  ~ModuleList() { kmod_module_unref_list(list); }
};

// The version string a bzImage carries (the setup header's kernel_version
// field, an offset from 0x200 at 0x20e), or "".
std::string kernel_version(const std::string& kernel) {
  std::ifstream in(kernel, std::ios::binary);
  char magic[4] = {};  // "HdrS" marks a setup header
  if (!in.seekg(0x202).read(magic, 4) || std::string(magic, 4) != "HdrS") return "";
  unsigned char off[2] = {};
  in.seekg(0x20e).read(reinterpret_cast<char*>(off), 2);
  size_t at = 0x200 + (off[0] | (off[1] << 8));
  char text[128] = {};
  if (!in.seekg(static_cast<std::streamoff>(at)).read(text, sizeof text - 1)) return "";
  std::string v(text);
  return v.substr(0, v.find(' '));
}

}  // namespace

std::vector<ModuleFile> resolve_modules(const std::string& module_dir, const std::vector<std::string>& names) {
  kmod_ctx* ctx = kmod_new(module_dir.c_str(), nullptr);
  if (!ctx) throw std::runtime_error("cannot read kernel modules in " + module_dir);
  std::unique_ptr<kmod_ctx, decltype(&kmod_unref)> own(ctx, kmod_unref);
  std::vector<ModuleFile> out;
  std::set<std::string> seen;
  std::function<void(kmod_module*, bool)> visit;
  auto visit_list = [&](kmod_list* list, bool optional) {
    kmod_list* it;
    kmod_list_foreach(it, list) {
      kmod_module* m = kmod_module_get_module(it);
      visit(m, optional);
      kmod_module_unref(m);
    }
  };
  // Depth first: soft "pre" dependencies, then hard ones, then the module,
  // then its soft "post" dependencies.
  visit = [&](kmod_module* m, bool optional) {
    std::string name = kmod_module_get_name(m);
    if (!seen.insert(name).second) return;
    ModuleList pre, post, deps;
    kmod_module_get_softdeps(m, &pre.list, &post.list);
    visit_list(pre.list, true);
    deps.list = kmod_module_get_dependencies(m);
    visit_list(deps.list, optional);
    if (const char* path = kmod_module_get_path(m)) out.push_back({path, optional});  // null: built in
    visit_list(post.list, true);
  };
  for (const auto& n : names) {
    ModuleList found;
    if (kmod_module_new_from_lookup(ctx, n.c_str(), &found.list) < 0 || found.list == nullptr)
      throw std::runtime_error("kernel module '" + n + "' not found in " + module_dir);
    visit_list(found.list, false);
  }
  return out;
}

std::string find_module_dir(const std::string& kernel) {
  std::error_code ec;
  fs::path k = fs::absolute(kernel, ec);
  std::string version = kernel_version(kernel);
  if (version.empty() && k.filename().string().starts_with("vmlinuz-")) version = k.filename().string().substr(8);
  std::vector<fs::path> bases{k.parent_path() / "lib/modules", k.parent_path().parent_path() / "lib/modules"};
  if (k.parent_path() == "/boot") bases.emplace_back("/lib/modules");
  for (const auto& base : bases) {
    if (!version.empty() && fs::is_directory(base / version, ec)) return (base / version).string();
    std::vector<fs::path> found;
    for (auto& e : fs::directory_iterator(base, ec))
      if (e.is_directory()) found.push_back(e.path());
    if (found.size() == 1 && (version.empty() || base != "/lib/modules")) return found[0].string();
  }
  return "";
}

std::string indexed_module_dir(const std::string& module_dir, const std::string& cache) {
  std::error_code ec;
  if (fs::exists(fs::path(module_dir) / "modules.dep", ec)) return module_dir;
  fs::path dir = fs::canonical(module_dir, ec);
  if (ec) throw std::runtime_error("kernel modules: " + module_dir + ": " + ec.message());
  std::string version = dir.filename().string();
  // Keyed by the directory and when it last changed.
  auto stamp = fs::last_write_time(dir, ec).time_since_epoch().count();
  char key[40];
  std::snprintf(key, sizeof key, "%016zx", std::hash<std::string>{}(dir.string() + ";" + std::to_string(stamp)));
  fs::path base = fs::path(cache) / "modules" / key;
  fs::path indexed = base / "lib/modules" / version;
  if (fs::exists(indexed / "modules.dep", ec)) return indexed.string();

  // The links, then depmod, in a temporary base renamed into place.
  fs::path tmp = base.string() + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp / "lib/modules" / version);
  for (auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    bool index = name.starts_with("modules.") && name != "modules.order" && !name.starts_with("modules.builtin");
    if (!index) fs::create_symlink(e.path(), tmp / "lib/modules" / version / name);
  }
  std::string log = tmp.string() + "/depmod.log";
  int status = run_logged({system_tool("depmod"), "-b", tmp.string(), version}, log);
  if (status != 0 || !fs::exists(tmp / "lib/modules" / version / "modules.dep")) {
    std::string why = status == 127 ? "depmod is not installed (Debian's kmod package)" : read_tail(log, 1024);
    fs::remove_all(tmp, ec);
    throw std::runtime_error(module_dir + " has no modules.dep, and depmod could not make one: " + why +
                             "; run depmod on it, or give the spec's \"modules\" a directory that has one");
  }
  fs::remove(log, ec);
  fs::create_directories(base.parent_path());
  fs::rename(tmp, base, ec);
  if (ec) fs::remove_all(tmp, ec);  // another run made it first
  return indexed.string();
}

}  // namespace fsd::launcher
