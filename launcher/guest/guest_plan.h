// GuestPlan: what fsd-guest-init does in the guest, written by vmlaunch's
// plan as /init.json in the initramfs and read back by the init: the one
// definition of that file, on both sides.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fsd::launcher {

// A mount, or (with `mkdir` set) only a directory to make between mounts.
struct GuestMount {
  std::string mkdir;
  std::string fstype, source, target, options;
  std::vector<std::string> flags;  // "ro", "nosuid", "nodev", "noexec", "relatime"
  // 9P over vsock: the init first connects to this port of the host (from
  // a reserved port of its own) and mounts with trans=fd on that socket.
  unsigned vsock_port = 0;
};

struct GuestPlan {
  std::vector<std::string> modules;             // .ko files to load, in order
  std::vector<std::string> optional_modules;    // those of them that may fail to load (soft dependencies)
  std::map<std::string, std::string> files;     // path -> content, written first
  std::vector<std::vector<std::string>> setup;  // commands that must succeed before the mounts
  std::vector<GuestMount> mounts;               // in order
  std::map<std::string, std::string> links;     // path -> target: symlinks made after the mounts, replacing what is there
  std::map<std::string, std::string> late_files;  // path -> content, written after the mounts unless the path exists
  // The root the mounts move into (a mount of the plan), and in boot mode
  // the system's init, run there as PID 1 in place of the command. With no
  // init (exec mode on a root disk), the init goes on in the new root: its
  // links and files, then the command.
  std::string switch_root, init;
  std::vector<std::string> command;             // empty: the interactive shell
  std::string shell = "/bin/sh";
  std::map<std::string, std::string> env;
  std::string workdir = "/";
  std::string status_file;  // where the exit status goes, a file or a serial port ("": only the console)
  // A registration in the initramfs, which `nix_store --load-db` loads once
  // the mounts are in place, before the system's init or the command ("": none).
  std::string registration, nix_store;
  bool narrate = false;  // each step told on the console (console "stage1")
};

// JSON, with every field optional on reading (a missing one keeps its
// default; a mount's source defaults to its fstype).
inline void to_json(nlohmann::json& j, const GuestMount& m) {
  if (!m.mkdir.empty()) {
    j = {{"mkdir", m.mkdir}};
    return;
  }
  j = {{"fstype", m.fstype}, {"source", m.source}, {"target", m.target}, {"flags", m.flags}};
  if (!m.options.empty()) j["options"] = m.options;
  if (m.vsock_port) j["vsock_port"] = m.vsock_port;
}

inline void from_json(const nlohmann::json& j, GuestMount& m) {
  m.mkdir = j.value("mkdir", "");
  if (!m.mkdir.empty()) return;
  m.fstype = j.at("fstype").get<std::string>();
  m.target = j.at("target").get<std::string>();
  m.source = j.value("source", m.fstype);
  m.options = j.value("options", "");
  m.flags = j.value("flags", std::vector<std::string>{});
  m.vsock_port = j.value("vsock_port", 0u);
}

inline void to_json(nlohmann::json& j, const GuestPlan& p) {
  j = {{"modules", p.modules}, {"optional_modules", p.optional_modules}, {"files", p.files}, {"setup", p.setup}, {"mounts", p.mounts},
       {"shell", p.shell}, {"env", p.env}, {"workdir", p.workdir}, {"links", p.links}, {"late_files", p.late_files}};
  if (!p.switch_root.empty()) j["switch_root"] = p.switch_root;
  if (!p.init.empty()) j["init"] = p.init;
  if (!p.command.empty()) j["command"] = p.command;
  if (!p.status_file.empty()) j["status_file"] = p.status_file;
  if (!p.registration.empty()) j["registration"] = p.registration, j["nix_store"] = p.nix_store;
  if (p.narrate) j["narrate"] = true;
}

inline void from_json(const nlohmann::json& j, GuestPlan& p) {
  GuestPlan d;
  p.modules = j.value("modules", d.modules);
  p.optional_modules = j.value("optional_modules", d.optional_modules);
  p.files = j.value("files", d.files);
  p.setup = j.value("setup", d.setup);
  p.mounts = j.value("mounts", d.mounts);
  p.command = j.value("command", d.command);
  p.shell = j.value("shell", d.shell);
  p.env = j.value("env", d.env);
  p.workdir = j.value("workdir", d.workdir);
  p.status_file = j.value("status_file", d.status_file);
  p.links = j.value("links", d.links);
  p.late_files = j.value("late_files", d.late_files);
  p.switch_root = j.value("switch_root", d.switch_root);
  p.init = j.value("init", d.init);
  p.registration = j.value("registration", d.registration);
  p.nix_store = j.value("nix_store", d.nix_store);
  p.narrate = j.value("narrate", d.narrate);
}

}  // namespace fsd::launcher
