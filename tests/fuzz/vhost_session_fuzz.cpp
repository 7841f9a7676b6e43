// libFuzzer target: a hostile vhost-user front-end and guest against the real
// back-end (VhostUserBackend serving virtio-fs from a read-only temporary
// export), over its unix socket, in this process.
//
// Each input is a session: a sequence of steps, each chosen by one byte:
// memory-table messages (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) whose
// regions are near-valid (the real memfd, with sizes, offsets and addresses
// sometimes wrong), vring set-up, feature and device messages, raw messages
// with arbitrary bytes and fds, FUSE requests placed in the rings of a fake
// guest memory (the memfd, mapped here too) and kicked, raw writes to that
// memory while the back-end runs, and a disconnect followed by a new
// front-end. Sessions keep going after the back-end drops a front-end: the
// next step reconnects, as QEMU does after a restart.
//
// Crashes and sanitizer reports end the run; a session that never finishes
// trips libFuzzer's -timeout, which is how a hang shows.
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "fsd/fuse/server.h"
#include "fsd/vhost/backend.h"
#include "fsd/vfs/vfs.h"
#include "protocol/vhost_user/message.h"
#include "protocol/virtio/virtqueue.h"

using namespace fsd;
namespace vu = fsd::vhost_user;

namespace {

constexpr size_t kMemSize = 1 << 20;
constexpr uint64_t kGpaBase = 0x100000000;
constexpr uint64_t kUserBase = 0x7f0000000000;  // the front-end's own address of the memory, as announced
constexpr unsigned kQueues = 2;
constexpr uint16_t kQueueSize = 64;
constexpr size_t kRingStride = 0x4000;  // queue q: desc at q*stride, avail +0x1000, used +0x2000
constexpr size_t kDataStart = 0x10000;

// The back-end and its export, made once and shared by every input.
struct Fixture {
  std::filesystem::path dir;
  std::unique_ptr<Vfs> vfs;
  std::unique_ptr<VhostUserBackend> backend;
  std::string socket;

  Fixture() {
    spdlog::set_level(spdlog::level::off);
    std::string tmpl = (std::filesystem::temp_directory_path() / "fsd-vhost-fuzz.XXXXXX").string();
    dir = ::mkdtemp(tmpl.data());
    std::filesystem::create_directories(dir / "export/sub");
    for (const char* name : {"export/a", "export/sub/b"}) {
      int fd = ::open((dir / name).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
      (void)!::write(fd, "contents\n", 9);
      ::close(fd);
    }
    vfs = std::make_unique<Vfs>(ExportConfig{.tag = "fz", .path = (dir / "export").string(), .read_only = true},
                                VfsOptions{.path_fd_cache = 32, .open_files = 64});
    socket = (dir / "fs.sock").string();
    VhostUserOptions o;
    o.device = {.name = "virtio-fs fuzz", .queues = kQueues};
    o.poll_us = 0;
    backend = std::make_unique<VhostUserBackend>(
        socket, fuse::server_factory(*vfs, {.max_write = 1 << 16, .virtiofs = true}, false), o);
    backend->start();
  }
  ~Fixture() {
    backend.reset();
    vfs.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// Reads the input front to back; past its end, zeros.
class Input {
 public:
  Input(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool done() const { return n_ == 0; }
  uint8_t u8() { return n_ ? (n_--, *p_++) : 0; }
  uint16_t u16() { return static_cast<uint16_t>(u8() | u8() << 8); }
  uint32_t u32() { return u16() | static_cast<uint32_t>(u16()) << 16; }
  uint64_t u64() { return u32() | static_cast<uint64_t>(u32()) << 32; }
  std::span<const uint8_t> bytes(size_t want) {
    size_t k = std::min(want, n_);
    std::span<const uint8_t> s(p_, k);
    p_ += k;
    n_ -= k;
    return s;
  }

 private:
  const uint8_t* p_;
  size_t n_;
};

class Session {
 public:
  explicit Session(Input& in) : in_(in) {
    memfd_ = ::memfd_create("fuzz-guest", MFD_CLOEXEC);
    (void)!::ftruncate(memfd_, kMemSize);
    mem_ = static_cast<std::byte*>(::mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0));
    for (unsigned q = 0; q < kQueues; q++) {
      kick_[q] = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      call_[q] = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    connect();
  }
  ~Session() {
    // Ends the session and waits until the back-end has dropped it (it
    // accepts the next front-end only then): every effect of this input is
    // over before the next starts, so a crash or a leak is charged to the
    // input that caused it.
    close_socket();
    connect();
    if (send(vu::Request::GetFeatures, vu::None{}, {}, false)) drain(5000);
    close_socket();
    ::munmap(mem_, kMemSize);
    ::close(memfd_);
    for (unsigned q = 0; q < kQueues; q++) {
      ::close(kick_[q]);
      ::close(call_[q]);
    }
  }

  void step() {
    if (sock_ < 0) connect();
    switch (in_.u8() % 11) {
      case 10: negotiate(); break;
      case 0: mem_table(); break;
      case 1: mem_region(); break;
      case 2: vring(); break;
      case 3: device_message(); break;
      case 4: raw_message(); break;
      case 5:
      case 6: fuse_request(); break;
      case 7: poke_memory(); break;
      case 8: ::eventfd_write(kick_[in_.u8() % kQueues], 1); break;
      case 9:
        if (in_.u8() % 4 == 0) close_socket();  // mid-request, perhaps
        else drain(in_.u8() % 3);
        break;
    }
  }

 private:
  void connect() {
    sock_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, fixture().socket.c_str(), sizeof sa.sun_path - 1);
    if (::connect(sock_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) close_socket();
  }
  void close_socket() {
    if (sock_ >= 0) ::close(sock_);
    sock_ = -1;
  }

  bool send_bytes(const std::byte* p, size_t n, std::span<const int> fds) {
    if (sock_ < 0) return false;
    iovec iov{const_cast<std::byte*>(p), n};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * vu::kMaxFds)];
    if (!fds.empty()) {
      mh.msg_control = control;
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    if (::sendmsg(sock_, &mh, MSG_NOSIGNAL) != static_cast<ssize_t>(n)) {
      close_socket();  // dropped by the back-end
      return false;
    }
    return true;
  }
  bool send(vu::Request r, const vu::Payload& p, std::span<const int> fds) {
    return send(r, p, fds, in_.u8() % 4 == 0);
  }
  bool send(vu::Request r, const vu::Payload& p, std::span<const int> fds, bool need_reply) {
    std::array<std::byte, 512> buf;
    auto n = vu::encode_request(buf, r, p, need_reply);
    return n.ok() && send_bytes(buf.data(), *n, fds);
  }

  // QEMU's start-up sequence, whole and valid, then FUSE_INIT: one step
  // that reaches running queues, for the other steps to disturb.
  void negotiate() {
    constexpr uint64_t kFeatures = vu::kFVersion1 | vu::kFRingEventIdx | vu::kFRingIndirectDesc | vu::kFProtocolFeatures;
    constexpr uint64_t kProtocol = vu::kPfMq | vu::kPfReplyAck | vu::kPfConfigureMemSlots | vu::kPfResetDevice;
    send(vu::Request::SetOwner, vu::None{}, {}, false);
    send(vu::Request::SetFeatures, kFeatures, {}, false);
    send(vu::Request::SetProtocolFeatures, kProtocol, {}, false);
    vu::MemTable t{};
    t.nregions = 1;
    t.regions[0] = {kGpaBase, kMemSize, kUserBase, 0};
    int mem[] = {memfd_};
    send(vu::Request::SetMemTable, t, mem, false);
    for (uint32_t q = 0; q < kQueues; q++) {
      size_t base = q * kRingStride;
      std::memset(mem_ + base + 0x1000, 0, 0x2000);  // fresh avail and used rings
      next_desc_[q] = 0;
      send(vu::Request::SetVringNum, vu::VringState{q, kQueueSize}, {}, false);
      send(vu::Request::SetVringAddr,
           vu::VringAddr{q, 0, kUserBase + base, kUserBase + base + 0x2000, kUserBase + base + 0x1000, 0}, {}, false);
      send(vu::Request::SetVringBase, vu::VringState{q, 0}, {}, false);
      int call[] = {call_[q]}, kick[] = {kick_[q]};
      send(vu::Request::SetVringCall, vu::VringFile{q, true}, call, false);
      send(vu::Request::SetVringKick, vu::VringFile{q, true}, kick, false);
      send(vu::Request::SetVringEnable, vu::VringState{q, 1}, {}, false);
    }
    fuse_init_in init{};
    init.major = FUSE_KERNEL_VERSION;
    init.minor = FUSE_KERNEL_MINOR_VERSION;
    init.max_readahead = 1 << 16;
    place(1, FUSE_INIT, FUSE_ROOT_ID, {reinterpret_cast<const uint8_t*>(&init), sizeof init}, 4096, 1);
  }
  // Reads whatever replies are there, waiting up to `ms` for the first.
  void drain(int ms) {
    std::array<std::byte, 4096> buf;
    while (sock_ >= 0) {
      pollfd p{sock_, POLLIN, 0};
      if (::poll(&p, 1, ms) <= 0) return;
      ssize_t n = ::recv(sock_, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n == 0) close_socket();
      if (n <= 0) return;
      ms = 0;
    }
  }

  // A region near the real one: sometimes larger than the memfd, shifted,
  // or at an offset past its end.
  vu::MemRegion region() {
    vu::MemRegion r{kGpaBase, kMemSize, kUserBase, 0};
    switch (in_.u8() % 8) {
      case 0: r.memory_size = kMemSize * 2; break;                   // longer than the fd
      case 1: r.memory_size = (in_.u16() + 1) * 4096ull; break;
      case 2: r.mmap_offset = in_.u32() & ~0xfffull; break;
      case 3: r.guest_phys_addr = in_.u64(); break;
      case 4: r.userspace_addr = in_.u64(); break;
      case 5: r.memory_size = kMemSize / 2, r.guest_phys_addr += kMemSize / 2 * (in_.u8() % 3); break;
      case 6: r.memory_size = 0; break;
      default: break;
    }
    return r;
  }
  void mem_table() {
    vu::MemTable t{};
    t.nregions = in_.u8() % 4;
    std::vector<int> fds;
    for (uint32_t i = 0; i < t.nregions; i++) {
      t.regions[i] = region();
      fds.push_back(memfd_);
    }
    if (in_.u8() % 8 == 0 && !fds.empty()) fds.pop_back();  // one fd short
    send(vu::Request::SetMemTable, t, fds);
  }
  void mem_region() {
    bool add = in_.u8() % 2;
    int fds[] = {memfd_};
    send(add ? vu::Request::AddMemReg : vu::Request::RemMemReg, region(), add ? fds : std::span<const int>{});
  }
  uint32_t queue_index() { return in_.u8() % 8 == 0 ? in_.u8() : in_.u8() % kQueues; }
  void vring() {
    uint32_t q = queue_index();
    size_t base = (q % kQueues) * kRingStride;
    switch (in_.u8() % 6) {
      case 0: {
        static constexpr uint32_t kNums[] = {kQueueSize, 0, 1, 3, 32768, 65535};
        send(vu::Request::SetVringNum, vu::VringState{q, kNums[in_.u8() % 6]}, {});
        break;
      }
      case 1: {
        vu::VringAddr a{q, 0, kUserBase + base, kUserBase + base + 0x2000, kUserBase + base + 0x1000, 0};
        if (in_.u8() % 4 == 0) a.desc_user_addr += in_.u32();
        if (in_.u8() % 4 == 0) a.used_user_addr = in_.u64();
        send(vu::Request::SetVringAddr, a, {});
        break;
      }
      case 2: send(vu::Request::SetVringBase, vu::VringState{q, in_.u8() % 4 == 0 ? in_.u32() : 0}, {}); break;
      case 3: send(vu::Request::GetVringBase, vu::VringState{q, 0}, {}); break;
      case 4: {
        bool with_fd = in_.u8() % 8 != 0;
        int fd = in_.u8() % 2 ? kick_[q % kQueues] : call_[q % kQueues];
        auto r = in_.u8() % 2 ? vu::Request::SetVringKick : vu::Request::SetVringCall;
        int fds[] = {fd};
        send(r, vu::VringFile{q, with_fd}, with_fd ? fds : std::span<const int>{});
        break;
      }
      case 5: send(vu::Request::SetVringEnable, vu::VringState{q, in_.u8() % 4 ? 1u : 0u}, {}); break;
    }
  }
  void device_message() {
    switch (in_.u8() % 10) {
      case 0: send(vu::Request::GetFeatures, vu::None{}, {}); break;
      case 1: {
        uint64_t f = vu::kFVersion1 | vu::kFRingEventIdx | vu::kFRingIndirectDesc | vu::kFProtocolFeatures;
        send(vu::Request::SetFeatures, in_.u8() % 4 == 0 ? in_.u64() : f, {});
        break;
      }
      case 2: send(vu::Request::SetOwner, vu::None{}, {}); break;
      case 3: send(vu::Request::GetProtocolFeatures, vu::None{}, {}); break;
      case 4: {
        uint64_t pf = vu::kPfMq | vu::kPfReplyAck | vu::kPfConfigureMemSlots | vu::kPfResetDevice | vu::kPfStatus;
        send(vu::Request::SetProtocolFeatures, in_.u8() % 4 == 0 ? in_.u64() : pf, {});
        break;
      }
      case 5: send(vu::Request::GetQueueNum, vu::None{}, {}); break;
      case 6: send(vu::Request::ResetDevice, vu::None{}, {}); break;
      case 7: send(vu::Request::SetStatus, uint64_t{in_.u8()}, {}); break;
      case 8: send(vu::Request::GetMaxMemSlots, vu::None{}, {}); break;
      case 9: {
        vu::Config c{in_.u32() % 300, in_.u8(), 0, {}};
        send(vu::Request::GetConfig, c, {});
        break;
      }
    }
  }
  // Any request number, flags and payload bytes, with up to two fds.
  void raw_message() {
    std::vector<std::byte> msg(vu::kHeaderSize);
    vu::Header h{in_.u8() % 48u, vu::kVersion | (in_.u8() & 0xc), 0};
    auto body = in_.bytes(in_.u8() % 80);
    h.size = in_.u8() % 16 == 0 ? in_.u32() : static_cast<uint32_t>(body.size());
    std::memcpy(msg.data(), &h, sizeof h);
    msg.insert(msg.end(), reinterpret_cast<const std::byte*>(body.data()),
               reinterpret_cast<const std::byte*>(body.data() + body.size()));
    int fds[] = {memfd_, kick_[0]};
    send_bytes(msg.data(), msg.size(), std::span<const int>(fds, in_.u8() % 3));
    if (h.size != body.size()) close_socket();  // a lie about the size desynchronises the stream
  }

  // A FUSE request chain in queue q's rings: the header is made consistent,
  // the rest is input; its reply buffers are of any size, split anywhere.
  void fuse_request() {
    unsigned q = in_.u8() % kQueues;
    uint32_t opcode = in_.u8() % 8 == 0 ? in_.u32() : in_.u8() % 52;
    uint64_t nodeid = in_.u8() % 4 ? FUSE_ROOT_ID : in_.u8();
    auto args = in_.bytes(in_.u8() % 96);
    uint32_t reply = in_.u16() % 0x6000;
    place(q, opcode, nodeid, args, reply, 1 + in_.u8() % 3);
  }
  void place(unsigned q, uint32_t opcode, uint64_t nodeid, std::span<const uint8_t> args, uint32_t reply,
             unsigned pieces) {
    auto* desc = reinterpret_cast<virtio::Desc*>(mem_ + q * kRingStride);
    std::byte* avail = mem_ + q * kRingStride + 0x1000;
    size_t at = kDataStart + (unique_ % 16) * 0x8000;
    fuse_in_header h{};
    h.len = static_cast<uint32_t>(sizeof h + args.size());
    h.opcode = opcode;
    h.unique = ++unique_;
    h.nodeid = nodeid;
    std::memcpy(mem_ + at, &h, sizeof h);
    std::memcpy(mem_ + at + sizeof h, args.data(), args.size());
    uint16_t head = next_desc_[q];
    uint16_t n = 0;
    auto add = [&](uint64_t off, uint32_t len, bool writable) {
      uint16_t i = static_cast<uint16_t>((head + n) % kQueueSize);
      desc[i] = {kGpaBase + off, len, static_cast<uint16_t>(writable ? virtio::kDescWrite : 0), 0};
      if (n) {
        auto& prev = desc[(head + n - 1) % kQueueSize];
        prev.flags |= virtio::kDescNext;
        prev.next = i;
      }
      n++;
    };
    add(at, h.len, false);
    for (unsigned p = 0; p < pieces; p++) add(at + 0x2000 + p * 0x2000, reply / pieces, true);
    next_desc_[q] = static_cast<uint16_t>((head + n) % kQueueSize);
    uint16_t idx;
    std::memcpy(&idx, avail + 2, 2);
    std::memcpy(avail + 4 + (idx % kQueueSize) * 2, &head, 2);
    idx++;
    std::memcpy(avail + 2, &idx, 2);
    ::eventfd_write(kick_[q], 1);
  }
  // Arbitrary bytes anywhere in the rings or data, while the back-end runs.
  void poke_memory() {
    size_t off = (static_cast<size_t>(in_.u16()) * 16) % kMemSize;
    auto b = in_.bytes(in_.u8() % 32);
    std::memcpy(mem_ + off, b.data(), std::min(b.size(), kMemSize - off));
  }

  Input& in_;
  int sock_ = -1;
  int memfd_ = -1;
  std::byte* mem_ = nullptr;
  int kick_[kQueues] = {}, call_[kQueues] = {};
  uint16_t next_desc_[kQueues] = {};
  uint64_t unique_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)fixture();
  Input in(data, size);
  Session s(in);
  for (int steps = 0; steps < 200 && !in.done(); steps++) s.step();
  return 0;
}
