// libFuzzer target: a hostile guest against the real virtio-vsock device
// (VsockDevice with 9P sessions on a read-only temporary export), in this
// process and without a vhost-user socket: chains are handed to the device
// as the back-end would hand them, their buffers in this process's memory.
//
// Each input is a sequence of steps, each chosen by one byte: a transmit
// packet (a header from the input, most of the time nudged towards this
// guest, a served port and a known op; its payload raw bytes, or a 9P
// message encoded from the input: Tversion, Tattach, Twalk, Tlopen, Tread,
// Treaddir, Tclunk, or a frame header promising more than follows),
// receive chains of assorted sizes and shapes, the receive queue stopped,
// the device reset, and turns of the Ring so that sessions answer. At the
// end every request finishes (a request that never does trips libFuzzer's
// -timeout).
//
// Checked after every step: the device gives back only chains it holds,
// each once; a receive chain's length is at most its size and is a packet
// header addressed from the host to this guest, whose len is the rest; a
// data packet is for a connection the guest opened; connections stay
// under the cap.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "fsd/vfs/export_set.h"
#include "fsd/p9/session.h"
#include "fsd/uring/ring.h"
#include "fsd/vfs/vfs.h"
#include "fsd/vhost/vsock_device.h"
#include "protocol/p9/codec.h"
#include "protocol/vsock/packet.h"
#include "tests/fuzz/fuzz_input.h"

using namespace fsd;
using vsock::Header;
using vsock::kHeaderSize;
using VOp = fsd::vsock::Op;

namespace {

using fsd::fuzz::Input;

[[noreturn]] void fail(const char* why) {
  std::fprintf(stderr, "vsock_device_fuzz: %s\n", why);
  std::abort();
}

constexpr uint64_t kGuestCid = 3;
constexpr uint32_t kPort = 564;
constexpr size_t kMaxConnections = 4;

// The export and the ring, made once and shared by every input.
struct Fixture {
  std::filesystem::path dir;
  ExportSet exports;
  Ring ring{256};

  Fixture() {
    spdlog::set_level(spdlog::level::off);
    std::string tmpl = (std::filesystem::temp_directory_path() / "fsd-vsock-fuzz.XXXXXX").string();
    dir = ::mkdtemp(tmpl.data());
    std::filesystem::create_directories(dir / "export/sub");
    std::string big(200 * 1024, 'x');
    for (auto [name, body] : {std::pair{"export/hello", std::string("hello\n")}, {"export/big", big}}) {
      int fd = ::open((dir / name).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
      (void)!::write(fd, body.data(), body.size());
      ::close(fd);
    }
    exports.add(std::make_unique<Vfs>(ExportConfig{.tag = "ro", .path = (dir / "export").string(), .read_only = true},
                                      VfsOptions{.path_fd_cache = 32, .open_files = 64}));
    ring.set_metadata_io(Ring::MetadataIo::kInline);
  }
  ~Fixture() { std::filesystem::remove_all(dir); }
};

Fixture& fixture() {
  static Fixture* f = new Fixture;  // never destroyed: libFuzzer may exit at any point
  return *f;
}

// The back-end's side, checking what the device gives back.
class Used : public vhost::UsedRings {
 public:
  struct Rx {
    std::vector<std::byte> mem;
    virtio::Chain chain;
  };
  std::map<uint16_t, Rx> rx;  // receive chains the device holds
  std::set<uint64_t> opened;  // port pairs (guest << 32 | host) the guest asked to connect
  std::map<uint32_t, uint32_t> received;  // per guest port: RW bytes it got (its honest fwd_cnt)

  void give(unsigned queue, uint16_t head, uint32_t len) override {
    if (queue == vsock::kTxQueue) {
      if (!tx_held.erase(head)) fail("a transmit chain given back that the device does not hold");
      if (len != 0) fail("a length on a transmit chain");
      return;
    }
    if (queue != vsock::kRxQueue) fail("a chain given back on the event queue");
    auto it = rx.find(head);
    if (it == rx.end()) fail("a receive chain given back that the device does not hold (or twice)");
    check_rx(it->second, len);
    rx.erase(it);
  }
  void notify(unsigned queue) override {
    if (queue != vsock::kRxQueue && queue != vsock::kTxQueue) fail("a notification on the event queue");
  }
  void io_started(unsigned queue) override {
    if (queue != vsock::kRxQueue) fail("I/O into a queue other than rx");
    io++;
  }
  void io_done(unsigned queue) override {
    if (queue != vsock::kRxQueue || io == 0) fail("io_done without io_started");
    io--;
  }
  std::set<uint16_t> tx_held;
  unsigned io = 0;  // reads into receive chains in flight

 private:
  void check_rx(const Rx& r, uint32_t len) {
    if (len > r.chain.writable_bytes) fail("a receive length past the chain");
    if (len == 0) return;  // given back unused
    if (len < kHeaderSize) fail("a receive length shorter than a header");
    std::array<std::byte, kHeaderSize> raw;
    std::memcpy(raw.data(), r.mem.data(), kHeaderSize);  // the chains below are one contiguous buffer
    Header h = vsock::decode(raw);
    if (h.src_cid != vsock::kHostCid || h.dst_cid != kGuestCid) fail("a packet not from the host to this guest");
    if (h.len != len - kHeaderSize) fail("a header len other than the bytes written");
    auto op = static_cast<VOp>(h.op);
    if (op != VOp::kResponse && op != VOp::kRst && op != VOp::kCreditUpdate && op != VOp::kRw) fail("an op the host never sends");
    if (op != VOp::kRw && h.len != 0) fail("a payload on a control packet");
    if (op == VOp::kRw && h.len == 0) fail("an empty data packet");
    if (op == VOp::kRw && !opened.contains(uint64_t{h.dst_port} << 32 | h.src_port))
      fail("data for a connection the guest never asked for");
    if (op == VOp::kRw) received[h.dst_port] += h.len;
  }
};

// As the back-end stops a queue: once no read into its chains is in flight.
void release_rx(vhost::VsockDevice& dev, Used& used, Ring& ring) {
  while (used.io > 0) ring.run_once(true);
  dev.release(vsock::kRxQueue);
  if (!used.rx.empty()) fail("receive chains kept after release");
}

uint16_t next_head(Used& used, uint16_t& counter) {
  while (used.rx.contains(counter) || used.tx_held.contains(counter)) counter++;
  return counter++;
}

// A 9P message encoded from the input, or raw bytes.
std::vector<std::byte> payload(Input& in) {
  std::vector<std::byte> b(64 * 1024);
  uint16_t tag = in.byte() % 4;
  uint32_t fid = in.byte() % 4;
  Result<size_t> n = Error{-EINVAL};
  switch (in.byte() % 9) {
    case 0:
      n = p9::encode(b, p9::kNoTag, p9::Tversion{.msize = in.u32() % (2 << 20), .version = p9::kVersion9P2000L});
      break;
    case 1:
      n = p9::encode(b, tag, p9::Tattach{.fid = fid, .afid = p9::kNoFid, .uname = "", .aname = "ro", .n_uname = 0});
      break;
    case 2: {
      p9::Twalk t{.fid = fid, .newfid = in.byte() % 4u, .wnames = {}};
      static constexpr const char* kNames[] = {"hello", "big", "sub", "..", "nope"};
      t.wnames.names[t.wnames.count++] = kNames[in.byte() % 5];
      n = p9::encode(b, tag, t);
      break;
    }
    case 3:
      n = p9::encode(b, tag, p9::Tlopen{.fid = fid, .flags = O_RDONLY});
      break;
    case 4:
      n = p9::encode(b, tag, p9::Tread{.fid = fid, .offset = in.u32() % (256 * 1024), .count = in.u32() % (1 << 20)});
      break;
    case 5:
      n = p9::encode(b, tag, p9::Treaddir{.fid = fid, .offset = 0, .count = in.u16()});
      break;
    case 6:
      n = p9::encode(b, tag, p9::Tclunk{.fid = fid});
      break;
    case 7: {  // a frame header promising up to 2 MiB
      uint32_t size = in.u32() % (2 << 20);
      std::memcpy(b.data(), &size, 4);
      n = 4;
      break;
    }
    default: {
      size_t len = in.u16() % b.size();
      for (size_t i = 0; i < len && !in.empty(); i++) b[i] = std::byte{in.byte()};
      n = len;
      break;
    }
  }
  b.resize(n ? *n : 0);
  return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fixture();
  Input in{data, size};
  Used used;
  vhost::VsockOptions o{.guest_cid = kGuestCid, .port = kPort, .max_connections = kMaxConnections};
  o.window = 256 * 1024;
  if (in.byte() & 1) o.untrusted_as = Credentials::get(::geteuid(), ::getegid());
  auto dev = std::make_unique<vhost::VsockDevice>(
      f.ring, used, p9::session_factory(f.exports, {.max_msize = o.window, .max_fids = 16}), o);
  uint16_t heads = 0;
  std::vector<std::byte> tx(kHeaderSize + vsock::kMaxPayload);

  while (!in.empty()) {
    uint8_t sel = in.byte();
    switch (sel % 6) {
      case 0:
      case 1: {  // a transmit packet
        Header h{.src_cid = kGuestCid, .dst_cid = vsock::kHostCid, .src_port = 1020u + in.byte() % 8,
                 .dst_port = kPort, .type = 1, .op = static_cast<uint16_t>(VOp::kRw), .buf_alloc = 64 * 1024};
        if (sel & 0x08) h.src_port = 1024 + in.byte();  // unreserved
        if (sel & 0x10) h.op = static_cast<uint16_t>(1 + in.byte() % 7);
        if (sel & 0x20) h.flags = in.byte() % 4;
        if (sel & 0x40) h.buf_alloc = in.u32(), h.fwd_cnt = in.u32();
        else h.fwd_cnt = used.received[h.src_port];
        if ((sel & 0x80) && (in.byte() & 1)) {
          std::array<std::byte, kHeaderSize> raw{};
          for (auto& x : raw) x = std::byte{in.byte()};
          h = vsock::decode(raw);  // anything at all
        }
        std::vector<std::byte> body = static_cast<VOp>(h.op) == VOp::kRw ? payload(in) : std::vector<std::byte>{};
        if (!(sel & 0x80)) h.len = static_cast<uint32_t>(body.size());
        size_t given = std::min<size_t>(body.size(), vsock::kMaxPayload);
        std::array<std::byte, kHeaderSize> raw;
        vsock::encode(h, raw);
        std::memcpy(tx.data(), raw.data(), kHeaderSize);
        if (given) std::memcpy(tx.data() + kHeaderSize, body.data(), given);
        if (static_cast<VOp>(h.op) == VOp::kRequest && h.src_cid == kGuestCid)
          used.opened.insert(uint64_t{h.src_port} << 32 | h.dst_port);
        virtio::Chain c;
        c.head = next_head(used, heads);
        size_t split = std::min<size_t>(kHeaderSize + given, in.byte() % 2 ? kHeaderSize : size_t{8} + in.byte());
        c.readable = {iovec{tx.data(), split}, iovec{tx.data() + split, kHeaderSize + given - split}};
        c.readable_bytes = kHeaderSize + given;
        used.tx_held.insert(c.head);
        dev->take(vsock::kTxQueue, std::span(&c, 1));
        if (used.tx_held.contains(c.head)) fail("a transmit chain kept");
        break;
      }
      case 2: {  // receive chains
        unsigned count = 1 + in.byte() % 16;
        std::vector<virtio::Chain> chains;
        for (unsigned k = 0; k < count && used.rx.size() < 512; k++) {
          uint16_t head = next_head(used, heads);
          Used::Rx& r = used.rx[head];
          size_t bytes = (in.byte() & 1) ? kHeaderSize + 4096 : in.u16() % (kHeaderSize + 8192);
          r.mem.resize(std::max<size_t>(bytes, 1));
          r.chain.head = head;
          size_t split = std::min(bytes, size_t{kHeaderSize});
          r.chain.writable = {iovec{r.mem.data(), split}};
          if (bytes > split) r.chain.writable.push_back(iovec{r.mem.data() + split, bytes - split});
          r.chain.writable_bytes = bytes;
          chains.push_back(r.chain);
        }
        if (!chains.empty()) dev->take(vsock::kRxQueue, chains);
        break;
      }
      case 3:  // the front-end stops the receive queue
        release_rx(*dev, used, f.ring);
        break;
      case 4:  // a reset
        release_rx(*dev, used, f.ring);
        dev->stopped();
        used.opened.clear();
        break;
      case 5: {  // let the sessions run
        int turns = 1 + in.byte() % 4;
        for (int k = 0; k < turns; k++) f.ring.run_once(false);
        break;
      }
    }
    if (dev->connections() > kMaxConnections) fail("connections past the cap");
  }
  // Every request finishes, with or without a guest to take the replies.
  release_rx(*dev, used, f.ring);
  dev->stopped();
  while (f.ring.active() > 0) f.ring.run_once(true);
  dev.reset();
  return 0;
}
