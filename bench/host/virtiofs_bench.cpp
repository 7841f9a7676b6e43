// The virtio-fs host harness: drives a vhost-user virtio-fs back-end (fsd,
// or the C virtiofsd) with the project's front-end, fsd::frontend::
// VhostFrontend, in the role QEMU and the guest's driver play. No VM: FUSE
// requests go into split virtqueues in a memfd "guest memory", and the
// back-end writes its replies there.
//
//   fsd_virtiofs_bench --label fsd:auto --ro-socket A --rw-socket B [--quick] [--header]
//
// The read-only share must hold `big` and `dir10k/` (f0..f9999); the
// read-write share must be writable. Each back-end serves one front-end, so
// bench/run starts a fresh pair of servers for every label.
//
// Concurrency is what a guest with N busy threads produces: N requests in
// flight on the one request queue (the "conns" column). Reads use 4 KiB
// pages in indirect descriptors, and directories are read a page at a time,
// as Linux's virtio-fs driver does.
#include <fcntl.h>
#include <linux/fuse.h>

#include <CLI/CLI.hpp>
#include <array>
#include <atomic>
#include <barrier>
#include <filesystem>
#include <thread>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/host/harness.h"
#include "fsd/client/vhost_frontend.h"

namespace {

using namespace fsd;
using namespace fsd::bench;
using frontend::VhostFrontend;

constexpr unsigned kHiprio = 0, kRequests = 1;
constexpr size_t kPage = 4096;

// A FUSE request's argument bytes, built without allocating.
struct Req {
  uint32_t opcode = 0;
  uint64_t nodeid = 0;
  std::array<std::byte, 256> args{};
  size_t len = 0;
  size_t reply = kPage;  // bytes of reply buffer, in 4 KiB pages
  std::span<const std::byte> payload;  // a WRITE's data (must outlive the request)

  template <class T>
  Req& add(const T& v) {
    std::memcpy(args.data() + len, &v, sizeof v);
    len += sizeof v;
    return *this;
  }
  Req& name(const std::string& n) {
    std::memcpy(args.data() + len, n.c_str(), n.size() + 1);
    len += n.size() + 1;
    return *this;
  }
  std::span<const std::byte> bytes() const { return {args.data(), len}; }
};

template <class T>
T as(std::span<const std::byte> body, size_t at = 0) {
  if (body.size() < at + sizeof(T)) fail("short reply");
  T v;
  std::memcpy(&v, body.data() + at, sizeof v);
  return v;
}

// One vhost-user connection, negotiated and past FUSE_INIT.
class Fs {
 public:
  // `request_queues` > 1: a multiqueue guest, whose streams (busy threads)
  // each use one of them (stream i: queue i mod n), as Linux maps CPUs.
  explicit Fs(const std::string& socket, size_t memory = 256 << 20, unsigned request_queues = 1) {
    VhostFrontend::Options o;
    o.memory = memory;
    o.queues = 1 + request_queues;
    for (unsigned q = 0; q < request_queues; q++) queues_.push_back(kRequests + q);
    o.poison_replies = false;
    o.populate = true;
    f_ = check(VhostFrontend::connect(socket, o), ("connect " + socket).c_str());
    check(f_->negotiate(), "negotiate");
    auto init = check(f_->fuse_init(), "FUSE_INIT");
    if (init.error) fail("FUSE_INIT: " + std::string(std::strerror(-init.error)));
    auto out = as<fuse_init_out>(init.body);
    readdirplus_ = out.flags & FUSE_DO_READDIRPLUS;
    max_read_ = (out.flags & FUSE_MAX_PAGES) && out.max_pages ? out.max_pages * kPage : 32 * kPage;
    owner_.assign(request_queues, std::vector<unsigned>(f_->queue_size(), kFree));
    pending_.assign(request_queues, std::vector<VhostFrontend::Pending>(f_->queue_size()));
  }

  bool readdirplus() const { return readdirplus_; }
  size_t max_read() const { return max_read_; }

  // One request, waited for (set-up outside the timed parts).
  std::vector<std::byte> call(const Req& r) {
    auto rep = check(f_->fuse(kRequests, r.opcode, r.nodeid, r.bytes(), sizeof(fuse_out_header) + r.reply, r.payload, kPage, true),
                     "request");
    if (rep.error) fail("opcode " + std::to_string(r.opcode) + ": " + std::strerror(-rep.error));
    return rep.body;
  }
  fuse_entry_out lookup(uint64_t parent, const std::string& name) {
    Req r{.opcode = FUSE_LOOKUP, .nodeid = parent};
    return as<fuse_entry_out>(call(r.name(name)));
  }
  uint64_t open(uint64_t node, uint32_t opcode, uint32_t flags) {
    fuse_open_in in{};
    in.flags = flags;
    Req r{.opcode = opcode, .nodeid = node};
    return as<fuse_open_out>(call(r.add(in))).fh;
  }
  void release(uint64_t node, uint64_t fh, uint32_t opcode) {
    fuse_release_in in{};
    in.fh = fh;
    Req r{.opcode = opcode, .nodeid = node};
    call(r.add(in));
  }

  // `streams` workers, each with one request in flight, until every worker
  // stops (next returns false) or `secs` pass. next(stream, reply, req)
  // sees its previous reply (empty the first time) and fills its next
  // request. Returns the wall seconds.
  using Next = std::function<bool(unsigned, std::span<const std::byte>, Req&)>;
  double pump(unsigned streams, double secs, const Next& next) {
    auto t0 = Clock::now();
    auto until = secs == std::numeric_limits<double>::infinity() ? Clock::time_point::max()
                                                                 : t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(secs));
    unsigned in_flight = 0;
    Req r;
    for (unsigned s = 0; s < streams; s++)
      if (r = Req{}; next(s, {}, r)) submit(s, r), in_flight++;
    uint64_t polls = 0;
    while (in_flight) {
      auto [queue, u] = check(f_->wait_used_any(queues_), "wait for a reply");
      auto& owner = owner_[queue - kRequests];
      if (u.id >= owner.size() || owner[u.id] == kFree) fail("the back-end returned a chain not in flight");
      unsigned s = owner[u.id];
      owner[u.id] = kFree;
      in_flight--;
      auto v = check(f_->reply_of(pending_[queue - kRequests][u.id], u), "reply");
      if (v.error) fail("request of stream " + std::to_string(s) + ": " + std::strerror(-v.error));
      bool go_on = (++polls % 16 != 0) || Clock::now() < until;
      if (go_on && (r = Req{}, next(s, v.body, r))) submit(s, r), in_flight++;
      drain_hiprio(false);
    }
    drain_hiprio(true);
    return seconds_since(t0);
  }

  // FORGET goes on the high-priority queue and has no reply, as Linux sends it.
  void forget(uint64_t node, uint64_t nlookup) {
    fuse_forget_in in{nlookup};
    f_->submit_fuse(kHiprio, FUSE_FORGET, node, std::as_bytes(std::span(&in, 1)), 0);
    forgets_++;
    if (forgets_ >= f_->queue_size() / 2) drain_hiprio(true);
  }

 private:
  static constexpr unsigned kFree = ~0u;

  void submit(unsigned stream, const Req& r) {
    unsigned i = stream % static_cast<unsigned>(queues_.size());
    auto p = f_->submit_fuse(queues_[i], r.opcode, r.nodeid, r.bytes(), sizeof(fuse_out_header) + r.reply, r.payload, kPage, true);
    if (owner_[i][p.head] != kFree) fail("the request ring wrapped over a request still in flight");
    owner_[i][p.head] = stream;
    pending_[i][p.head] = p;
  }
  void drain_hiprio(bool all) {
    while (forgets_) {
      auto u = f_->wait_used(kHiprio, all ? 10000 : 0);
      if (!u && u.error() == -ETIMEDOUT && !all) return;
      check(std::move(u), "FORGET");
      forgets_--;
    }
  }

  std::unique_ptr<VhostFrontend> f_;
  bool readdirplus_ = false;
  size_t max_read_ = 0;
  std::vector<unsigned> queues_;  // the request queues
  std::vector<std::vector<unsigned>> owner_;  // per request queue: descriptor head -> stream, for requests in flight
  std::vector<std::vector<VhostFrontend::Pending>> pending_;
  unsigned forgets_ = 0;
};

// How many directory entries a READDIR(PLUS) reply holds, and the offset of the last.
std::pair<size_t, uint64_t> count_dirents(std::span<const std::byte> body, bool plus) {
  size_t n = 0, pos = 0;
  uint64_t off = 0;
  size_t head = plus ? FUSE_NAME_OFFSET_DIRENTPLUS : FUSE_NAME_OFFSET;
  while (pos + head <= body.size()) {
    auto d = as<fuse_dirent>(body, pos + (plus ? sizeof(fuse_entry_out) : 0));
    off = d.off;
    n++;
    pos += FUSE_DIRENT_ALIGN(head + d.namelen);
  }
  return {n, off};
}

// READ or READDIR(PLUS) of `size` bytes at `off` of open handle `fh`.
Req read_req(uint32_t opcode, uint64_t node, uint64_t fh, uint64_t off, uint32_t size) {
  fuse_read_in in{};
  in.fh = fh;
  in.offset = off;
  in.size = size;
  Req q{.opcode = opcode, .nodeid = node};
  q.add(in);
  q.reply = std::max<size_t>(size, kPage);
  return q;
}

struct Target {
  std::string label, ro, rw;
  std::string only;  // run only the workloads whose names contain this
  std::vector<unsigned> depths{1, 8};
  unsigned request_queues = 1;
  int server_pid = 0;  // CPU time per request, when given
};

void run(const Target& t, bool quick) {
  const unsigned reps = 3;
  const double run_s = quick ? 0.5 : 2.0;
  const double whole = std::numeric_limits<double>::infinity();
  const std::vector<unsigned>& depths = t.depths;
  Fs ro(t.ro, 256 << 20, t.request_queues), rw(t.rw, 256 << 20, t.request_queues);
  auto big = ro.lookup(FUSE_ROOT_ID, "big");
  auto dir = ro.lookup(FUSE_ROOT_ID, "dir10k");
  auto want = [&](const char* w) { return std::string(w).find(t.only) != std::string::npos; };
  CpuMeter cpu(t.server_pid);
  auto emit = [&](const char* w, uint32_t size, unsigned depth, const std::vector<double>& v, const char* unit) {
    row("host-virtiofs", t.label, w, size, depth, summarize(v), unit, reps);
    std::string_view rate = unit;
    const char* per = rate == "MiB/s" ? "MiB" : rate == "entries/s" ? "entry" : "op";
    cpu.emit("host-virtiofs", t.label, w, size, depth, per, reps);
  };

  // Sequential read of `big`, whole, by each stream, in requests of `size`.
  std::vector<uint32_t> sizes{131072, 1048576};
  for (uint32_t size : sizes) {
    if (size > ro.max_read() || !want("seqread")) continue;
    for (unsigned depth : depths) {
      std::vector<double> mibs;
      for (unsigned r = 0; r < reps; r++) {
        std::vector<uint64_t> fh(depth), off(depth, 0);
        std::vector<bool> started(depth, false);
        for (auto& h : fh) h = ro.open(big.nodeid, FUSE_OPEN, O_RDONLY);
        uint64_t bytes = 0;
        cpu.start();
        double s = ro.pump(depth, whole, [&](unsigned i, std::span<const std::byte> prev, Req& q) {
          if (started[i]) {
            if (prev.empty()) return false;  // end of file
            bytes += prev.size();
            off[i] += prev.size();
          }
          started[i] = true;
          q = read_req(FUSE_READ, big.nodeid, fh[i], off[i], size);
          return true;
        });
        cpu.stop(static_cast<double>(bytes) / (1 << 20));
        for (auto h : fh) ro.release(big.nodeid, h, FUSE_RELEASE);
        if (bytes != depth * big.attr.size) fail("seqread read " + std::to_string(bytes) + " bytes");
        mibs.push_back(static_cast<double>(bytes) / s / (1 << 20));
      }
      emit("seqread", size, depth, mibs, "MiB/s");
    }
  }

  // 4 KiB reads at random offsets of `big`.
  for (unsigned depth : depths) {
    if (!want("randread4k")) break;
    std::vector<double> ops;
    for (unsigned r = 0; r < reps; r++) {
      uint64_t fh = ro.open(big.nodeid, FUSE_OPEN, O_RDONLY), done = 0;
      std::mt19937_64 rng(r);
      uint64_t blocks = big.attr.size / kPage;
      cpu.start();
      double s = ro.pump(depth, run_s, [&](unsigned, std::span<const std::byte> prev, Req& q) {
        if (!prev.empty()) done++;
        q = read_req(FUSE_READ, big.nodeid, fh, (rng() % blocks) * kPage, kPage);
        return true;
      });
      cpu.stop(static_cast<double>(done));
      ro.release(big.nodeid, fh, FUSE_RELEASE);
      ops.push_back(static_cast<double>(done) / s);
    }
    emit("randread4k", kPage, depth, ops, "ops/s");
  }

  // 4 KiB writes at random offsets of a 16 MiB file on the read-write
  // share, written whole first (so no write allocates): the page cache
  // path, as a guest's writeback of a dirty page is (cache=auto and
  // always; with cache=never a guest's own write(2) arrives this way).
  for (unsigned depth : depths) {
    if (!want("randwrite4k")) break;
    constexpr uint64_t kFile = 16 << 20;
    static const std::vector<std::byte> data(64 * kPage, std::byte{0x5a});
    fuse_create_in c{};
    c.flags = O_RDWR | O_CREAT | O_TRUNC;
    c.mode = 0644;
    Req cr{.opcode = FUSE_CREATE, .nodeid = FUSE_ROOT_ID};
    auto created = rw.call(cr.add(c).name("randwrite4k"));
    auto e = as<fuse_entry_out>(created);
    uint64_t fh = as<fuse_open_out>(created, sizeof e).fh;
    auto write_req = [&](uint64_t off, size_t len) {
      fuse_write_in in{};
      in.fh = fh;
      in.offset = off;
      in.size = static_cast<uint32_t>(len);
      Req q{.opcode = FUSE_WRITE, .nodeid = e.nodeid};
      q.add(in);
      q.payload = std::span(data).first(len);
      q.reply = sizeof(fuse_write_out);
      return q;
    };
    for (uint64_t off = 0; off < kFile; off += data.size()) rw.call(write_req(off, data.size()));
    std::vector<double> ops;
    for (unsigned r = 0; r < reps; r++) {
      std::mt19937_64 rng(r);
      uint64_t done = 0;
      cpu.start();
      double s = rw.pump(depth, run_s, [&](unsigned, std::span<const std::byte> prev, Req& q) {
        if (!prev.empty()) {
          if (as<fuse_write_out>(prev).size != kPage) fail("randwrite4k: a short write");
          done++;
        }
        q = write_req((rng() % (kFile / kPage)) * kPage, kPage);
        return true;
      });
      cpu.stop(static_cast<double>(done));
      ops.push_back(static_cast<double>(done) / s);
    }
    rw.release(e.nodeid, fh, FUSE_RELEASE);
    Req u{.opcode = FUSE_UNLINK, .nodeid = FUSE_ROOT_ID};
    rw.call(u.name("randwrite4k"));
    rw.forget(e.nodeid, 1);
    emit("randwrite4k", kPage, depth, ops, "ops/s");
  }

  // Metadata: LOOKUP + GETATTR of dir10k/fN, what `stat` costs a guest
  // whose entries have timed out (cache=never).
  for (unsigned depth : depths) {
    if (!want("lookup+getattr")) break;
    std::vector<double> ops;
    for (unsigned r = 0; r < reps; r++) {
      std::vector<uint64_t> n(depth);
      std::vector<uint8_t> phase(depth, 0);
      uint64_t done = 0;
      std::vector<std::pair<uint64_t, uint64_t>> looked;  // forgotten after the clock stops
      cpu.start();
      double s = ro.pump(depth, run_s, [&](unsigned i, std::span<const std::byte> prev, Req& q) {
        if (phase[i] == 1) {  // a LOOKUP came back: GETATTR its node
          auto e = as<fuse_entry_out>(prev);
          looked.emplace_back(e.nodeid, 1);
          q = Req{.opcode = FUSE_GETATTR, .nodeid = e.nodeid};
          q.add(fuse_getattr_in{});
          phase[i] = 2;
          return true;
        }
        if (phase[i] == 2) done++;
        q = Req{.opcode = FUSE_LOOKUP, .nodeid = dir.nodeid};
        q.name("f" + std::to_string((i * 1250 + n[i]++) % 10000));
        phase[i] = 1;
        return true;
      });
      cpu.stop(static_cast<double>(done));
      ops.push_back(static_cast<double>(done) / s);
      for (auto [node, count] : looked) ro.forget(node, count);
    }
    emit("lookup+getattr", 0, depth, ops, "ops/s");
  }

  // readdir of the 10,000-entry directory, whole, a page per request.
  uint32_t rd_op = ro.readdirplus() ? FUSE_READDIRPLUS : FUSE_READDIR;
  for (unsigned depth : depths) {
    if (!want("readdir")) break;
    std::vector<double> rate;
    for (unsigned r = 0; r < reps; r++) {
      std::vector<uint64_t> fh(depth), off(depth, 0);
      std::vector<bool> open(depth, false);
      uint64_t entries = 0;
      cpu.start();
      double s = ro.pump(depth, run_s, [&](unsigned i, std::span<const std::byte> prev, Req& q) {
        if (!open[i] && !prev.empty()) {  // an OPENDIR came back
          fh[i] = as<fuse_open_out>(prev).fh;
          open[i] = true;
          off[i] = 0;
        } else if (open[i]) {
          auto [n, last] = count_dirents(prev, rd_op == FUSE_READDIRPLUS);
          entries += n;
          off[i] = last;
          if (n == 0) {  // the end: close it, and open again next time
            fuse_release_in in{};
            in.fh = fh[i];
            q = Req{.opcode = FUSE_RELEASEDIR, .nodeid = dir.nodeid};
            q.add(in);
            open[i] = false;
            return true;
          }
        }
        if (!open[i]) {
          q = Req{.opcode = FUSE_OPENDIR, .nodeid = dir.nodeid};
          q.add(fuse_open_in{});
          return true;
        }
        q = read_req(rd_op, dir.nodeid, fh[i], off[i], kPage);
        return true;
      });
      cpu.stop(static_cast<double>(entries));
      for (unsigned i = 0; i < depth; i++)
        if (open[i]) ro.release(dir.nodeid, fh[i], FUSE_RELEASEDIR);
      rate.push_back(static_cast<double>(entries) / s);
    }
    emit(rd_op == FUSE_READDIRPLUS ? "readdir10k(plus)" : "readdir10k", kPage, depth, rate, "entries/s");
  }

  // create + release + unlink (+ the FORGET a guest sends once the inode
  // goes) of small files on the read-write share.
  for (unsigned depth : depths) {
    if (!want("create+unlink")) break;
    std::vector<double> ops;
    for (unsigned r = 0; r < reps; r++) {
      std::vector<uint64_t> n(depth, 0), node(depth);
      std::vector<uint8_t> phase(depth, 0);
      uint64_t done = 0;
      auto name = [&](unsigned i) { return "c" + std::to_string(i) + "-" + std::to_string(r) + "-" + std::to_string(n[i]); };
      cpu.start();
      double s = rw.pump(depth, run_s, [&](unsigned i, std::span<const std::byte> prev, Req& q) {
        switch (phase[i]) {
          case 1: {  // created: release it
            auto e = as<fuse_entry_out>(prev);
            fuse_release_in in{};
            in.fh = as<fuse_open_out>(prev, sizeof e).fh;
            node[i] = e.nodeid;
            q = Req{.opcode = FUSE_RELEASE, .nodeid = e.nodeid};
            q.add(in);
            phase[i] = 2;
            return true;
          }
          case 2:  // released: unlink it
            q = Req{.opcode = FUSE_UNLINK, .nodeid = FUSE_ROOT_ID};
            q.name(name(i));
            phase[i] = 3;
            return true;
          case 3:  // unlinked: forget it
            rw.forget(node[i], 1);
            done++;
            n[i]++;
            break;
        }
        fuse_create_in in{};
        in.flags = O_WRONLY | O_CREAT | O_EXCL;
        in.mode = 0644;
        q = Req{.opcode = FUSE_CREATE, .nodeid = FUSE_ROOT_ID};
        q.add(in).name(name(i));
        phase[i] = 1;
        return true;
      });
      cpu.stop(static_cast<double>(done));
      ops.push_back(static_cast<double>(done) / s);
      // Streams stopped by the clock may leave a file behind: remove it.
      for (unsigned i = 0; i < depth; i++)
        if (phase[i] == 1 || phase[i] == 2) {
          Req u{.opcode = FUSE_UNLINK, .nodeid = FUSE_ROOT_ID};
          rw.call(u.name(name(i)));
        }
    }
    emit("create+unlink", 0, depth, ops, "ops/s");
  }
}

// ---- scale: many front-ends on one fsd

// Resident memory (KiB) and open fds of a process.
std::pair<uint64_t, uint64_t> rss_and_fds(int pid) {
  uint64_t rss = 0, fds = 0;
  std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (!f) fail("cannot read the status of process " + std::to_string(pid));
  char line[256];
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmRSS: %lu", &rss) == 1) break;
  std::fclose(f);
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) fds++;
  return {rss, fds};
}

// Front-ends on the sockets of one fsd (each its own device, as guests'
// are): what an idle front-end costs fsd (RSS, fds), and the aggregate rate
// of 4 KiB reads and of LOOKUP+GETATTR when 1, 4, 16, ... of them are busy
// at once, each a thread with one request in flight, as a one-vCPU guest.
void scale(const std::vector<std::string>& sockets, int pid, bool quick) {
  const unsigned reps = 3;
  const double run_s = quick ? 0.5 : 2.0;
  auto [rss0, fds0] = rss_and_fds(pid);
  std::vector<std::unique_ptr<Fs>> fs;
  for (const auto& sock : sockets) fs.push_back(std::make_unique<Fs>(sock, 8 << 20));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto [rss1, fds1] = rss_and_fds(pid);
  auto n = static_cast<double>(sockets.size());
  row("scale", "fsd", "rss-per-frontend", 0, static_cast<unsigned>(sockets.size()),
      {(static_cast<double>(rss1) - static_cast<double>(rss0)) / n, 0, 0}, "KiB", 1);
  row("scale", "fsd", "fds-per-frontend", 0, static_cast<unsigned>(sockets.size()),
      {(static_cast<double>(fds1) - static_cast<double>(fds0)) / n, 0, 0}, "fds", 1);
  std::vector<fuse_entry_out> big, dir;
  for (auto& f : fs) {
    big.push_back(f->lookup(FUSE_ROOT_ID, "big"));
    dir.push_back(f->lookup(FUSE_ROOT_ID, "dir10k"));
  }
  std::vector<unsigned> counts;
  for (unsigned k = 1; k <= sockets.size(); k *= 4) counts.push_back(k);
  if (counts.back() != sockets.size()) counts.push_back(static_cast<unsigned>(sockets.size()));
  for (const char* w : {"randread4k", "lookup+getattr"}) {
    bool reads = std::string_view(w) == "randread4k";
    for (unsigned k : counts) {
      std::vector<double> rates;
      for (unsigned r = 0; r < reps; r++) {
        std::atomic<uint64_t> total = 0;
        std::barrier start(static_cast<std::ptrdiff_t>(k) + 1);
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < k; t++)
          threads.emplace_back([&, t] {
            Fs& f = *fs[t];
            uint64_t done = 0, fh = reads ? f.open(big[t].nodeid, FUSE_OPEN, O_RDONLY) : 0, i = 0;
            std::mt19937_64 rng(t * 7 + r);
            uint64_t blocks = big[t].attr.size / kPage;
            uint8_t phase = 0;
            std::vector<uint64_t> looked;
            start.arrive_and_wait();
            f.pump(1, run_s, [&](unsigned, std::span<const std::byte> prev, Req& q) {
              if (reads) {
                if (!prev.empty()) done++;
                q = read_req(FUSE_READ, big[t].nodeid, fh, (rng() % blocks) * kPage, kPage);
              } else if (phase == 1) {
                auto e = as<fuse_entry_out>(prev);
                looked.push_back(e.nodeid);
                q = Req{.opcode = FUSE_GETATTR, .nodeid = e.nodeid};
                q.add(fuse_getattr_in{});
                phase = 2;
              } else {
                if (phase == 2) done++;
                q = Req{.opcode = FUSE_LOOKUP, .nodeid = dir[t].nodeid};
                q.name("f" + std::to_string((t * 157 + i++) % 10000));
                phase = 1;
              }
              return true;
            });
            total += done;
            if (reads) f.release(big[t].nodeid, fh, FUSE_RELEASE);
            for (uint64_t node : looked) f.forget(node, 1);
          });
        start.arrive_and_wait();
        auto t0 = Clock::now();
        for (auto& th : threads) th.join();
        rates.push_back(static_cast<double>(total) / seconds_since(t0));
      }
      row("scale", "fsd", w, reads ? kPage : 0, k, summarize(rates), "ops/s", reps);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fsd_virtiofs_bench: the virtio-fs host harness (see bench/run)"};
  Target t;
  bool quick = false, header = false;
  std::vector<std::string> scale_sockets;
  app.add_option("--label", t.label, "The server's name in the rows (e.g. fsd:auto)");
  app.add_option("--ro-socket", t.ro, "vhost-user socket of the read-only share (with big and dir10k/)");
  app.add_option("--rw-socket", t.rw, "vhost-user socket of the read-write share");
  app.add_option("--scale-sockets", scale_sockets,
                 "Instead of the workloads: one front-end on each of these sockets of one fsd (each serving the "
                 "read-only share), their cost to fsd (--server-pid) and the aggregate rates as more are busy")
      ->delimiter(',');
  app.add_option("--only", t.only, "Run only the workloads whose names contain this (for profiling)");
  app.add_option("--depths", t.depths, "Requests kept in flight (default: 1 and 8)")->check(CLI::Range(1u, 64u));
  app.add_option("--request-queues", t.request_queues,
                 "Request queues the front-end uses, as a multiqueue guest (Linux 6.11 and later) does: request "
                 "stream i goes on queue i mod N (default 1; the back-end must offer N)")
      ->check(CLI::Range(1u, 63u));
  app.add_option("--server-pid", t.server_pid,
                 "Also print the CPU time this process (the back-end) spends per request, entry or MiB: a "
                 "\"WORKLOAD:cpu\" row after each (fsd in its sandbox: the waiter's child)");
  app.add_flag("--quick", quick, "A minute-scale subset");
  app.add_flag("--header", header, "Print the CSV header first");
  CLI11_PARSE(app, argc, argv);
  if (header) print_header();
  if (scale_sockets.empty() && (t.label.empty() || t.ro.empty() || t.rw.empty())) {
    std::fprintf(stderr, "fsd_virtiofs_bench: --label, --ro-socket and --rw-socket are required (or --scale-sockets)\n");
    return 2;
  }
  if (!scale_sockets.empty() && t.server_pid == 0) {
    std::fprintf(stderr, "fsd_virtiofs_bench: --scale-sockets needs --server-pid\n");
    return 2;
  }
  try {
    if (!scale_sockets.empty()) {
      scale(scale_sockets, t.server_pid, quick);
      return 0;
    }
    run(t, quick);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fsd_virtiofs_bench: %s: %s\n", t.label.c_str(), e.what());
    return 1;
  }
}
