// fsd: serves host directories to virtual machines and other clients.
// The command line becomes Options (cli.cpp, virtiofsd_compat.cpp), then a
// checked Plan (plan.h), which the daemon runs (daemon.h).
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <stdexcept>

#include "fsd/daemon.h"
#include "fsd/options.h"
#include "fsd/virtiofsd_compat.h"

int main(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("fsd");
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e fsd %^%l%$: %v");
  spdlog::set_default_logger(logger);

  fsd::cli::Options o;
  CLI::App app{"fsd: a file server for virtual machines.\n"
               "Serves host directories as 9P2000.L (unix/TCP sockets), virtio-fs (vhost-user, for QEMU's\n"
               "vhost-user-fs-pci) and FUSE mounts on the host, all from one backend."};
  fsd::cli::add_options(app, o);
  fsd::cli::add_virtiofsd_options(app, o);

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
  if (o.print_capabilities) {
    // What libvirt reads from a vhost-user back-end (QEMU's
    // docs/interop/vhost-user.json): its type, and what its command line
    // offers. separate-options: virtiofsd's --shared-dir, --cache,
    // --sandbox, ... may be given as flags rather than -o. Not
    // migrate-precopy: fsd cannot migrate a device's state.
    std::printf("{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}\n");
    return 0;
  }
  try {
    return fsd::run(o);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "fsd: %s (see fsd --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fsd: %s\n", e.what());
    return 1;
  }
}
