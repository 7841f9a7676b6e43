// virtiofsd's command line, for drop-in use: its flags and -o options,
// each honoured, taken with a warning where that changes nothing fsd
// promises, or refused naming the flag (the README's table).
#pragma once

#include <CLI/CLI.hpp>

#include "fsd/options.h"

namespace fsd::cli {

// Adds virtiofsd's flags to `app`, filling `o`.
void add_virtiofsd_options(CLI::App& app, Options& o);

// Turns virtiofsd's form (--socket-path/--fd, --shared-dir, -o ...) into
// one export and one virtio-fs socket in `o`. Throws std::invalid_argument
// naming a flag or option fsd refuses.
void apply_compat(Options& o);

}  // namespace fsd::cli
