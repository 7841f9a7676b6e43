// What the host harnesses share: error checks, timing, and the CSV row.
//
// Row: layer,server,workload,msize,conns,median,min,max,unit,reps
// (for virtio-fs, "msize" holds the request size and "conns" the requests
// kept in flight).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fsd/core/result.h"

namespace fsd::bench {

using Clock = std::chrono::steady_clock;

[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error(what); }

template <class T>
T check(Result<T> r, const char* what) {
  if (!r) fail(std::string(what) + ": " + std::strerror(-r.error()));
  if constexpr (!std::is_void_v<T>) return std::move(*r);
}
inline void check(Result<void> r, const char* what) {
  if (!r) fail(std::string(what) + ": " + std::strerror(-r.error()));
}

struct Stats {
  double median = 0, min = 0, max = 0;
};
inline Stats summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

inline void print_header() { std::printf("layer,server,workload,msize,conns,median,min,max,unit,reps\n"); }

inline void row(const std::string& layer, const std::string& server, const std::string& workload, uint32_t msize,
                unsigned conns, const Stats& s, const char* unit, unsigned reps) {
  std::printf("%s,%s,%s,%u,%u,%.1f,%.1f,%.1f,%s,%u\n", layer.c_str(), server.c_str(), workload.c_str(), msize, conns,
              s.median, s.min, s.max, unit, reps);
  std::fflush(stdout);
}

// Runs body(i) in batches until `secs` have passed; returns how many ran.
template <class F>
uint64_t repeat_for(double secs, int batch, F body) {
  uint64_t done = 0;
  auto until = Clock::now() + std::chrono::duration<double>(secs);
  while (Clock::now() < until)
    for (int b = 0; b < batch; b++, done++) body(done);
  return done;
}

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace fsd::bench
