// An initramfs for a test guest: busybox as /bin/sh, the project's guest
// init as /init, kernel modules with their dependencies, the init's plan
// (/init.json, with the modules filled in), any other files, and host
// programs (static ones) copied in.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "launcher/initramfs.h"
#include "launcher/modules.h"
#include "tests/support/test_support.h"

namespace fsd::testing {

// What a test guest needs from the host, from scripts/setup: the guest
// kernel, QEMU and busybox. Empty when all is there, else what is missing.
inline std::string guest_tools_missing() {
  if (guest_kernel_dir().empty()) return "no guest kernel: run scripts/setup";
  if (::access("/usr/bin/qemu-system-x86_64", X_OK) != 0) return "qemu-system-x86 is missing: run scripts/setup";
  if (::access("/bin/busybox", X_OK) != 0) return "busybox-static is missing: run scripts/setup";
  return "";
}

// The guest kernel's module directory (lib/modules/VERSION).
inline std::string guest_module_dir(const std::string& kernel_dir) {
  std::string dir;
  for (auto& e : std::filesystem::directory_iterator(kernel_dir + "/lib/modules")) dir = e.path().string();
  return dir;
}

// QEMU for a test guest: TCG, 2 CPUs, 512 MiB of shared memory (for
// vhost-user back-ends), the guest kernel and `initrd`, the console on
// stdio; devices are appended by the caller.
inline std::vector<std::string> guest_qemu_argv(const std::string& kernel_dir, const std::string& initrd) {
  return {"qemu-system-x86_64", "-accel", "tcg", "-smp", "2", "-m", "512",
          "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
          "-kernel", kernel_dir + "/vmlinuz", "-initrd", initrd,
          "-append", "console=ttyS0 panic=-1 quiet loglevel=4",
          "-nographic", "-nodefaults", "-no-reboot", "-serial", "stdio"};
}

inline void write_guest_initramfs(const std::string& out, const std::string& guest_init, const std::string& module_dir,
                                  const std::vector<std::string>& modules, nlohmann::json plan,
                                  const std::map<std::string, std::string>& files = {},
                                  const std::map<std::string, std::string>& programs = {}) {
  launcher::Initramfs ar(out);
  for (const char* d : {"bin", "dev", "proc", "sys", "run", "tmp", "mnt", "lib", "lib/modules", "etc"}) ar.add_dir(d);
  ar.add_char_device("dev/console", 5, 1);
  ar.add_host_file("bin/busybox", "/bin/busybox", 0755);
  ar.add_symlink("bin/sh", "busybox");
  ar.add_host_file("init", guest_init, 0755);
  plan["modules"] = nlohmann::json::array();
  for (auto& m : launcher::resolve_modules(module_dir, modules)) {
    std::string name = "/lib/modules/" + std::filesystem::path(m.path).filename().string();
    ar.add_host_file(name.substr(1), m.path, 0644);
    plan["modules"].push_back(name);
  }
  ar.add_file("init.json", plan.dump(), 0644);
  for (const auto& [path, content] : files) ar.add_file(path, content, path.ends_with(".sh") ? 0755 : 0644);
  for (const auto& [path, host] : programs) ar.add_host_file(path, host, 0755);
  ar.close();
}

}  // namespace fsd::testing
