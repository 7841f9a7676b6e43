// The 9p host harness: drives a 9P2000.L server on a unix socket with the
// project's client (fsd::p9::Client), no VM in between, and prints one CSV
// row per measurement. bench/run starts the servers (fsd, diod) on the same
// trees and calls this once per server; `limit` measures what the host
// itself can do in the same run.
//
//   fsd_p9_bench serve --label fsd --socket S --ro-aname A --rw-aname B [--quick]
//   fsd_p9_bench vsock --label fsd-vsock --socket S --ro-aname A [--quick]
//   fsd_p9_bench limit --file F [--quick]
//
// `vsock` drives fsd's virtio-vsock device (fsd --vsock-socket S) as QEMU
// and a guest would, with the project's vhost-user front-end and guest
// driver in this process: 9P on one connection from a reserved port, the
// guest's 4 KiB receive buffers and 256 KiB window as Linux gives them.
//
// The read-only export must hold `big` (a large file) and `dir10k/` (10,000
// entries f0..f9999); the read-write export must be writable.
//
// Row: layer,server,workload,msize,conns,median,min,max,unit,reps
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench/host/harness.h"
#include "fsd/client/p9_client.h"
#include "fsd/client/vhost_frontend.h"
#include "fsd/client/vsock_guest.h"
#include "protocol/p9/codec.h"

namespace {

using namespace fsd;
using namespace fsd::bench;

struct Target {
  std::string label, socket, ro, rw;
};

// One connection: versioned, attached to the export as fid 0.
struct Conn {
  p9::Client c;
  uint32_t root = 0;
  Conn(const Target& t, uint32_t msize, const std::string& aname) : c(check(p9::Client::connect_unix(t.socket), "connect")) {
    check(c.version(msize), "version");
    root = c.new_fid();
    check(c.attach(root, aname), "attach");
  }
  uint32_t open(const std::string& path, uint32_t flags) {
    uint32_t fid = c.new_fid();
    check(c.walk(root, fid, path), "walk");
    check(c.lopen(fid, flags), "lopen");
    return fid;
  }
};

// Runs `work(connection index)` on `conns` threads at once, each with its
// own connection made before the clock starts; returns the wall seconds and
// the sum of what the workers return (bytes or operations).
double run_parallel(unsigned conns, const std::function<std::unique_ptr<Conn>(unsigned)>& connect,
                    const std::function<double(Conn&, unsigned)>& work, double* total) {
  std::vector<std::unique_ptr<Conn>> cs;
  for (unsigned i = 0; i < conns; i++) cs.push_back(connect(i));
  std::barrier start(static_cast<std::ptrdiff_t>(conns) + 1);
  std::vector<double> done(conns);
  std::vector<std::string> errors(conns);
  std::vector<std::thread> ts;
  for (unsigned i = 0; i < conns; i++)
    ts.emplace_back([&, i] {
      start.arrive_and_wait();
      try {
        done[i] = work(*cs[i], i);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  start.arrive_and_wait();
  auto t0 = Clock::now();
  for (auto& t : ts) t.join();
  double secs = seconds_since(t0);
  for (auto& e : errors)
    if (!e.empty()) fail(e);
  *total = 0;
  for (double d : done) *total += d;
  return secs;
}

// `reps` runs of run_parallel; each gives a rate (what the workers return, per second).
Stats rates(unsigned reps, unsigned conns, const std::function<std::unique_ptr<Conn>(unsigned)>& connect,
            const std::function<double(Conn&, unsigned, unsigned)>& work) {
  std::vector<double> v;
  for (unsigned r = 0; r < reps; r++) {
    double total;
    double s = run_parallel(conns, connect, [&](Conn& c, unsigned i) { return work(c, i, r); }, &total);
    v.push_back(total / s);
  }
  return summarize(v);
}

constexpr uint32_t kIoHeader = 24;  // Rread: size[4] type[1] tag[2] count[4], plus slack as Linux reserves

void serve(const Target& t, bool quick) {
  const unsigned reps = 3;
  const double run_s = quick ? 0.5 : 2.0;
  std::vector<uint32_t> msizes = quick ? std::vector<uint32_t>{8192, 131072, 1048576}
                                       : std::vector<uint32_t>{8192, 65536, 131072, 524288, 1048576, 4194304};
  std::vector<unsigned> conn_counts{1, 8};
  auto connect_ro = [&](uint32_t msize) { return [&t, msize](unsigned) { return std::make_unique<Conn>(t, msize, t.ro); }; };

  // The size of `big`, and what each server agrees to for msize.
  uint64_t big_size;
  {
    Conn c(t, 1 << 20, t.ro);
    uint32_t fid = c.c.new_fid();
    check(c.c.walk(c.root, fid, "big"), "walk big");
    big_size = check(c.c.getattr(fid), "getattr big").size;
  }

  // Sequential read of `big`, whole, by each connection.
  for (uint32_t msize : msizes) {
    for (unsigned conns : conn_counts) {
      std::vector<double> mibs;
      uint32_t agreed = 0;
      for (unsigned r = 0; r < reps; r++) {
        double bytes;
        double s = run_parallel(conns, connect_ro(msize), [&](Conn& c, unsigned) {
          agreed = c.c.msize();
          uint32_t fid = c.open("big", O_RDONLY);
          uint32_t count = c.c.msize() - kIoHeader;
          uint64_t off = 0;
          for (;;) {
            auto rr = check(c.c.call<p9::Rread>(p9::Tread{.fid = fid, .offset = off, .count = count}), "read");
            if (rr.data.bytes.empty()) break;
            off += rr.data.bytes.size();
          }
          check(c.c.clunk(fid), "clunk");
          return static_cast<double>(off);
        }, &bytes);
        mibs.push_back(bytes / s / (1 << 20));
      }
      // The row names the msize asked for; a server that agrees to less says so in the workload.
      std::string w = agreed == msize ? "seqread" : "seqread(msize " + std::to_string(agreed) + ")";
      row("host-9p", t.label, w, msize, conns, summarize(mibs), "MiB/s", reps);
    }
  }

  // 4 KiB random reads of `big`, for a fixed time.
  for (unsigned conns : conn_counts) {
    Stats st = rates(reps, conns, connect_ro(131072), [&](Conn& c, unsigned i, unsigned r) {
      uint32_t fid = c.open("big", O_RDONLY);
      std::mt19937_64 rng(i * 7919 + r);
      uint64_t blocks = big_size / 4096;
      uint64_t done = repeat_for(run_s, 64, [&](uint64_t) {
        check(c.c.call<p9::Rread>(p9::Tread{.fid = fid, .offset = (rng() % blocks) * 4096, .count = 4096}), "read");
      });
      check(c.c.clunk(fid), "clunk");
      return static_cast<double>(done);
    });
    row("host-9p", t.label, "randread4k", 131072, conns, st, "ops/s", reps);
  }

  // Metadata: walk + getattr + clunk of dir10k/fN, cycling through N.
  for (unsigned conns : conn_counts) {
    Stats st = rates(reps, conns, connect_ro(131072), [&](Conn& c, unsigned i, unsigned) {
      uint32_t fid = c.c.new_fid();
      return static_cast<double>(repeat_for(run_s, 32, [&](uint64_t n) {
        check(c.c.walk(c.root, fid, "dir10k/f" + std::to_string((i * 1250 + n) % 10000)), "walk");
        check(c.c.getattr(fid), "getattr");
        check(c.c.clunk(fid), "clunk");
      }));
    });
    row("host-9p", t.label, "walk+getattr+clunk", 131072, conns, st, "ops/s", reps);
  }

  // readdir of the 10,000-entry directory, whole, repeatedly.
  for (unsigned conns : conn_counts) {
    Stats st = rates(reps, conns, connect_ro(131072), [&](Conn& c, unsigned, unsigned) {
      uint64_t entries = 0;
      repeat_for(run_s, 1, [&](uint64_t) {
        uint32_t fid = c.open("dir10k", O_RDONLY | O_DIRECTORY);
        entries += check(c.c.readdir_all(fid), "readdir").size();
        check(c.c.clunk(fid), "clunk");
      });
      return static_cast<double>(entries);
    });
    row("host-9p", t.label, "readdir10k", 131072, conns, st, "entries/s", reps);
  }

  // create + unlink of small files on the read-write export.
  std::atomic<bool> unlink_by_remove = false;
  auto connect_rw = [&](unsigned) { return std::make_unique<Conn>(t, 131072, t.rw); };
  for (unsigned conns : conn_counts) {
    Stats st = rates(reps, conns, connect_rw, [&](Conn& c, unsigned i, unsigned r) {
      uint32_t fid = c.c.new_fid();
      return static_cast<double>(repeat_for(run_s, 16, [&](uint64_t n) {
        std::string name = "c" + std::to_string(i) + "-" + std::to_string(r) + "-" + std::to_string(n);
        check(c.c.walk(c.root, fid, ""), "walk");
        check(c.c.lcreate(fid, name, O_WRONLY | O_CREAT, 0644), "lcreate");
        check(c.c.clunk(fid), "clunk");
        // Tunlinkat, or walk + Tremove where the server lacks it (diod), as Linux does.
        if (!unlink_by_remove) {
          auto u = c.c.call<p9::Runlinkat>(p9::Tunlinkat{.dirfid = c.root, .name = name, .flags = 0});
          if (u) return;
          if (u.error() != -EOPNOTSUPP) fail(std::string("unlinkat: ") + std::strerror(-u.error()));
          unlink_by_remove = true;
        }
        check(c.c.walk(c.root, fid, name), "walk");
        check(c.c.call<p9::Rremove>(p9::Tremove{.fid = fid}), "remove");
      }));
    });
    row("host-9p", t.label, "create+unlink", 131072, conns, st, "ops/s", reps);
  }
}

// 9P on one vsock connection of the guest driver, no socket in between.
class VsockConn {
 public:
  static constexpr uint32_t kPort = 564, kLocal = 1000;
  explicit VsockConn(frontend::VsockGuest& g) : g_(g) { check(g_.connect(kLocal, kPort), "vsock connect"); }

  // Replies are decoded where they arrived, in the guest's stream buffer:
  // each byte of a reply is copied once on this side, out of the receive
  // buffer, as a guest kernel copies it into its 9P client's buffer.
  template <class R, class T>
  R call(const T& t) {
    size_t n = check(p9::encode(tx_, tag_, t), "encode");
    check(g_.write(kLocal, kPort, std::span(tx_).first(n)), "vsock write");
    for (;;) {
      auto have = g_.received(kLocal, kPort);
      uint32_t size = 0;
      if (have.size() >= 4) std::memcpy(&size, have.data(), 4);
      if (have.size() >= 4 && have.size() >= size) {
        auto f = check(p9::decode_r(have.first(size)), "decode");
        g_.consume(kLocal, kPort, size);
        if (f.tag != tag_) fail("vsock: a reply to another tag");
        if (auto* e = std::get_if<p9::Rlerror>(&f.msg)) fail(std::string("vsock: ") + std::strerror(static_cast<int>(e->ecode)));
        auto* r = std::get_if<R>(&f.msg);
        if (!r) fail("vsock: an unexpected reply");
        return *r;  // views into the reply stay valid until the next call
      }
      if (g_.reset_by_host(kLocal, kPort)) fail("vsock: fsd reset the connection");
      check(g_.poll_once(10000), "vsock read");
    }
  }

 private:
  frontend::VsockGuest& g_;
  std::vector<std::byte> tx_ = std::vector<std::byte>(64 * 1024);  // requests here are small
  uint16_t tag_ = 1;
};

p9::Twalk walk(uint32_t fid, uint32_t newfid, std::initializer_list<std::string_view> names) {
  p9::Twalk t{.fid = fid, .newfid = newfid, .wnames = {}};
  for (auto n : names) t.wnames.names[t.wnames.count++] = n;
  return t;
}

void serve_vsock(const Target& t, bool quick) {
  const unsigned reps = 3;
  const double run_s = quick ? 0.5 : 2.0;
  frontend::VhostFrontend::Options fo;
  fo.queues = 2;
  fo.memory = 64 << 20;
  fo.poison_replies = false;
  fo.populate = true;
  auto fe = check(frontend::VhostFrontend::connect(t.socket, fo), "connect to the vsock device");
  check(fe->negotiate(), "vhost-user negotiation");
  // As a Linux guest fills the rx queue: 128 buffers of 4 KiB (QEMU's
  // vsock queues have 128 entries; with indirect descriptors each buffer
  // takes one).
  frontend::VsockGuest::Options go;
  go.rx_buffers = 128;
  frontend::VsockGuest g(*fe, go);
  g.fill_rx();
  VsockConn c(g);
  uint32_t msize = c.call<p9::Rversion>(p9::Tversion{.msize = 1 << 20, .version = p9::kVersion9P2000L}).msize;
  c.call<p9::Rattach>(p9::Tattach{.fid = 0, .afid = p9::kNoFid, .uname = "", .aname = t.ro, .n_uname = 0});
  uint32_t next_fid = 1;
  auto open = [&](std::string_view name) {
    uint32_t fid = next_fid++;
    c.call<p9::Rwalk>(walk(0, fid, {name}));
    c.call<p9::Rlopen>(p9::Tlopen{.fid = fid, .flags = O_RDONLY});
    return fid;
  };
  uint32_t big = open("big");
  uint64_t big_size = c.call<p9::Rgetattr>(p9::Tgetattr{.fid = big, .request_mask = p9::kGetattrBasic}).size;

  // Sequential read of `big`, whole, at each read size up to the msize agreed.
  for (uint32_t size : {131072u, 524288u, 1048576u}) {
    if (size > msize) continue;
    std::vector<double> mibs;
    for (unsigned r = 0; r < reps; r++) {
      auto t0 = Clock::now();
      uint64_t off = 0;
      for (;;) {
        auto rr = c.call<p9::Rread>(p9::Tread{.fid = big, .offset = off, .count = size - kIoHeader});
        if (rr.data.bytes.empty()) break;
        off += rr.data.bytes.size();
      }
      if (off != big_size) fail("vsock seqread read " + std::to_string(off) + " bytes");
      mibs.push_back(static_cast<double>(off) / seconds_since(t0) / (1 << 20));
    }
    row("host-9p", t.label, "seqread", size, 1, summarize(mibs), "MiB/s", reps);
  }

  // 4 KiB random reads, and walk + getattr + clunk, for a fixed time.
  std::mt19937_64 rng(7919);
  std::vector<double> v;
  for (unsigned r = 0; r < reps; r++) {
    auto t0 = Clock::now();
    uint64_t done = repeat_for(run_s, 64, [&](uint64_t) {
      c.call<p9::Rread>(p9::Tread{.fid = big, .offset = (rng() % (big_size / 4096)) * 4096, .count = 4096});
    });
    v.push_back(static_cast<double>(done) / seconds_since(t0));
  }
  row("host-9p", t.label, "randread4k", 131072, 1, summarize(v), "ops/s", reps);
  v.clear();
  uint32_t fid = next_fid++;
  for (unsigned r = 0; r < reps; r++) {
    auto t0 = Clock::now();
    uint64_t done = repeat_for(run_s, 32, [&](uint64_t n) {
      std::string name = "f" + std::to_string(n % 10000);
      c.call<p9::Rwalk>(walk(0, fid, {"dir10k", name}));
      c.call<p9::Rgetattr>(p9::Tgetattr{.fid = fid, .request_mask = p9::kGetattrBasic});
      c.call<p9::Rclunk>(p9::Tclunk{.fid = fid});
    });
    v.push_back(static_cast<double>(done) / seconds_since(t0));
  }
  row("host-9p", t.label, "walk+getattr+clunk", 131072, 1, summarize(v), "ops/s", reps);
}

// What the host can do without any server: pread of the same file from the
// page cache, in the chunk sizes the rows use, by 1 thread and by 8 at once
// (each its own buffer, each the whole file: the parallelism of the rows
// with 8 requests in flight or 8 connections; the "conns" column), the
// same into memory spread as guest memory is (pread-spread), and memcpy.
void limit(const std::string& file, bool quick) {
  const unsigned reps = 3;
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open " + file);
  struct stat st{};
  ::fstat(fd, &st);
  // Page-aligned buffers, as a guest's pages and a server's are: copying
  // into a buffer that is not aligned as the page cache is runs at a third
  // of the speed here (rep movsb), which made the old limit far too low.
  using Aligned = std::unique_ptr<char, decltype(&std::free)>;
  auto aligned = [](size_t n) { return Aligned(static_cast<char*>(std::aligned_alloc(4096, n)), &std::free); };
  // Reads the whole file in `chunk`s into [base, base + span): each read
  // at the next chunk of it, wrapping round (span == chunk: always at base).
  auto pread_all = [&](size_t chunk, char* base, size_t span) {
    uint64_t off = 0;
    size_t at = 0;
    for (ssize_t n; (n = ::pread(fd, base + at, chunk, static_cast<off_t>(off))) > 0;) {
      off += static_cast<uint64_t>(n);
      at = at + 2 * chunk <= span ? at + chunk : 0;
    }
    return off;
  };
  // One row: `threads` threads each reading the whole file, thread t into
  // its own [dest(t), dest(t) + span); MiB/s over all of them.
  auto measure = [&](const char* name, uint32_t chunk, unsigned threads, auto dest, size_t span) {
    std::vector<double> mibs;
    for (unsigned r = 0; r < reps; r++) {
      std::atomic<uint64_t> total = 0;
      auto t0 = Clock::now();
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; t++) pool.emplace_back([&, t] { total += pread_all(chunk, dest(t), span); });
      for (auto& th : pool) th.join();
      mibs.push_back(static_cast<double>(total) / seconds_since(t0) / (1 << 20));
    }
    row("limit", "host", name, chunk, threads, summarize(mibs), "MiB/s", reps);
  };
  auto warm = aligned(1 << 20);
  pread_all(1 << 20, warm.get(), 1 << 20);  // warm the page cache
  std::vector<uint32_t> chunks = quick ? std::vector<uint32_t>{8192, 131072, 1048576}
                                       : std::vector<uint32_t>{8192, 65536, 131072, 524288, 1048576, 4194304};
  for (unsigned threads : {1u, 8u}) {
    std::vector<Aligned> bufs;
    for (unsigned t = 0; t < threads; t++) {
      bufs.push_back(aligned(4 << 20));
      std::memset(bufs.back().get(), 0, 4 << 20);
    }
    for (uint32_t chunk : chunks) measure("pread", chunk, threads, [&](unsigned t) { return bufs[t].get(); }, chunk);
  }
  // The same reads into destinations spread over 256 MiB (8 threads: each
  // over its own eighth), as the virtio-fs harness's guest memory is and a
  // guest's page cache is: copies into memory that is not in the CPU's
  // caches, which is what a server writing into guest memory can reach.
  // The rows above read into the same few MiB again and again, which stay
  // in the caches (about 1.6x faster at 1 MiB here).
  constexpr size_t kSpread = 256 << 20;
  Aligned area = aligned(kSpread);
  std::memset(area.get(), 0, kSpread);
  for (unsigned threads : {1u, 8u}) {
    size_t slice = kSpread / threads;
    for (uint32_t chunk : chunks)
      measure("pread-spread", chunk, threads, [&](unsigned t) { return area.get() + t * slice; }, slice);
  }

  std::vector<char> src(64 << 20, 1), dst(64 << 20);
  std::memcpy(dst.data(), src.data(), dst.size());
  std::vector<double> mibs;
  for (unsigned r = 0; r < reps; r++) {
    auto t0 = Clock::now();
    for (int k = 0; k < 8; k++) std::memcpy(dst.data(), src.data(), dst.size());
    mibs.push_back(8.0 * static_cast<double>(dst.size()) / seconds_since(t0) / (1 << 20));
  }
  row("limit", "host", "memcpy", 64 << 20, 1, summarize(mibs), "MiB/s", reps);
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fsd_p9_bench: the 9p host harness (see bench/run)"};
  Target t;
  std::string file;
  bool quick = false, header = false;
  auto* s = app.add_subcommand("serve", "Measure a 9P2000.L server on a unix socket");
  s->add_option("--label", t.label, "The server's name in the rows")->required();
  s->add_option("--socket", t.socket, "Its unix socket")->required();
  s->add_option("--ro-aname", t.ro, "aname of the read-only export (with big and dir10k/)")->required();
  s->add_option("--rw-aname", t.rw, "aname of the read-write export")->required();
  auto* v = app.add_subcommand("vsock", "Measure fsd's 9P over its virtio-vsock device (fsd --vsock-socket)");
  v->add_option("--label", t.label, "The rows' server name")->required();
  v->add_option("--socket", t.socket, "fsd's --vsock-socket")->required();
  v->add_option("--ro-aname", t.ro, "aname of the read-only export (with big and dir10k/)")->required();
  auto* l = app.add_subcommand("limit", "Measure pread from page cache and memcpy");
  l->add_option("--file", file, "The file the servers read")->required();
  app.add_flag("--quick", quick, "A minute-scale subset");
  app.add_flag("--header", header, "Print the CSV header first");
  app.require_subcommand(1);
  s->fallthrough();
  v->fallthrough();
  l->fallthrough();
  CLI11_PARSE(app, argc, argv);
  if (header) print_header();
  try {
    if (*s) serve(t, quick);
    if (*v) serve_vsock(t, quick);
    if (*l) limit(file, quick);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fsd_p9_bench: %s: %s\n", t.label.empty() ? "limit" : t.label.c_str(), e.what());
    return 1;
  }
}
