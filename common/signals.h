// Blocking signals so that one thread takes them synchronously (sigwait or
// a signalfd) and no other thread is interrupted by them.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <initializer_list>

namespace fsd {

// Blocks `signals` in the calling thread (and the threads it starts later);
// returns the set, for sigwait() or signalfd().
inline sigset_t block_signals(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : signals) sigaddset(&set, s);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

}  // namespace fsd
