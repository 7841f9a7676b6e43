// fsd's daemon: what runs once the command line is parsed.
#pragma once

#include "fsd/options.h"

namespace fsd {

// Turns virtiofsd's form into fsd's, plans, opens, sandboxes and serves
// until SIGINT or SIGTERM (or, with on_disconnect=exit, until every
// virtio-fs front-end has gone). Returns the exit status; throws
// std::invalid_argument for a refused command line, other exceptions for
// what failed at start-up.
int run(cli::Options& o);

}  // namespace fsd
