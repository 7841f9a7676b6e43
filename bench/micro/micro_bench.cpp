// Micro benchmarks of the hot paths with no I/O of their own: the 9P and
// FUSE codecs, the virtqueue descriptor-chain walk, and the vfs node table
// (a warm lookup: one statx plus the table); and one question about I/O:
// whether io_uring's registered ("fixed") buffers would make copies between
// the page cache and guest memory cheaper.
//
//   build/bench/micro/fsd_micro_bench [--benchmark_filter=REGEX]
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "fsd/uring/ring.h"
#include "fsd/vfs/vfs.h"
#include "launcher/registration.h"
#include "protocol/fuse/request.h"
#include "protocol/p9/codec.h"
#include "protocol/virtio/virtqueue.h"

namespace {

using namespace fsd;

// ---- 9P

p9::Twalk three_names() {
  p9::Twalk t{};
  t.fid = 1;
  t.newfid = 2;
  t.wnames.count = 3;
  t.wnames.names[0] = "nix";
  t.wnames.names[1] = "store";
  t.wnames.names[2] = "0123456789abcdef0123456789abcdef-hello-2.12.1";
  return t;
}

void BM_P9EncodeTwalk(benchmark::State& state) {
  std::vector<std::byte> buf(8192);
  auto t = three_names();
  for (auto _ : state) benchmark::DoNotOptimize(p9::encode(buf, 7, t));
}
BENCHMARK(BM_P9EncodeTwalk);

void BM_P9DecodeTwalk(benchmark::State& state) {
  std::vector<std::byte> buf(8192);
  size_t n = *p9::encode(buf, 7, three_names());
  for (auto _ : state) benchmark::DoNotOptimize(p9::decode_t({buf.data(), n}));
}
BENCHMARK(BM_P9DecodeTwalk);

void BM_P9EncodeRgetattr(benchmark::State& state) {
  std::vector<std::byte> buf(8192);
  p9::Rgetattr r{};
  r.valid = 0x7ff;
  r.size = 123456;
  for (auto _ : state) benchmark::DoNotOptimize(p9::encode(buf, 7, r));
}
BENCHMARK(BM_P9EncodeRgetattr);

void BM_P9DecodeRgetattr(benchmark::State& state) {
  std::vector<std::byte> buf(8192);
  p9::Rgetattr r{};
  size_t n = *p9::encode(buf, 7, r);
  for (auto _ : state) benchmark::DoNotOptimize(p9::decode_r({buf.data(), n}));
}
BENCHMARK(BM_P9DecodeRgetattr);

// A 1 MiB Tread's reply: only the header is written; the data goes in place.
void BM_P9RreadHeader(benchmark::State& state) {
  std::vector<std::byte> buf(64);
  for (auto _ : state) {
    p9::put_rread_header(buf, 7, 1 << 20);
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_P9RreadHeader);

// ---- FUSE

std::vector<std::byte> fuse_request(uint32_t opcode, const void* body, size_t body_len, size_t extra = 0) {
  std::vector<std::byte> out(sizeof(fuse_in_header) + body_len + extra);
  fuse_in_header h{};
  h.len = static_cast<uint32_t>(out.size());
  h.opcode = opcode;
  h.unique = 42;
  h.nodeid = 1;
  std::memcpy(out.data(), &h, sizeof h);
  std::memcpy(out.data() + sizeof h, body, body_len);
  return out;
}

void BM_FuseDecodeLookup(benchmark::State& state) {
  const char name[] = "0123456789abcdef0123456789abcdef-hello-2.12.1";
  auto req = fuse_request(FUSE_LOOKUP, name, sizeof name);
  for (auto _ : state) benchmark::DoNotOptimize(fuse::decode(req));
}
BENCHMARK(BM_FuseDecodeLookup);

void BM_FuseDecodeRead(benchmark::State& state) {
  fuse_read_in in{};
  in.fh = 3;
  in.size = 1 << 20;
  auto req = fuse_request(FUSE_READ, &in, sizeof in);
  for (auto _ : state) benchmark::DoNotOptimize(fuse::decode(req));
}
BENCHMARK(BM_FuseDecodeRead);

// WRITE whose 4 KiB payload arrives in its own buffers (virtio-fs): the
// decoder sees only the header and fuse_write_in.
void BM_FuseDecodeWriteHeader(benchmark::State& state) {
  fuse_write_in in{};
  in.fh = 3;
  in.size = 4096;
  auto req = fuse_request(FUSE_WRITE, &in, sizeof in);
  size_t total = req.size() + 4096;
  reinterpret_cast<fuse_in_header*>(req.data())->len = static_cast<uint32_t>(total);
  for (auto _ : state) benchmark::DoNotOptimize(fuse::decode(req, total));
}
BENCHMARK(BM_FuseDecodeWriteHeader);

// ---- virtqueue descriptor chains

struct Ram {
  static constexpr uint64_t kGpa = 0x100000, kSize = 8 << 20;
  std::vector<std::byte> bytes = std::vector<std::byte>(kSize);
  virtio::GuestMemory mem{{virtio::Region{kGpa, kSize, 0x7000'0000'0000, nullptr}}};
  Ram() { mem = virtio::GuestMemory({virtio::Region{kGpa, kSize, 0x7000'0000'0000, bytes.data()}}); }
  virtio::Desc* table(uint64_t off) { return reinterpret_cast<virtio::Desc*>(bytes.data() + off); }
};

// A FUSE READ as Linux sends it, from d[0]: header in, header out, then N data pages.
void fill_read_chain(virtio::Desc* d, uint16_t pages) {
  d[0] = {Ram::kGpa + 0x10000, 80, virtio::kDescNext, 1};
  d[1] = {Ram::kGpa + 0x11000, 16, virtio::kDescNext | virtio::kDescWrite, 2};
  for (uint16_t i = 0; i < pages; i++)
    d[2 + i] = {Ram::kGpa + 0x20000 + i * 4096ull, 4096, static_cast<uint16_t>(virtio::kDescWrite | (i + 1 < pages ? virtio::kDescNext : 0)),
                static_cast<uint16_t>(3 + i)};
}

void BM_WalkChainDirect(benchmark::State& state) {
  Ram ram;
  uint16_t pages = static_cast<uint16_t>(state.range(0));
  virtio::Desc* d = ram.table(0);
  fill_read_chain(d, pages);
  virtio::Chain chain;
  for (auto _ : state) {
    chain.clear();
    benchmark::DoNotOptimize(virtio::walk_chain(ram.mem, d, 1024, 0, chain));
  }
  state.SetItemsProcessed(state.iterations() * (pages + 2));
}
BENCHMARK(BM_WalkChainDirect)->Arg(1)->Arg(32)->Arg(256);

void BM_WalkChainIndirect(benchmark::State& state) {
  Ram ram;
  uint16_t pages = static_cast<uint16_t>(state.range(0));
  virtio::Desc* ring = ram.table(0);
  fill_read_chain(ram.table(0x8000), pages);
  ring[0] = {Ram::kGpa + 0x8000, static_cast<uint32_t>((pages + 2) * sizeof(virtio::Desc)), virtio::kDescIndirect, 0};
  virtio::Chain chain;
  for (auto _ : state) {
    chain.clear();
    benchmark::DoNotOptimize(virtio::walk_chain(ram.mem, ring, 256, 0, chain));
  }
  state.SetItemsProcessed(state.iterations() * (pages + 2));
}
BENCHMARK(BM_WalkChainIndirect)->Arg(32)->Arg(256);

// ---- the vfs node table

// A warm lookup of a known child in a directory of N files: one statx
// (openat2 only for unseen nodes) and a table search among N nodes. With
// the second argument 1 the export has a closure view listing the N files
// and 50,000 names more (a large system closure), so each lookup also
// searches that list.
void BM_VfsLookupWarm(benchmark::State& state) {
  size_t n = static_cast<size_t>(state.range(0));
  bool closure = state.range(1) != 0;
  auto dir = std::filesystem::temp_directory_path() / ("fsd-micro-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  for (size_t i = 0; i < n; i++) std::ofstream(dir / ("f" + std::to_string(i)));
  {
    Ring ring;
    ExportConfig cfg;
    cfg.tag = "bench";
    cfg.path = dir.string();
    cfg.read_only = true;
    if (closure) {
      cfg.closure = dir.string() + ".closure";
      std::ofstream list(cfg.closure);
      for (size_t i = 0; i < n; i++) list << "/nix/store/f" << i << "\n";
      for (size_t i = 0; i < 50000; i++) list << "/nix/store/" << std::hex << i * 2654435761u << "-other\n";
    }
    Vfs vfs(cfg, VfsOptions{});
    std::vector<Entry> keep;  // every node known, as after a walk
    for (size_t i = 0; i < n; i++) keep.push_back(*ring.run(vfs.lookup(ring, vfs.root(), "f" + std::to_string(i))));
    size_t i = 0;
    std::vector<std::string> names;
    for (size_t k = 0; k < n; k++) names.push_back("f" + std::to_string(k));
    for (auto _ : state) {
      auto e = ring.run(vfs.lookup(ring, vfs.root(), names[i]));
      benchmark::DoNotOptimize(e);
      i = (i + 7919) % n;
    }
    state.counters["nodes"] = static_cast<double>(vfs.stats().nodes);
    if (closure) std::filesystem::remove(cfg.closure);
  }
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_VfsLookupWarm)->ArgsProduct({{1000, 20000}, {0, 1}})->ArgNames({"files", "closure"})->Unit(benchmark::kMicrosecond);

// The closure view's own cost per root lookup: one search of a list of N
// store paths (a NixOS system's closure is a few thousand).
void BM_ClosureShows(benchmark::State& state) {
  size_t n = static_cast<size_t>(state.range(0));
  std::string list;
  std::vector<std::string> names;
  for (size_t i = 0; i < n; i++) {
    names.push_back(std::to_string(i * 2654435761u) + "0123456789abcdefghijklmn-package-" + std::to_string(i));
    list += "/nix/store/" + names.back() + "\n";
  }
  Closure c;
  c.add_list(list, "bench");
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(c.shows(names[i]));
    i = (i + 7919) % n;
  }
}
BENCHMARK(BM_ClosureShows)->Arg(1000)->Arg(50000);

// vmlaunch's store.registration: one store path's NAR hashed and scanned
// for 1,000 hash parts, as registering a list of paths does per path.
// Arguments: the size of each file (KiB) and how many files (a 1 GiB
// closure is mostly files of a few KiB to a few MiB). Warm page cache.
void BM_SummariseNar(benchmark::State& state) {
  const size_t file = static_cast<size_t>(state.range(0)) << 10, files = static_cast<size_t>(state.range(1));
  auto dir = std::filesystem::temp_directory_path() / ("fsd-micro-nar-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string content(file, '\0');
  for (size_t i = 0; i < file; i++) content[i] = "the quick brown fox jumps over a lazy dog\n\x7f\x01"[i % 44];
  for (size_t i = 0; i < files; i++) std::ofstream(dir / ("f" + std::to_string(i))) << content;
  fsd::launcher::HashParts parts;
  for (int i = 0; i < 1000; i++) parts.insert(std::string(22, 'a') + std::to_string(1000000000 + i));
  uint64_t bytes = 0;
  for (auto _ : state) bytes += fsd::launcher::summarise_nar(dir.string(), parts).size;
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_SummariseNar)->Args({4, 4096})->Args({65536, 1})->Unit(benchmark::kMillisecond);

// ---- page cache to guest memory: io_uring's plain and fixed reads and writes

// Guest memory is a shared memfd mapping, as a front-end's is. Arguments:
// request size; 0 plain READ/WRITE, 1 the _FIXED opcodes on the whole
// mapping registered as buffers; 0 every request at one place (its cache
// lines stay hot), 1 spread over 256 MiB, as a guest's page cache pages
// are. The file (64 MiB) sits in the page cache throughout.
void BM_GuestMemoryIo(benchmark::State& state, bool write) {
  const size_t size = static_cast<size_t>(state.range(0));
  const bool fixed = state.range(1) != 0;
  const bool spread = state.range(2) != 0;
  constexpr size_t kMemory = 256 << 20, kFile = 64 << 20;
  auto path = std::filesystem::temp_directory_path() / ("fsd-micro-io-" + std::to_string(::getpid()));
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int mfd = ::memfd_create("guest", MFD_CLOEXEC);
  if (fd < 0 || mfd < 0 || ::ftruncate(mfd, kMemory) != 0) {
    state.SkipWithError("cannot make the file or the guest memory");
    return;
  }
  ::unlink(path.c_str());
  auto* mem = static_cast<char*>(::mmap(nullptr, kMemory, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0));
  std::memset(mem, 1, kMemory);
  for (size_t off = 0; off < kFile; off += kMemory / 4)
    (void)!::pwrite(fd, mem, std::min(kMemory / 4, kFile - off), static_cast<off_t>(off));
  io_uring ring;
  io_uring_queue_init(8, &ring, 0);
  iovec whole{mem, kMemory};
  if (fixed && io_uring_register_buffers(&ring, &whole, 1) != 0) {
    state.SkipWithError("io_uring_register_buffers failed (RLIMIT_MEMLOCK?)");
  } else {
    size_t file_off = 0, mem_off = 0;
    for (auto _ : state) {
      char* at = mem + mem_off;
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      auto off = static_cast<uint64_t>(file_off);
      auto n = static_cast<unsigned>(size);
      if (write) {
        fixed ? io_uring_prep_write_fixed(sqe, fd, at, n, off, 0) : io_uring_prep_write(sqe, fd, at, n, off);
      } else {
        fixed ? io_uring_prep_read_fixed(sqe, fd, at, n, off, 0) : io_uring_prep_read(sqe, fd, at, n, off);
      }
      io_uring_submit(&ring);
      io_uring_cqe* cqe;
      io_uring_wait_cqe(&ring, &cqe);
      if (cqe->res != static_cast<int>(size)) state.SkipWithError("short or failed I/O");
      io_uring_cqe_seen(&ring, cqe);
      file_off = (file_off + size) % kFile;
      if (spread) mem_off = (mem_off + size) % kMemory;
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
  }
  io_uring_queue_exit(&ring);
  ::munmap(mem, kMemory);
  ::close(mfd);
  ::close(fd);
}
void BM_GuestMemoryRead(benchmark::State& state) { BM_GuestMemoryIo(state, false); }
void BM_GuestMemoryWrite(benchmark::State& state) { BM_GuestMemoryIo(state, true); }
BENCHMARK(BM_GuestMemoryRead)
    ->ArgNames({"size", "fixed", "spread"})
    ->ArgsProduct({{4096, 1 << 20}, {0, 1}, {0, 1}})
    ->UseRealTime()  // a write may finish on io_uring's own workers
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GuestMemoryWrite)
    ->ArgNames({"size", "fixed", "spread"})
    ->ArgsProduct({{4096, 1 << 20}, {0, 1}, {0, 1}})
    ->UseRealTime()  // a write may finish on io_uring's own workers
    ->Unit(benchmark::kMicrosecond);

// ---- io_uring registered ("fixed") files

// A 4 KiB read from the page cache through io_uring by plain fd, or by its
// index among the ring's registered files (no reference taken on the file
// per request). Argument: 0 plain, 1 fixed. Run with a second thread alive,
// as fsd always has: a multithreaded process takes a reference per lookup.
void BM_FileRead4k(benchmark::State& state) {
  const bool fixed = state.range(0) != 0;
  constexpr size_t kFile = 16 << 20;
  auto path = std::filesystem::temp_directory_path() / ("fsd-micro-ff-" + std::to_string(::getpid()));
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ::unlink(path.c_str());
  std::vector<char> buf(kFile, 1);
  if (fd < 0 || ::pwrite(fd, buf.data(), kFile, 0) != static_cast<ssize_t>(kFile)) {
    state.SkipWithError("cannot make the file");
    return;
  }
  std::atomic<bool> stop{false};
  std::thread other([&] {
    while (!stop) ::usleep(1000);
  });
  io_uring ring;
  io_uring_queue_init(8, &ring, 0);
  if (fixed && io_uring_register_files(&ring, &fd, 1) != 0) {
    state.SkipWithError("io_uring_register_files failed");
  } else {
    size_t off = 0;
    for (auto _ : state) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_read(sqe, fixed ? 0 : fd, buf.data(), 4096, off);
      if (fixed) sqe->flags |= IOSQE_FIXED_FILE;
      io_uring_submit(&ring);
      io_uring_cqe* cqe;
      io_uring_wait_cqe(&ring, &cqe);
      if (cqe->res != 4096) state.SkipWithError("short or failed read");
      io_uring_cqe_seen(&ring, cqe);
      off = (off + 4096) % kFile;
    }
  }
  io_uring_queue_exit(&ring);
  stop = true;
  other.join();
  ::close(fd);
}
BENCHMARK(BM_FileRead4k)->ArgName("fixed")->Arg(0)->Arg(1);

}  // namespace

BENCHMARK_MAIN();
