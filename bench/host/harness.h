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

#include <unistd.h>

#include "common/result.h"

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

// The CPU time a server has spent per unit of work (request, entry, MiB),
// rep by rep: less disturbed by a busy machine than the rates are, so a
// before/after comparison of two builds can show smaller differences.
// Read from /proc/PID/stat (user + system, every thread the process ever
// had, in clock ticks): give reps long enough for many ticks. Without a
// pid it measures nothing and prints nothing.
class CpuMeter {
 public:
  explicit CpuMeter(int pid) : pid_(pid) {}
  void start() { at_ = seconds(); }
  void stop(double units) {
    if (pid_ > 0 && units > 0) per_unit_.push_back((seconds() - at_) * 1e6 / units);
  }
  // A row for `workload` + ":cpu", in microseconds per `per`; then clears.
  void emit(const std::string& layer, const std::string& server, const std::string& workload, uint32_t msize,
            unsigned conns, const std::string& per, unsigned reps) {
    if (per_unit_.empty()) return;
    std::string unit = "us/" + per;
    std::printf("%s,%s,%s:cpu,%u,%u,%.2f,%.2f,%.2f,%s,%u\n", layer.c_str(), server.c_str(), workload.c_str(), msize,
                conns, summarize(per_unit_).median, summarize(per_unit_).min, summarize(per_unit_).max, unit.c_str(), reps);
    std::fflush(stdout);
    per_unit_.clear();
  }

 private:
  double seconds() const {
    if (pid_ <= 0) return 0;
    std::FILE* f = std::fopen(("/proc/" + std::to_string(pid_) + "/stat").c_str(), "r");
    if (f == nullptr) fail("server pid " + std::to_string(pid_) + ": gone");
    char buf[1024];
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = 0;
    // Fields after the command's closing parenthesis: state is field 3,
    // utime 14 and stime 15.
    const char* p = std::strrchr(buf, ')');
    unsigned long long utime = 0, stime = 0;
    if (p == nullptr || std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
      fail("server pid " + std::to_string(pid_) + ": unreadable stat");
    return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

  int pid_;
  double at_ = 0;
  std::vector<double> per_unit_;
};

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace fsd::bench
