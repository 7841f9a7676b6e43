#include "fsd/transport/vhost_user_backend.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <stdexcept>

#include "fsd/uring/ring.h"
#include "protocol/vhost_user/message.h"
#include "protocol/virtio/virtqueue.h"

namespace fsd {
namespace vu = vhost_user;

namespace {

constexpr uint64_t kFeatures = vu::kFVersion1 | vu::kFRingIndirectDesc | vu::kFRingEventIdx | vu::kFProtocolFeatures;
constexpr uint64_t kProtocolFeatures = vu::kPfMq | vu::kPfReplyAck | vu::kPfConfigureMemSlots;
constexpr uint64_t kMaxMemSlots = 32;

// One mmap of a region's fd; unmapped on destruction.
class Mapping {
 public:
  Mapping(void* base, size_t len) : base_(base), len_(len) {}
  Mapping(Mapping&& o) noexcept : base_(std::exchange(o.base_, nullptr)), len_(o.len_) {}
  Mapping(const Mapping&) = delete;
  ~Mapping() {
    if (base_) ::munmap(base_, len_);
  }
  std::byte* base() const { return static_cast<std::byte*>(base_); }

 private:
  void* base_;
  size_t len_;
};

// Guest memory as mapped at one moment. Requests hold a shared_ptr to it,
// so a replaced table stays mapped until the last request using it is done.
struct MemoryMap {
  std::vector<Mapping> mappings;
  std::vector<vu::MemRegion> regions;
  virtio::GuestMemory mem;
};

// Checks a memory table before anything is mapped: every region non-empty,
// inside its fd (a short fd would map pages that fault with SIGBUS when
// touched), and no two overlapping in guest-physical or front-end addresses.
// Returns why not, or "".
std::string check_regions(const std::vector<vu::MemRegion>& regions, const std::vector<Fd>& fds) {
  if (fds.size() != regions.size()) return "the regions and their fds do not match";
  auto overlap = [](uint64_t a, uint64_t b, uint64_t len_a, uint64_t len_b) { return a < b + len_b && b < a + len_a; };
  for (size_t i = 0; i < regions.size(); i++) {
    const auto& r = regions[i];
    std::string at = "region " + std::to_string(i);
    if (r.memory_size == 0) return at + " is empty";
    if (r.mmap_offset > UINT64_MAX - r.memory_size || r.guest_phys_addr > UINT64_MAX - r.memory_size ||
        r.userspace_addr > UINT64_MAX - r.memory_size)
      return at + " wraps around the address space";
    struct stat st{};
    if (::fstat(fds[i].get(), &st) < 0) return at + ": cannot stat its fd: " + std::strerror(errno);
    if (static_cast<uint64_t>(st.st_size) < r.mmap_offset + r.memory_size)
      return at + " needs " + std::to_string(r.mmap_offset + r.memory_size) + " bytes of its fd, which has " +
             std::to_string(st.st_size);
    for (size_t j = 0; j < i; j++) {
      const auto& o = regions[j];
      if (overlap(r.guest_phys_addr, o.guest_phys_addr, r.memory_size, o.memory_size) ||
          overlap(r.userspace_addr, o.userspace_addr, r.memory_size, o.memory_size))
        return at + " overlaps region " + std::to_string(j);
    }
  }
  return "";
}

Result<std::shared_ptr<MemoryMap>> map_regions(const std::vector<vu::MemRegion>& regions, std::vector<Fd>& fds) {
  auto m = std::make_shared<MemoryMap>();
  std::vector<virtio::Region> vr;
  for (size_t i = 0; i < regions.size(); i++) {
    const auto& r = regions[i];
    size_t len = r.memory_size + r.mmap_offset;
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fds[i].get(), 0);
    if (p == MAP_FAILED) return errno_error();
    m->mappings.emplace_back(p, len);
    vr.push_back(virtio::Region{r.guest_phys_addr, r.memory_size, r.userspace_addr,
                                static_cast<std::byte*>(p) + r.mmap_offset});
  }
  m->regions = regions;
  m->mem = virtio::GuestMemory(std::move(vr));
  return m;
}

// A request's name for logs, "unknown" for numbers the codec does not know.
const char* request_name(uint32_t request) {
  const char* name = vu::request_name(request);
  return name ? name : "unknown";
}

}  // namespace

// The device state: control-side configuration and the data-plane worker.
class VhostUserBackend::Device {
 public:
  Device(MessageServerFactory servers, VhostUserOptions o)
      : servers_(std::move(servers)), options_(std::move(o)), queues_(std::max(1u, options_.device.queues)) {
    cmd_fd_.reset(::eventfd(0, EFD_CLOEXEC));
    if (!cmd_fd_) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    ring_.set_metadata_io(o.metadata_io);
    new_server();
    worker_ = std::thread([this] { worker_main(); });
  }
  ~Device() {
    reset();
    post([this] { return cmd_exit(); });
    worker_.join();
  }

  // Handles one message from the front-end; false drops the connection.
  bool handle(int conn, const vu::Message& m, std::vector<Fd>& fds);
  // Back to the state before any front-end: queues stopped, memory unmapped.
  void reset();

  std::atomic<uint64_t> requests{0}, bad_chains{0}, bad_requests{0};

 private:
  struct Queue {
    // Control-thread view (changed only while the queue is stopped).
    uint32_t num = 0;
    vu::VringAddr addr{};
    bool addr_set = false;
    uint16_t base = 0;
    Fd kick, call;
    bool enabled = false;
    bool started = false;
    // Worker-thread state.
    virtio::SplitQueue split;
    int kick_fd = -1;
    int call_fd = -1;
    bool running = false;
    bool loop_alive = false;
    unsigned inflight = 0;
    Event* drained = nullptr;
    // While the loop polls: the event the worker sets once a request shows
    // up (poll_found) or the poll time runs out.
    Event* poll_wait = nullptr;
    std::chrono::steady_clock::time_point poll_until;
    bool poll_found = false;
  };

  // ---- control thread
  // What handling one front-end message came to: ok for REPLY_ACK, whether
  // it was answered already, and whether to drop the connection.
  struct Outcome {
    bool ok = true;
    bool replied = false;
    bool drop = false;
  };
  Outcome device_request(int conn, const vu::Message& m);
  Outcome memory_request(const vu::Message& m, std::vector<Fd>& fds);
  Outcome change_memory(const vu::Message& m, std::vector<Fd>& fds);
  Outcome vring_state_request(int conn, const vu::Message& m);
  Outcome vring_file_request(const vu::Message& m, std::vector<Fd>& fds);
  bool remap();
  Queue* queue_of(const vu::Message& m, uint32_t index);
  bool reply(int conn, vu::Request r, const vu::Payload& p);
  void maybe_start(unsigned i);
  void stop_queue(unsigned i);

  // ---- worker thread
  void post(std::function<Task<void>()> fn);
  void worker_main();
  void poll_queues();
  Task<void> command_loop();
  Task<void> cmd_exit() {
    exit_ = true;
    co_return;
  }
  Task<void> cmd_start(unsigned i, virtio::SplitQueue split, int kick_fd, int call_fd);
  Task<void> cmd_stop(unsigned i, uint16_t* last_avail);
  Task<void> cmd_set_call(unsigned i, int fd) {
    queues_[i].call_fd = fd;
    co_return;
  }
  Task<void> cmd_set_memory(std::shared_ptr<MemoryMap> m) {
    memory_ = std::move(m);
    co_return;
  }
  Task<void> cmd_get_memory(std::shared_ptr<MemoryMap>* out) {
    *out = memory_;
    co_return;
  }
  Task<void> cmd_new_server() {
    new_server();
    co_return;
  }
  void new_server() { server_ = servers_(ring_); }  // a new front-end starts afresh
  const VirtioDevice& device() const { return options_.device; }
  uint64_t device_features() const { return kFeatures | device().features; }
  uint64_t protocol_features() const { return kProtocolFeatures | (device().config.empty() ? 0 : vu::kPfConfig); }
  Task<void> queue_loop(unsigned i);
  Task<void> process(unsigned i, uint16_t head, std::shared_ptr<MemoryMap> mem, std::shared_ptr<MessageServer> server);
  void finish_one(Queue& q, uint16_t head, uint32_t len);

  MessageServerFactory servers_;
  VhostUserOptions options_;
  std::vector<Queue> queues_;
  uint64_t features_ = 0;
  uint64_t protocol_features_ = 0;
  std::vector<vu::MemRegion> regions_;  // control's copy, to rebuild on ADD/REM
  std::vector<Fd> region_fds_;          // dup'ed fds of regions_, for remapping

  // worker
  Ring ring_{256};
  std::thread worker_;
  Fd cmd_fd_;
  std::mutex cmd_mu_;
  struct Command {
    std::function<Task<void>()> fn;
    std::promise<void>* done;
  };
  std::deque<Command> cmds_;
  bool exit_ = false;
  unsigned polling_ = 0;  // queues waiting in poll_queues()
  std::shared_ptr<MemoryMap> memory_;
  std::shared_ptr<MessageServer> server_;  // kept alive by requests in flight across a reset
};

// ---- worker thread

void VhostUserBackend::Device::post(std::function<Task<void>()> fn) {
  std::promise<void> done;
  auto fut = done.get_future();
  {
    std::lock_guard g(cmd_mu_);
    cmds_.push_back({std::move(fn), &done});
  }
  uint64_t one = 1;
  (void)!::write(cmd_fd_.get(), &one, sizeof one);
  fut.wait();
}

void VhostUserBackend::Device::worker_main() {
  spawn(command_loop());
  while (!exit_) {
    ring_.run_once(polling_ == 0);
    if (polling_) poll_queues();
  }
}

// Ends the poll of each queue that has a request now, has been stopped, or
// has polled long enough.
void VhostUserBackend::Device::poll_queues() {
  auto now = std::chrono::steady_clock::now();
  for (auto& q : queues_) {
    if (!q.poll_wait) continue;
    q.poll_found = q.split.has_avail();
    if (!q.poll_found && q.running && now < q.poll_until) continue;
    polling_--;
    std::exchange(q.poll_wait, nullptr)->set();
  }
}

Task<void> VhostUserBackend::Device::command_loop() {
  while (!exit_) {
    uint64_t v;
    co_await ring_.read(cmd_fd_.get(), &v, sizeof v, 0);
    for (;;) {
      Command c;
      {
        std::lock_guard g(cmd_mu_);
        if (cmds_.empty()) break;
        c = std::move(cmds_.front());
        cmds_.pop_front();
      }
      co_await c.fn();
      c.done->set_value();
    }
  }
}

Task<void> VhostUserBackend::Device::cmd_start(unsigned i, virtio::SplitQueue split, int kick_fd, int call_fd) {
  Queue& q = queues_[i];
  q.split = split;
  q.kick_fd = kick_fd;
  q.call_fd = call_fd;
  q.running = true;
  spawn(queue_loop(i));
  co_return;
}

Task<void> VhostUserBackend::Device::cmd_stop(unsigned i, uint16_t* last_avail) {
  Queue& q = queues_[i];
  if (q.running) {
    q.running = false;
    co_await ring_.cancel_fd(q.kick_fd);  // ends the loop's wait for a kick
    Event drained;
    if (q.loop_alive || q.inflight > 0) {
      q.drained = &drained;
      co_await drained.wait();
      q.drained = nullptr;
    }
  }
  *last_avail = q.split.last_avail();
  q.kick_fd = q.call_fd = -1;
}

Task<void> VhostUserBackend::Device::queue_loop(unsigned i) {
  Queue& q = queues_[i];
  q.loop_alive = true;
  while (q.running) {
    bool more = false;
    for (;;) {
      auto head = q.split.pop();
      if (!head) {
        spdlog::error("{} queue {}: the guest published a corrupt available ring; stopping the queue", device().name, i);
        bad_chains++;
        q.running = false;
        break;
      }
      if (!head->has_value()) break;
      spawn(process(i, **head, memory_, server_));
    }
    if (!q.running) break;
    if (options_.poll_us) {
      // The guest's next request usually follows within microseconds; look
      // for it (while the ring runs this batch) before asking for a kick.
      Event polled;
      q.poll_wait = &polled;
      q.poll_until = std::chrono::steady_clock::now() + std::chrono::microseconds(options_.poll_us);
      polling_++;
      co_await polled.wait();
      if (q.poll_found) continue;
      if (!q.running) break;
    }
    q.split.arm_kick();
    // Entries published between the last pop and arming would be missed.
    auto again = q.split.pop();
    if (again && again->has_value()) {
      spawn(process(i, **again, memory_, server_));
      more = true;
    }
    if (more) continue;
    uint64_t v;
    int r = co_await ring_.read(q.kick_fd, &v, sizeof v, 0);
    if (r < 0 && r != -EINTR) break;
  }
  q.loop_alive = false;
  if (q.inflight == 0 && q.drained) q.drained->set();
}

void VhostUserBackend::Device::finish_one(Queue& q, uint16_t head, uint32_t len) {
  q.split.push(head, len);
  if (q.call_fd >= 0 && q.split.should_notify()) {
    uint64_t one = 1;
    (void)!::write(q.call_fd, &one, sizeof one);
  }
}

Task<void> VhostUserBackend::Device::process(unsigned i, uint16_t head, std::shared_ptr<MemoryMap> mem,
                                             std::shared_ptr<MessageServer> server) {
  Queue& q = queues_[i];
  Ring::Active active(ring_);
  q.inflight++;
  requests++;
  virtio::Chain chain;
  uint32_t written = 0;
  if (!mem) {
    bad_chains++;
  } else if (auto w = virtio::walk_chain(mem->mem, q.split.desc(), q.split.size(), head, chain); !w) {
    bad_chains++;
    spdlog::warn("{} queue {}: malformed descriptor chain at head {}", device().name, i, head);
  } else if (auto len = co_await server->handle(ring_, chain.readable, chain.writable); len) {
    written = static_cast<uint32_t>(*len);
  } else {
    bad_requests++;
  }
  if (q.running || q.drained) finish_one(q, head, written);
  q.inflight--;
  if (q.inflight == 0 && !q.loop_alive && q.drained) q.drained->set();
}

// ---- control thread

bool VhostUserBackend::Device::reply(int conn, vu::Request r, const vu::Payload& p) {
  std::byte buf[512];
  auto n = vu::encode_reply(buf, r, p);
  if (!n) return false;
  return ::send(conn, buf, *n, MSG_NOSIGNAL) == static_cast<ssize_t>(*n);
}

void VhostUserBackend::Device::maybe_start(unsigned i) {
  Queue& q = queues_[i];
  bool need_enable = features_ & vu::kFProtocolFeatures;
  if (q.started || !q.kick || !q.addr_set || q.num == 0 || (need_enable && !q.enabled)) return;
  std::shared_ptr<MemoryMap> mem;
  post([this, &mem] { return cmd_get_memory(&mem); });
  if (!mem) {
    spdlog::error("{} queue {}: started before the memory table", device().name, i);
    return;
  }
  uint16_t num = static_cast<uint16_t>(q.num);
  auto* desc = reinterpret_cast<virtio::Desc*>(mem->mem.translate_uva(q.addr.desc_user_addr, 16u * num));
  auto* avail = mem->mem.translate_uva(q.addr.avail_user_addr, virtio::SplitQueue::avail_size(num));
  auto* used = mem->mem.translate_uva(q.addr.used_user_addr, virtio::SplitQueue::used_size(num));
  if (!desc || !avail || !used) {
    spdlog::error("{} queue {}: ring addresses are outside guest memory", device().name, i);
    return;
  }
  virtio::SplitQueue split({desc, avail, used}, num, features_ & vu::kFRingEventIdx, q.base);
  int kick = q.kick.get(), call = q.call.get();
  post([=, this] { return cmd_start(i, split, kick, call); });
  q.started = true;
}

void VhostUserBackend::Device::stop_queue(unsigned i) {
  Queue& q = queues_[i];
  if (!q.started) return;
  uint16_t last = 0;
  post([this, i, &last] { return cmd_stop(i, &last); });
  q.base = last;
  q.started = false;
}

void VhostUserBackend::Device::reset() {
  for (unsigned i = 0; i < queues_.size(); i++) stop_queue(i);
  for (auto& q : queues_) {
    q.kick.reset();
    q.call.reset();
    q = Queue{};
  }
  post([this] { return cmd_set_memory(nullptr); });
  post([this] { return cmd_new_server(); });
  regions_.clear();
  region_fds_.clear();
  features_ = protocol_features_ = 0;
}

bool VhostUserBackend::Device::handle(int conn, const vu::Message& m, std::vector<Fd>& fds) {
  using R = vu::Request;
  Outcome o;
  switch (m.request) {
    case R::GetFeatures: case R::SetFeatures: case R::GetProtocolFeatures: case R::SetProtocolFeatures:
    case R::GetConfig: case R::GetQueueNum: case R::GetMaxMemSlots: case R::SetOwner: case R::ResetOwner:
    case R::ResetDevice: case R::SetStatus: case R::GetStatus:
      o = device_request(conn, m);
      break;
    case R::SetMemTable: case R::AddMemReg: case R::RemMemReg:
      o = memory_request(m, fds);
      break;
    case R::SetVringNum: case R::SetVringAddr: case R::SetVringBase: case R::GetVringBase:
    case R::SetVringEnable:
      o = vring_state_request(conn, m);
      break;
    case R::SetVringKick: case R::SetVringCall: case R::SetVringErr:
      o = vring_file_request(m, fds);
      break;
    default:
      spdlog::warn("vhost-user: unsupported request {} ({})", static_cast<uint32_t>(m.request),
                   request_name(static_cast<uint32_t>(m.request)));
      o.ok = false;
      break;
  }
  if (o.drop) return false;
  if (!o.replied && m.need_reply() && (protocol_features_ & vu::kPfReplyAck)) {
    if (!reply(conn, m.request, uint64_t{o.ok ? 0u : 1u})) return false;
  }
  return true;
}

VhostUserBackend::Device::Outcome VhostUserBackend::Device::device_request(int conn, const vu::Message& m) {
  using R = vu::Request;
  Outcome o;
  switch (m.request) {
    case R::GetFeatures:
      o.replied = reply(conn, m.request, uint64_t{device_features()});
      break;
    case R::SetFeatures: {
      uint64_t f = std::get<uint64_t>(m.payload);
      o.ok = (f & ~device_features()) == 0;
      features_ = f & device_features();
      break;
    }
    case R::GetProtocolFeatures:
      o.replied = reply(conn, m.request, uint64_t{protocol_features()});
      break;
    case R::SetProtocolFeatures:
      protocol_features_ = std::get<uint64_t>(m.payload) & protocol_features();
      break;
    case R::GetConfig: {
      auto c = std::get<vu::Config>(m.payload);
      const auto& space = device().config;
      // Bytes outside the device's config space read as zero.
      for (uint32_t i = 0; i < c.size; i++)
        c.payload[i] = c.offset + i < space.size() ? space[c.offset + i] : std::byte{0};
      o.replied = reply(conn, m.request, c);
      break;
    }
    case R::GetQueueNum:
      o.replied = reply(conn, m.request, uint64_t{queues_.size()});
      break;
    case R::GetMaxMemSlots:
      o.replied = reply(conn, m.request, uint64_t{kMaxMemSlots});
      break;
    case R::ResetOwner: case R::ResetDevice:
      reset();
      break;
    case R::GetStatus:
      o.replied = reply(conn, m.request, uint64_t{0});
      break;
    default:  // SET_OWNER, SET_STATUS: nothing to do
      break;
  }
  return o;
}

// Maps the control thread's region list and hands the mapping to the worker.
bool VhostUserBackend::Device::remap() {
  if (std::string why = check_regions(regions_, region_fds_); !why.empty()) {
    spdlog::error("{}: refusing the front-end's memory table: {}", device().name, why);
    return false;
  }
  std::vector<Fd> dup;
  for (auto& f : region_fds_) dup.emplace_back(::fcntl(f.get(), F_DUPFD_CLOEXEC, 0));
  auto map = map_regions(regions_, dup);
  if (!map) {
    spdlog::error("{}: cannot map guest memory: {}", device().name, std::strerror(-map.error()));
    return false;
  }
  post([this, mp = *map]() { return cmd_set_memory(mp); });
  return true;
}

// A running queue's rings were translated through the current mapping, and
// its requests in flight point into it: stop the running queues (draining
// them), change the mapping, and start them again on the new one. A table
// that is refused or cannot be mapped drops the front-end.
VhostUserBackend::Device::Outcome VhostUserBackend::Device::memory_request(const vu::Message& m,
                                                                           std::vector<Fd>& fds) {
  std::vector<unsigned> running;
  for (unsigned i = 0; i < queues_.size(); i++) {
    if (!queues_[i].started) continue;
    stop_queue(i);
    running.push_back(i);
  }
  Outcome o = change_memory(m, fds);
  if (o.drop) return o;
  for (unsigned i : running) maybe_start(i);
  return o;
}

VhostUserBackend::Device::Outcome VhostUserBackend::Device::change_memory(const vu::Message& m,
                                                                          std::vector<Fd>& fds) {
  using R = vu::Request;
  Outcome o;
  if (m.request == R::SetMemTable) {
    const auto& t = std::get<vu::MemTable>(m.payload);
    regions_.assign(t.regions.begin(), t.regions.begin() + t.nregions);
    region_fds_ = std::move(fds);
    o.drop = !remap();
    o.ok = !o.drop;
  } else if (m.request == R::AddMemReg) {
    o.ok = regions_.size() < kMaxMemSlots;
    if (o.ok) {
      regions_.push_back(std::get<vu::MemRegion>(m.payload));
      region_fds_.push_back(std::move(fds[0]));
      o.drop = !remap();
      o.ok = !o.drop;
    }
  } else {  // REM_MEM_REG
    const auto& r = std::get<vu::MemRegion>(m.payload);
    o.ok = false;
    for (size_t i = 0; i < regions_.size(); i++) {
      if (regions_[i].guest_phys_addr != r.guest_phys_addr || regions_[i].memory_size != r.memory_size) continue;
      regions_.erase(regions_.begin() + static_cast<ptrdiff_t>(i));
      region_fds_.erase(region_fds_.begin() + static_cast<ptrdiff_t>(i));
      if (regions_.empty()) post([this] { return cmd_set_memory(nullptr); });
      o.drop = !regions_.empty() && !remap();
      o.ok = !o.drop;
      break;
    }
  }
  return o;
}

VhostUserBackend::Device::Queue* VhostUserBackend::Device::queue_of(const vu::Message& m, uint32_t index) {
  if (index < queues_.size()) return &queues_[index];
  spdlog::warn("vhost-user {}: queue index {} out of range", request_name(static_cast<uint32_t>(m.request)), index);
  return nullptr;
}

VhostUserBackend::Device::Outcome VhostUserBackend::Device::vring_state_request(int conn, const vu::Message& m) {
  using R = vu::Request;
  Outcome o;
  if (m.request == R::SetVringAddr) {
    auto a = std::get<vu::VringAddr>(m.payload);
    Queue* q = queue_of(m, a.index);
    o.ok = q && !q->started;
    if (o.ok) {
      q->addr = a;
      q->addr_set = true;
    }
    return o;
  }
  auto s = std::get<vu::VringState>(m.payload);
  Queue* q = queue_of(m, s.index);
  if (!q) {
    o.ok = false;
    o.drop = m.request == R::GetVringBase;  // it must be answered, and cannot be
    return o;
  }
  switch (m.request) {
    case R::SetVringNum:
      o.ok = !q->started && virtio::SplitQueue::valid_size(s.num);
      if (o.ok) q->num = s.num;
      break;
    case R::SetVringBase:
      o.ok = !q->started && s.num <= UINT16_MAX;
      if (o.ok) q->base = static_cast<uint16_t>(s.num);
      break;
    case R::GetVringBase:
      stop_queue(s.index);  // GET_VRING_BASE stops the ring
      q->kick.reset();
      q->enabled = false;
      o.replied = reply(conn, m.request, vu::VringState{s.index, q->base});
      break;
    default:  // SET_VRING_ENABLE
      q->enabled = s.num != 0;
      if (q->enabled) {
        maybe_start(s.index);
      } else {
        stop_queue(s.index);
      }
      break;
  }
  return o;
}

VhostUserBackend::Device::Outcome VhostUserBackend::Device::vring_file_request(const vu::Message& m,
                                                                               std::vector<Fd>& fds) {
  using R = vu::Request;
  Outcome o;
  if (m.request == R::SetVringErr) return o;  // its fd (if any) closes here; errors are logged instead
  auto f = std::get<vu::VringFile>(m.payload);
  Queue* q = queue_of(m, f.index);
  if (!q) {
    o.ok = false;
    return o;
  }
  if (m.request == R::SetVringKick) {
    if (!f.has_fd) {
      spdlog::error("vhost-user: polling mode (no kick fd) is not supported");
      o.ok = false;
      return o;
    }
    stop_queue(f.index);
    q->kick = std::move(fds[0]);
    if (!(features_ & vu::kFProtocolFeatures)) q->enabled = true;
    maybe_start(f.index);
    return o;
  }
  // SET_VRING_CALL
  Fd fresh = f.has_fd ? std::move(fds[0]) : Fd();
  int fd = fresh.get();
  if (q->started) post([this, i = f.index, fd] { return cmd_set_call(i, fd); });
  q->call = std::move(fresh);  // the old fd closes only after the worker dropped it
  return o;
}

// ---- VhostUserBackend

VhostUserBackend::VhostUserBackend(std::string socket_path, MessageServerFactory servers, VhostUserOptions options)
    : socket_path_(std::move(socket_path)), servers_(std::move(servers)), options_(std::move(options)) {
  try {
    listen_fd_ = listen_unix(socket_path_, options_.socket_access, 1);
    socket_file_ = SocketFile(socket_path_);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("virtio-fs socket " + socket_path_ + ": " + e.what());
  }
}

VhostUserBackend::VhostUserBackend(Fd listening, MessageServerFactory servers, VhostUserOptions options)
    : servers_(std::move(servers)), options_(std::move(options)), listen_fd_(std::move(listening)) {}

VhostUserBackend::~VhostUserBackend() { stop(); }

void VhostUserBackend::start() {
  stop_fd_.reset(::eventfd(0, EFD_CLOEXEC));
  device_ = std::make_unique<Device>(servers_, options_);
  control_ = std::thread([this] { control_loop(); });
}

void VhostUserBackend::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (stop_fd_) {
    uint64_t one = 1;
    (void)!::write(stop_fd_.get(), &one, sizeof one);
  }
  if (control_.joinable()) control_.join();
  device_.reset();
  socket_file_.remove();
}

VhostUserStats VhostUserBackend::stats() const {
  VhostUserStats s;
  if (device_) {
    s.requests = device_->requests;
    s.bad_chains = device_->bad_chains;
    s.bad_requests = device_->bad_requests;
  }
  return s;
}

namespace {
// Waits until `fd` is readable or stop_fd fires; false on stop.
bool wait_readable(int fd, int stop_fd) {
  pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
  for (;;) {
    int r = ::poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || (p[1].revents & POLLIN)) return false;
    return true;
  }
}

// How long the rest of a message may take once its first byte is here: a
// front-end sends each message whole, and one that stops half-way must not
// hold the control thread (or a stop) for good.
constexpr int kMessageTimeoutMs = 5000;

enum RecvStatus { kReceived = 1, kClosed = 0, kBroken = -1, kStopped = -2 };

// Receives exactly `len` bytes (the first call also takes the fds that came
// with them), waiting at most until `deadline`, and never past a stop.
RecvStatus recv_part(int conn, int stop_fd, std::byte* p, size_t len, std::vector<Fd>* fds,
                     std::chrono::steady_clock::time_point deadline) {
  size_t got = 0;
  while (got < len) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return kBroken;
    pollfd pfd[2] = {{conn, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    int pr = ::poll(pfd, 2, static_cast<int>(left.count()));
    if (pr < 0 && errno != EINTR) return kBroken;
    if (pfd[1].revents & POLLIN) return kStopped;
    if (pr <= 0) continue;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * vu::kMaxFds)];
    iovec iov{p + got, len - got};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(conn, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    for (cmsghdr* c = n > 0 ? CMSG_FIRSTHDR(&mh) : nullptr; c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        Fd owned(fd);
        if (fds) fds->push_back(std::move(owned));  // fds after the header are dropped
      }
    }
    if (n == 0 && got == 0 && fds) return kClosed;
    if (n <= 0 || (mh.msg_flags & MSG_CTRUNC)) return kBroken;
    got += static_cast<size_t>(n);
  }
  return kReceived;
}

// Receives one message and its fds (the caller knows the socket is readable).
RecvStatus recv_message(int conn, int stop_fd, std::vector<std::byte>& buf, std::vector<Fd>& fds) {
  fds.clear();
  buf.resize(vu::kHeaderSize);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kMessageTimeoutMs);
  if (auto r = recv_part(conn, stop_fd, buf.data(), vu::kHeaderSize, &fds, deadline); r != kReceived) return r;
  auto h = vu::decode_header(buf);
  if (!h) return kBroken;
  buf.resize(vu::kHeaderSize + h->size);
  return recv_part(conn, stop_fd, buf.data() + vu::kHeaderSize, h->size, nullptr, deadline);
}
}  // namespace

void VhostUserBackend::control_loop() {
  std::vector<std::byte> buf;
  std::vector<Fd> fds;
  while (!finished_) {
    if (!wait_readable(listen_fd_.get(), stop_fd_.get())) return;
    Fd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    spdlog::info("{}: front-end connected", options_.device.name);
    for (;;) {
      if (!wait_readable(conn.get(), stop_fd_.get())) {
        device_->reset();
        return;
      }
      RecvStatus r = recv_message(conn.get(), stop_fd_.get(), buf, fds);
      if (r == kStopped) {
        device_->reset();
        return;
      }
      if (r != kReceived) {
        if (r == kBroken)
          spdlog::warn("{}: malformed or unfinished message from the front-end; disconnecting", options_.device.name);
        break;
      }
      auto m = vu::decode(buf, fds.size());
      if (!m) {
        spdlog::warn("{}: malformed {} message; disconnecting", options_.device.name,
                     request_name(vu::decode_header(buf)->request));
        break;
      }
      spdlog::trace("vhost-user: {}", request_name(static_cast<uint32_t>(m->request)));
      if (!device_->handle(conn.get(), *m, fds)) break;
    }
    device_->reset();
    spdlog::info("{}: front-end disconnected{}", options_.device.name,
                 options_.exit_on_disconnect ? "; exiting" : "; waiting for the next one");
    if (options_.exit_on_disconnect) {
      finished_ = true;
      if (on_finished_) on_finished_();
    }
  }
}

}  // namespace fsd
