// fsd: serves host directories to virtual machines and other clients.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <thread>

#include "fsd/p9/session.h"
#include "fsd/transport/fuse_dev.h"
#include "fsd/transport/socket_server.h"
#include "fsd/vfs/vfs.h"

#ifndef FSD_VERSION
#define FSD_VERSION "0.0.0"
#endif

namespace {

struct Options {
  std::vector<std::string> exports;
  std::vector<std::string> listens;
  std::vector<std::string> fuse_mounts;
  uint32_t msize_max = 1 << 20;
  unsigned threads = std::min(4u, std::max(1u, std::thread::hardware_concurrency()));
  unsigned fd_budget = 768;
  std::string metadata_io = "uring";
  std::string log_level = "info";
};

// Fits the fd budget under RLIMIT_NOFILE (raising the soft limit to the hard
// one first), keeping room for sockets, rings and the like.
unsigned fit_fd_budget(unsigned wanted) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return wanted;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  constexpr rlim_t kReserve = 128;
  if (rl.rlim_cur != RLIM_INFINITY && wanted + kReserve > rl.rlim_cur) {
    unsigned fitted = rl.rlim_cur > kReserve + 32 ? static_cast<unsigned>(rl.rlim_cur - kReserve) : 32;
    spdlog::warn("--fd-budget {} does not fit RLIMIT_NOFILE {}; using {}", wanted, rl.rlim_cur, fitted);
    return fitted;
  }
  return wanted;
}

int run(const Options& o) {
  auto level = spdlog::level::from_str(o.log_level);
  spdlog::set_level(level);

  std::vector<fsd::ExportConfig> configs;
  for (const auto& e : o.exports) configs.push_back(fsd::parse_export(e));
  for (size_t i = 0; i < configs.size(); i++)
    for (size_t j = 0; j < i; j++)
      if (configs[i].tag == configs[j].tag)
        throw std::invalid_argument("--export: tag '" + configs[i].tag + "' is given twice");
  std::vector<fsd::ListenAddress> listens;
  for (const auto& l : o.listens) listens.push_back(fsd::parse_listen(l));
  if (listens.empty() && o.fuse_mounts.empty())
    throw std::invalid_argument("nothing to serve on: give --listen or --fuse-mount");
  std::vector<std::pair<std::string, std::string>> mounts;  // tag, mount point
  for (const auto& m : o.fuse_mounts) {
    auto eq = m.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == m.size())
      throw std::invalid_argument("--fuse-mount '" + m + "': expected TAG=MOUNTPOINT");
    std::string tag = m.substr(0, eq);
    if (std::none_of(configs.begin(), configs.end(), [&](const auto& c) { return c.tag == tag; }))
      throw std::invalid_argument("--fuse-mount '" + m + "': no export has tag '" + tag + "'");
    mounts.emplace_back(tag, m.substr(eq + 1));
  }

  // One budget for all exports: a quarter for cached O_PATH fds, the rest
  // for files clients hold open.
  unsigned budget = fit_fd_budget(o.fd_budget);
  unsigned per_export = std::max<unsigned>(budget / static_cast<unsigned>(configs.size()), 16);
  fsd::VfsOptions vopts;
  vopts.path_fd_cache = std::max(per_export / 4, 8u);
  vopts.open_files = per_export - vopts.path_fd_cache;

  fsd::p9::ExportSet exports;
  for (auto& c : configs) {
    auto vfs = std::make_unique<fsd::Vfs>(c, vopts);
    spdlog::info("export '{}': {} ({}, cache={}, {})", c.tag, c.path, c.read_only ? "ro" : "rw",
                 fsd::to_string(c.cache), vfs->uses_handles() ? "file handles" : "re-resolution by name");
    exports.add(std::move(vfs));
  }

  // Signals are taken synchronously by this thread; workers never see them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  fsd::p9::SessionConfig sc;
  sc.max_msize = o.msize_max;
  fsd::SocketServer server(exports, sc, o.threads, o.metadata_io == "uring");
  for (const auto& l : listens) server.listen(l);
  std::vector<std::unique_ptr<fsd::FuseMount>> fuse;
  for (const auto& [tag, where] : mounts) {
    fuse.push_back(std::make_unique<fsd::FuseMount>(*exports.find(tag), where, o.threads));
    fuse.back()->start();
    spdlog::info("mounted '{}' on {} (FUSE)", tag, where);
  }
  server.start();
  for (const auto& a : server.bound()) spdlog::info("listening on {} (9P2000.L, msize up to {})", a.to_string(), o.msize_max);

  int sig = 0;
  sigwait(&sigs, &sig);
  spdlog::info("{}: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
  for (auto& f : fuse) f->stop();
  server.stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("fsd");
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e fsd %^%l%$: %v");
  spdlog::set_default_logger(logger);

  Options o;
  CLI::App app{"fsd: a file server for virtual machines (9P2000.L over unix and TCP sockets, FUSE on the host)"};
  app.set_version_flag("--version", std::string("fsd ") + FSD_VERSION);
  app.add_option("--export", o.exports,
                 "Export a host directory: TAG=PATH[,ro][,cache=never|auto|always] (repeatable). "
                 "Clients attach with aname TAG (or PATH).")
      ->required()
      ->type_name("SPEC");
  app.add_option("--listen", o.listens,
                 "Serve 9P2000.L on unix:PATH, tcp:PORT (127.0.0.1), or tcp:HOST:PORT (repeatable)")
      ->type_name("ADDR");
  app.add_option("--fuse-mount", o.fuse_mounts,
                 "Mount export TAG on the host at MOUNTPOINT through /dev/fuse (repeatable)")
      ->type_name("TAG=MOUNTPOINT");
  app.add_option("--msize-max", o.msize_max, "Largest msize to agree to, in bytes")
      ->check(CLI::Range(4096u, 16u << 20))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "Worker threads (one io_uring each)")
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  app.add_option("--fd-budget", o.fd_budget,
                 "Most file descriptors fsd keeps for exported files, however many clients walk")
      ->check(CLI::Range(64u, 1u << 20))
      ->capture_default_str();
  app.add_option("--metadata-io", o.metadata_io, "Run metadata syscalls through io_uring or directly")
      ->check(CLI::IsMember({"uring", "sync"}))
      ->capture_default_str();
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "fsd: %s (see fsd --help)\n", e.what());
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fsd: %s\n", e.what());
    return 1;
  }
}
