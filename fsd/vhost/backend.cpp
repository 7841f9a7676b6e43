#include "fsd/vhost/backend.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
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
#include <span>
#include <stdexcept>

#include "fsd/uring/ring.h"
#include "fsd/vhost/guest_memory.h"
#include "protocol/vhost_user/message.h"
#include "protocol/virtio/virtqueue.h"

namespace fsd {
namespace vu = vhost_user;
using vhost::check_regions;
using vhost::is_eventfd;
using vhost::map_regions;
using vhost::MemoryMap;

namespace {

constexpr uint64_t kFeatures = vu::kFVersion1 | vu::kFRingIndirectDesc | vu::kFRingEventIdx | vu::kFProtocolFeatures;
constexpr uint64_t kProtocolFeatures = vu::kPfMq | vu::kPfReplyAck | vu::kPfConfigureMemSlots;
constexpr uint64_t kMaxMemSlots = 32;
// Queues polling at once in this process, over every device. Each poller
// spins a CPU; with many front-ends (guests) on one fsd, unbounded polling
// would have more spinning workers than CPUs, each taking CPU time from the
// workers with requests (and from the vCPUs). Past the limit, a queue
// sleeps until kicked at once.
std::atomic<unsigned> g_pollers{0};
unsigned max_pollers() {
  static const unsigned n = std::max(1u, std::thread::hardware_concurrency() / 2);
  return n;
}
bool take_poll_slot() {
  unsigned now = g_pollers.load(std::memory_order_relaxed);
  while (now < max_pollers())
    if (g_pollers.compare_exchange_weak(now, now + 1, std::memory_order_relaxed)) return true;
  return false;
}

// The signal that interrupts a worker stuck writing to a call eventfd (see
// VhostWorkerPool::watchdog). Its handler does nothing: installed without
// SA_RESTART, it makes the write fail with EINTR.
int interrupt_signal() { return SIGRTMIN; }
void install_interrupt_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa{};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    ::sigaction(interrupt_signal(), &sa, nullptr);
  });
}
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A request's name for logs, "unknown" for numbers the codec does not know.
const char* request_name(uint32_t request) {
  const char* name = vu::request_name(request);
  return name ? name : "unknown";
}

}  // namespace

namespace vhost_detail {

struct Command {
  std::function<Task<void>()> fn;
  std::promise<void>* done;
};
// A chain popped by one worker for another to run.
struct Handoff {
  Device* device;
  unsigned queue;
  uint16_t head;
};
// A queue a worker owns: it waits for the queue's kicks and pops its ring.
struct Owned {
  Device* device;
  unsigned queue;
};

// A data-plane thread with its own Ring, serving the queues it owns of any
// number of devices. Its inbox takes commands from control threads and
// chains from other workers; the eventfd wakes it.
struct Worker {
  Worker(unsigned i, Ring::MetadataIo io) : index(i), inbox_fd(::eventfd(0, EFD_CLOEXEC)) {
    if (!inbox_fd) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    ring.set_metadata_io(io);
  }
  unsigned index;  // in its pool
  Ring ring{256};
  std::thread thread;
  Fd inbox_fd;
  std::mutex mu;  // guards the two lists
  std::deque<Command> commands;
  std::vector<Handoff> chains;
  bool exit = false;
  std::vector<Owned> owned;   // changed only on its own thread, by commands
  std::vector<Owned> polls;   // the owned queues polling now (see queue_loop)
  // While it writes to a call eventfd: since when (steady clock, ns); else
  // 0. The pool's watchdog interrupts a write that takes too long.
  std::atomic<int64_t> signalling_since{0};
  // The inbox's loop, held here rather than detached: while it waits on
  // the ring only the kernel points at its frame otherwise, which a leak
  // checker (the fuzzers' LeakSanitizer) cannot see.
  Task<void> inbox;
};

void wake(Worker& w) {
  uint64_t one = 1;
  (void)!::write(w.inbox_fd.get(), &one, sizeof one);
}

// Runs `fn` on worker `w` and waits for it.
void post(Worker& w, std::function<Task<void>()> fn) {
  std::promise<void> done;
  auto fut = done.get_future();
  {
    std::lock_guard g(w.mu);
    w.commands.push_back({std::move(fn), &done});
  }
  wake(w);
  fut.wait();
}

Task<void> run_command(Command c) {
  co_await c.fn();
  c.done->set_value();
}
Task<void> cmd_exit(Worker& w) {
  w.exit = true;
  co_return;
}
Task<void> cmd_own(Worker& w, Device* d, std::vector<unsigned> queues) {
  for (unsigned q : queues) w.owned.push_back({d, q});
  co_return;
}
Task<void> cmd_disown(Worker& w, Device* d) {
  std::erase_if(w.owned, [&](const Owned& o) { return o.device == d; });
  co_return;
}
void worker_main(Worker& w);

// The device state: control-side configuration, and the queues it has on
// the pool's workers.
//
// Each queue has an owner, the worker that waits for its kicks and pops its
// available ring. When a batch holds more than one chain and the device has
// several workers, the owner keeps a share and hands the rest to the others
// (round-robin), so requests in flight together run on several CPUs. Any
// worker may finish a chain: the used ring and the call eventfd are behind
// the queue's used_mu. A chain counts as in flight from its pop until its
// push, whichever worker runs it, so stopping a queue drains them all.
//
// The workers may be shared with other devices (VhostUserOptions::pool).
// A device takes device.workers of them (at most the pool's size), starting
// at a different one for each device, so that the owners of many devices'
// queues spread over the pool.
//
// A chain device (ChainDevice) runs on one worker, which owns all its
// queues: the queue loops hand it the chains they pop, and it gives them
// back through UsedRings, which this class is too.
class Device : public vhost::UsedRings {
 public:
  Device(DeviceServers servers, VhostUserOptions o) : servers_(std::move(servers)), options_(std::move(o)) {
    unsigned wanted = chain_device() ? 1u : std::max(1u, options_.device.workers);
    pool_ = options_.pool ? options_.pool : std::make_shared<VhostWorkerPool>(wanted, options_.metadata_io);
    auto& all = pool_->start();
    for (unsigned i = 0; i < std::max(1u, options_.device.queues); i++) queues_.push_back(std::make_unique<Queue>());
    auto n = static_cast<unsigned>(all.size());
    first_ = pool_->next_.fetch_add(1, std::memory_order_relaxed) % n;
    for (unsigned j = 0; j < std::min(wanted, n); j++)
      workers_.push_back(all[(first_ + j) % n].get());
    for (Worker* w : workers_) {
      std::vector<unsigned> mine;
      for (unsigned i = 0; i < queues_.size(); i++)
        if (&owner(i) == w) mine.push_back(i);
      if (!mine.empty()) post(*w, [this, w, mine] { return cmd_own(*w, this, mine); });
    }
    post(*workers_[0], [this] { return cmd_new_server(); });
  }
  ~Device() {
    reset();
    for (Worker* w : workers_) post(*w, [this, w] { return cmd_disown(*w, this); });
    // What the last reset made goes on the thread it was made for.
    post(*workers_[0], [this] { return cmd_drop_server(); });
  }

  // Handles one message from the front-end; false drops the connection.
  bool handle(int conn, const vu::Message& m, std::vector<Fd>& fds);
  // Back to the state before any front-end: queues stopped, memory unmapped.
  void reset();

  std::atomic<uint64_t> requests{0}, bad_chains{0}, bad_requests{0};
  // A write to one of the front-end's call eventfds blocked until the
  // watchdog interrupted it: the front-end filled the counter itself and
  // made it blocking. Its queues are no longer signalled (a full counter
  // has told the guest already), until the next front-end.
  std::atomic<bool> call_stalled{false};

  // ---- called by the workers, on their own threads
  // Whether queue i's poll is over: a request is there, the queue was
  // stopped, or it has polled long enough.
  bool poll_over(unsigned i, std::chrono::steady_clock::time_point now) {
    Queue& q = *queues_[i];
    q.poll_found = q.split.has_avail();
    return q.poll_found || !q.running || now >= q.poll_until;
  }
  // Resumes queue i's loop from its poll.
  void end_poll(unsigned i) { std::exchange(queues_[i]->poll_wait, nullptr)->set(); }
  // On the owner: ends a stop's wait once the queue's loop has ended and no
  // chain of it is in flight on any worker.
  void settle(unsigned i) {
    Queue& q = *queues_[i];
    if (q.drained && !q.loop_alive && q.inflight.load() == 0) std::exchange(q.drained, nullptr)->set();
  }
  Task<void> process(Worker& w, unsigned i, uint16_t head);

  // ---- UsedRings, for a chain device (on its worker)
  void give(unsigned queue, uint16_t head, uint32_t len) override;
  void notify(unsigned queue) override;

 private:
  void signal_call(Worker& w, unsigned i, const Fd& call);
  struct Queue {
    // Control-thread view (changed only while the queue is stopped).
    uint32_t num = 0;
    vu::VringAddr addr{};
    bool addr_set = false;
    uint16_t base = 0;
    Fd kick;
    std::shared_ptr<const Fd> call;  // shared with the workers signalling it
    bool enabled = false;
    bool started = false;
    // Set when started, read by every worker while it runs: the rings, and
    // the memory and server its chains use.
    virtio::SplitQueue split;
    std::shared_ptr<MemoryMap> memory;
    std::shared_ptr<MessageServer> server;
    std::shared_ptr<vhost::ChainDevice> chains;  // instead of server, for a chain device
    // The owner's state.
    int kick_fd = -1;
    bool running = false;
    bool loop_alive = false;
    Event* drained = nullptr;
    // While the loop polls: the event the worker sets once a request shows
    // up (poll_found) or the poll time runs out.
    Event* poll_wait = nullptr;
    std::chrono::steady_clock::time_point poll_until;
    bool poll_found = false;
    // A chain device may give chains back: from the queue's start until
    // the chains it held were released at its stop.
    bool giving = false;
    std::vector<virtio::Chain> walked;  // the batch handed to a chain device
    size_t quiet_descs = 0;             // given back on a lazy queue since the last notification
    // Shared by the workers.
    std::atomic<unsigned> inflight{0};
    std::atomic<bool> draining{false};  // the owner waits for inflight to reach 0
    std::atomic<bool> broken{false};    // the guest corrupted the ring: nothing more goes back
    // A running average of how long its requests take, in ns (relaxed:
    // an estimate, updated by every worker).
    std::atomic<uint32_t> cost_ns{0};
    std::mutex used_mu;                 // guards split's used side and call_fd
    // The call eventfd the workers signal (a reference, so that it stays
    // open while a worker writes to it after letting go of used_mu).
    std::shared_ptr<const Fd> call_fd;
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
  // Queue 0 (virtio-fs's hiprio, or a single queue) shares queue 1's
  // worker: a lone guest thread's FORGETs then wake no second thread.
  unsigned owner_index(unsigned queue) const {
    return (queue == 0 ? 0 : queue - 1) % static_cast<unsigned>(workers_.size());
  }
  Worker& owner(unsigned queue) { return *workers_[owner_index(queue)]; }
  // Where worker w (one of this device's) sits in workers_.
  size_t position(const Worker& w) const {
    size_t n = pool_->workers_.size();
    return (w.index + n - first_) % n;
  }

  // ---- worker threads
  Task<void> cmd_start(Worker& w, unsigned i);
  Task<void> cmd_stop(Worker& w, unsigned i, uint16_t* last_avail);
  Task<void> cmd_new_server() {
    new_server();
    co_return;
  }
  Task<void> cmd_device_stopped() {
    if (chains_) chains_->stopped();
    co_return;
  }
  Task<void> cmd_drop_server() {
    server_.reset();
    chains_.reset();
    co_return;
  }
  // A new front-end starts afresh; the server is made on the device's first
  // worker, whose Ring a single-threaded server (virtio-9p) then uses.
  void new_server() {
    if (auto* f = std::get_if<vhost::ChainDeviceFactory>(&servers_)) {
      chains_ = (*f)(workers_[0]->ring, *this);
    } else {
      server_ = std::get<MessageServerFactory>(servers_)(workers_[0]->ring);
    }
  }
  bool chain_device() const { return std::holds_alternative<vhost::ChainDeviceFactory>(servers_); }
  const VirtioDevice& device() const { return options_.device; }
  uint64_t device_features() const { return kFeatures | device().features; }
  uint64_t protocol_features() const { return kProtocolFeatures | (device().config.empty() ? 0 : vu::kPfConfig); }
  Task<void> queue_loop(Worker& w, unsigned i);
  void dispatch(Worker& w, unsigned i, std::span<const uint16_t> heads);
  void take_chains(unsigned i, std::span<const uint16_t> heads);
  void finish_one(Worker& w, unsigned i, uint16_t head, uint32_t len);

  std::shared_ptr<VhostWorkerPool> pool_;  // the device's own when options_.pool is null
  DeviceServers servers_;
  VhostUserOptions options_;
  std::vector<std::unique_ptr<Queue>> queues_;
  uint64_t features_ = 0;
  uint64_t protocol_features_ = 0;
  std::vector<vu::MemRegion> regions_;  // control's copy, to rebuild on ADD/REM
  std::vector<Fd> region_fds_;          // dup'ed fds of regions_, for remapping
  std::shared_ptr<MemoryMap> memory_;   // the current mapping (control thread; queues take it when they start)
  std::shared_ptr<MessageServer> server_;  // made on workers_[0]; kept alive by requests in flight across a reset
  std::shared_ptr<vhost::ChainDevice> chains_;  // or this, for a chain device
  unsigned first_ = 0;                  // the pool index of workers_[0]
  std::vector<Worker*> workers_;        // the pool's workers this device uses
};

// ---- worker threads

// Ends the poll of each queue of this worker's that has a request now, has
// been stopped, or has polled long enough. A loop it resumes may poll again
// at once, which appends to polls: the index walks on over it.
void poll_queues(Worker& w) {
  auto now = std::chrono::steady_clock::now();
  for (size_t k = 0; k < w.polls.size();) {
    Owned o = w.polls[k];
    if (!o.device->poll_over(o.queue, now)) {
      k++;
      continue;
    }
    w.polls.erase(w.polls.begin() + static_cast<ptrdiff_t>(k));
    g_pollers.fetch_sub(1, std::memory_order_relaxed);
    o.device->end_poll(o.queue);
  }
}

// Takes what the inbox holds each time its eventfd is written: chains to
// run, commands (each runs as a task of its own, so a stop that waits for a
// drain never holds up the chains), and wake-ups for a drain.
Task<void> inbox_loop(Worker& w) {
  std::vector<Handoff> chains;
  while (!w.exit) {
    uint64_t v;
    co_await w.ring.read(w.inbox_fd.get(), &v, sizeof v, 0);
    for (;;) {
      std::deque<Command> commands;
      {
        std::lock_guard g(w.mu);
        chains.swap(w.chains);
        commands.swap(w.commands);
      }
      if (chains.empty() && commands.empty()) break;
      for (const auto& c : chains) spawn(c.device->process(w, c.queue, c.head));
      chains.clear();
      for (auto& c : commands) spawn(run_command(std::move(c)));
    }
    for (const Owned& o : w.owned) o.device->settle(o.queue);
  }
}

void worker_main(Worker& w) {
  w.inbox = inbox_loop(w);
  w.inbox.handle().resume();  // runs to its first wait; the ring resumes it from there
  while (!w.exit) {
    w.ring.run_once(w.polls.empty());
    if (!w.polls.empty()) poll_queues(w);
  }
}

Task<void> Device::cmd_start(Worker& w, unsigned i) {
  Queue& q = *queues_[i];
  q.running = true;
  q.broken = false;
  q.giving = true;
  spawn(queue_loop(w, i));
  co_return;
}

Task<void> Device::cmd_stop(Worker& w, unsigned i, uint16_t* last_avail) {
  Queue& q = *queues_[i];
  if (q.running) {
    q.running = false;
    co_await w.ring.cancel_fd(q.kick_fd);  // ends the loop's wait for a kick
  }
  Event drained;
  q.drained = &drained;
  q.draining = true;
  settle(i);
  co_await drained.wait();
  q.drained = nullptr;
  q.draining = false;
  if (q.chains) q.chains->release(i);
  q.giving = false;
  *last_avail = q.split.last_avail();
  q.kick_fd = -1;
  std::lock_guard g(q.used_mu);
  q.call_fd.reset();
}

Task<void> Device::queue_loop(Worker& w, unsigned i) {
  Queue& q = *queues_[i];
  q.loop_alive = true;
  std::vector<uint16_t> batch;
  while (q.running) {
    batch.clear();
    for (;;) {
      auto head = q.split.pop();
      if (!head) {
        spdlog::error("{} queue {}: the guest published a corrupt available ring; stopping the queue", device().name, i);
        bad_chains++;
        q.running = false;
        q.broken = true;
        break;
      }
      if (!head->has_value()) break;
      batch.push_back(**head);
    }
    dispatch(w, i, batch);
    if (!q.running) break;
    if (options_.poll_us && take_poll_slot()) {
      // The guest's next request usually follows within microseconds; look
      // for it (while the ring runs this batch) before asking for a kick.
      Event polled;
      q.poll_wait = &polled;
      q.poll_until = std::chrono::steady_clock::now() + std::chrono::microseconds(options_.poll_us);
      w.polls.push_back({this, i});
      co_await polled.wait();
      if (q.poll_found) continue;
      if (!q.running) break;
    }
    q.split.arm_kick();
    // Entries published between the last pop and arming would be missed.
    if (q.split.has_avail()) continue;
    uint64_t v;
    int r = co_await w.ring.read(q.kick_fd, &v, sizeof v, 0);
    if (r < 0 && r != -EINTR) break;
  }
  q.loop_alive = false;
  settle(i);
}

// Runs a batch of chains: here when it is one chain, when this is the only
// worker, or when this queue's requests are cheap; else spread round-robin
// over every worker, this one first. Handing a chain over costs both
// threads a wake-up (an eventfd write and a ring wait that returns), about
// as much as a 4 KiB read from the page cache: on a machine whose CPUs are
// busy (the front-end's vCPUs, other devices), spreading such requests only
// adds that cost. So chains go to other workers only while the queue's
// requests average more than VhostUserOptions::handoff_ns (20 us).
void Device::dispatch(Worker& w, unsigned i, std::span<const uint16_t> heads) {
  Queue& q = *queues_[i];
  if (q.chains) {
    take_chains(i, heads);
    return;
  }
  q.inflight += static_cast<unsigned>(heads.size());
  size_t n = workers_.size();
  if (n == 1 || heads.size() <= 1 || q.cost_ns.load(std::memory_order_relaxed) < options_.handoff_ns) {
    for (uint16_t h : heads) spawn(process(w, i, h));
    return;
  }
  n = std::min(n, heads.size());
  size_t me = position(w);
  for (size_t k = 1; k < n; k++) {
    Worker& other = *workers_[(me + k) % workers_.size()];
    {
      std::lock_guard g(other.mu);
      for (size_t j = k; j < heads.size(); j += n) other.chains.push_back({this, i, heads[j]});
    }
    wake(other);
  }
  for (size_t j = 0; j < heads.size(); j += n) spawn(process(w, i, heads[j]));
}

// Walks a batch for a chain device and hands it over; a chain that cannot
// be walked goes back at once, with nothing written.
void Device::take_chains(unsigned i, std::span<const uint16_t> heads) {
  Queue& q = *queues_[i];
  if (q.walked.size() < heads.size()) q.walked.resize(heads.size());
  size_t n = 0;
  for (uint16_t h : heads) {
    requests++;
    if (q.memory && virtio::walk_chain(q.memory->mem, q.split.desc(), q.split.size(), h, q.walked[n])) {
      n++;
      continue;
    }
    bad_chains++;
    spdlog::warn("{} queue {}: malformed descriptor chain at head {}", device().name, i, h);
    give(i, h, 0);
  }
  if (n) q.chains->take(i, std::span(q.walked).first(n));
  if (q.chains->lazy_completions(i)) {
    // The guest learns only that it may free these buffers: told once half
    // the ring's descriptors wait for it. A guest whose ring is full has
    // every descriptor there, so it is told before it could stall. (Counts
    // a chain's descriptors as walked, which indirect ones only make more.)
    for (size_t k = 0; k < n; k++) q.quiet_descs += q.walked[k].readable.size() + q.walked[k].writable.size();
    q.quiet_descs += heads.size() - n;
    if (q.quiet_descs < q.split.size() / 2u) return;
    q.quiet_descs = 0;
  }
  notify(i);
}

void Device::give(unsigned i, uint16_t head, uint32_t len) {
  if (i >= queues_.size() || !queues_[i]->giving) return;
  Queue& q = *queues_[i];
  std::lock_guard g(q.used_mu);
  if (!q.broken) q.split.push(head, len);
}

void Device::notify(unsigned i) {
  if (i >= queues_.size() || !queues_[i]->giving) return;
  Queue& q = *queues_[i];
  std::shared_ptr<const Fd> call;
  {
    std::lock_guard g(q.used_mu);
    if (!q.broken && q.call_fd && q.split.should_notify()) call = q.call_fd;
  }
  if (call) signal_call(owner(i), i, *call);
}

void Device::finish_one(Worker& w, unsigned i, uint16_t head, uint32_t len) {
  Queue& q = *queues_[i];
  std::shared_ptr<const Fd> call;
  {
    std::lock_guard g(q.used_mu);
    if (q.broken) return;
    q.split.push(head, len);
    if (q.call_fd && q.split.should_notify()) call = q.call_fd;
  }
  // Outside the lock: the front-end owns the eventfd and may make the
  // write wait; no other worker waits with it.
  if (call) signal_call(w, i, *call);
}

// Tells the guest through a call eventfd. The fd is non-blocking (set when
// it came), so a full counter, which has told the guest already, fails at
// once with EAGAIN. The front-end shares the fd and can make it blocking
// again: then the pool's watchdog interrupts the write, and this device's
// call fds are not written again.
void Device::signal_call(Worker& w, unsigned i, const Fd& call) {
  if (call_stalled.load(std::memory_order_relaxed)) return;
  uint64_t one = 1;
  w.signalling_since.store(now_ns(), std::memory_order_relaxed);
  ssize_t r = ::write(call.get(), &one, sizeof one);
  int err = errno;
  w.signalling_since.store(0, std::memory_order_relaxed);
  if (r < 0 && err == EINTR && !call_stalled.exchange(true))
    spdlog::error("{} queue {}: a write to the front-end's call eventfd blocked (its counter is full and the fd "
                  "blocking); its queues are no longer signalled",
                  device().name, i);
}

Task<void> Device::process(Worker& w, unsigned i, uint16_t head) {
  Queue& q = *queues_[i];
  Ring::Active active(w.ring);
  auto start = std::chrono::steady_clock::now();
  requests++;
  virtio::Chain chain;
  uint32_t written = 0;
  if (!q.memory) {
    bad_chains++;
  } else if (auto walk = virtio::walk_chain(q.memory->mem, q.split.desc(), q.split.size(), head, chain); !walk) {
    bad_chains++;
    spdlog::warn("{} queue {}: malformed descriptor chain at head {}", device().name, i, head);
  } else if (auto len = co_await q.server->handle(w.ring, RequestBytes::in_shared(chain.readable), chain.writable); len) {
    written = static_cast<uint32_t>(*len);
  } else {
    bad_requests++;
  }
  finish_one(w, i, head, written);
  if (workers_.size() > 1) {
    auto took = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
    uint32_t avg = q.cost_ns.load(std::memory_order_relaxed);
    auto sample = static_cast<uint32_t>(std::min<int64_t>(took, 10'000'000));
    q.cost_ns.store(avg - avg / 8 + sample / 8, std::memory_order_relaxed);
  }
  // The last chain of a stopping queue wakes its owner (or settles it here).
  if (q.inflight.fetch_sub(1) == 1 && q.draining.load()) {
    Worker& o = owner(i);
    if (&o == &w) {
      settle(i);
    } else {
      wake(o);
    }
  }
}
// ---- control thread

bool Device::reply(int conn, vu::Request r, const vu::Payload& p) {
  std::byte buf[512];
  auto n = vu::encode_reply(buf, r, p);
  if (!n) return false;
  // Never waits: a front-end that leaves its replies unread until the
  // socket is full is dropped rather than holding the control thread.
  return ::send(conn, buf, *n, MSG_NOSIGNAL | MSG_DONTWAIT) == static_cast<ssize_t>(*n);
}

void Device::maybe_start(unsigned i) {
  Queue& q = *queues_[i];
  bool need_enable = features_ & vu::kFProtocolFeatures;
  if (q.started || !q.kick || !q.addr_set || q.num == 0 || (need_enable && !q.enabled)) return;
  if (!memory_) {
    spdlog::error("{} queue {}: started before the memory table", device().name, i);
    return;
  }
  uint16_t num = static_cast<uint16_t>(q.num);
  auto* desc = reinterpret_cast<virtio::Desc*>(memory_->mem.translate_uva(q.addr.desc_user_addr, 16u * num));
  auto* avail = memory_->mem.translate_uva(q.addr.avail_user_addr, virtio::SplitQueue::avail_size(num));
  auto* used = memory_->mem.translate_uva(q.addr.used_user_addr, virtio::SplitQueue::used_size(num));
  if (!desc || !avail || !used) {
    spdlog::error("{} queue {}: ring addresses are outside guest memory", device().name, i);
    return;
  }
  virtio::SplitQueue::Layout layout{desc, avail, used};
  if (!virtio::SplitQueue::aligned(layout)) {
    spdlog::error("{} queue {}: ring addresses are not aligned as virtio requires", device().name, i);
    return;
  }
  // The queue is stopped, so no worker reads these now; the post publishes them.
  q.split = virtio::SplitQueue(layout, num, features_ & vu::kFRingEventIdx, q.base);
  q.memory = memory_;
  q.server = server_;
  q.chains = chains_;
  q.quiet_descs = 0;
  q.kick_fd = q.kick.get();
  {
    std::lock_guard g(q.used_mu);
    q.call_fd = q.call;
  }
  post(owner(i), [this, i, w = &owner(i)] { return cmd_start(*w, i); });
  q.started = true;
}

void Device::stop_queue(unsigned i) {
  Queue& q = *queues_[i];
  if (!q.started) return;
  uint16_t last = 0;
  post(owner(i), [this, i, w = &owner(i), &last] { return cmd_stop(*w, i, &last); });
  q.base = last;
  q.started = false;
}

void Device::reset() {
  for (unsigned i = 0; i < queues_.size(); i++) stop_queue(i);
  for (auto& q : queues_) {  // in place: a worker may still look at a queue it just finished
    q->kick.reset();
    q->call.reset();
    q->num = 0;
    q->addr = {};
    q->addr_set = false;
    q->base = 0;
    q->enabled = false;
    q->split = {};
    q->memory.reset();
    q->server.reset();
    q->chains.reset();
  }
  memory_.reset();
  call_stalled = false;
  post(*workers_[0], [this] { return cmd_new_server(); });
  regions_.clear();
  region_fds_.clear();
  features_ = protocol_features_ = 0;
}

bool Device::handle(int conn, const vu::Message& m, std::vector<Fd>& fds) {
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

Device::Outcome Device::device_request(int conn, const vu::Message& m) {
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
bool Device::remap() {
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
  memory_ = *map;
  return true;
}

// A running queue's rings were translated through the current mapping, and
// its requests in flight point into it: stop the running queues (draining
// them), change the mapping, and start them again on the new one. A table
// that is refused or cannot be mapped drops the front-end.
Device::Outcome Device::memory_request(const vu::Message& m,
                                                                           std::vector<Fd>& fds) {
  std::vector<unsigned> running;
  for (unsigned i = 0; i < queues_.size(); i++) {
    if (!queues_[i]->started) continue;
    stop_queue(i);
    running.push_back(i);
  }
  Outcome o = change_memory(m, fds);
  if (o.drop) return o;
  for (unsigned i : running) maybe_start(i);
  return o;
}

Device::Outcome Device::change_memory(const vu::Message& m,
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
      if (regions_.empty()) memory_.reset();
      o.drop = !regions_.empty() && !remap();
      o.ok = !o.drop;
      break;
    }
  }
  return o;
}

Device::Queue* Device::queue_of(const vu::Message& m, uint32_t index) {
  if (index < queues_.size()) return queues_[index].get();
  spdlog::warn("vhost-user {}: queue index {} out of range", request_name(static_cast<uint32_t>(m.request)), index);
  return nullptr;
}

Device::Outcome Device::vring_state_request(int conn, const vu::Message& m) {
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
      if (chains_ && std::none_of(queues_.begin(), queues_.end(), [](auto& x) { return x->started; }))
        post(*workers_[0], [this] { return cmd_device_stopped(); });
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

Device::Outcome Device::vring_file_request(const vu::Message& m, std::vector<Fd>& fds) {
  using R = vu::Request;
  Outcome o;
  auto f = std::get<vu::VringFile>(m.payload);
  const char* what = m.request == R::SetVringKick ? "kick" : m.request == R::SetVringCall ? "call" : "error";
  if (f.has_fd && !is_eventfd(fds[0].get())) {
    spdlog::error("{}: the front-end's {} fd for queue {} is not an eventfd; disconnecting", device().name, what,
                  f.index);
    o.ok = false;
    o.drop = true;
    return o;
  }
  if (m.request == R::SetVringErr) return o;  // its fd (if any) closes here; errors are logged instead
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
  // SET_VRING_CALL. Signalled without waiting (see signal_call).
  std::shared_ptr<const Fd> fresh;
  if (f.has_fd) {
    int flags = ::fcntl(fds[0].get(), F_GETFL);
    if (flags < 0 || ::fcntl(fds[0].get(), F_SETFL, flags | O_NONBLOCK) < 0) {
      spdlog::error("{}: cannot make the call fd of queue {} non-blocking: {}", device().name, f.index,
                    std::strerror(errno));
      o.ok = false;
      return o;
    }
    fresh = std::make_shared<const Fd>(std::move(fds[0]));
  }
  if (q->started) {
    std::lock_guard g(q->used_mu);
    q->call_fd = fresh;
  }
  q->call = std::move(fresh);
  return o;
}

}  // namespace vhost_detail

// ---- VhostWorkerPool

VhostWorkerPool::VhostWorkerPool(unsigned workers, Ring::MetadataIo metadata_io)
    : size_(std::max(1u, workers)), metadata_io_(metadata_io) {}

const std::vector<std::unique_ptr<vhost_detail::Worker>>& VhostWorkerPool::start() {
  std::call_once(started_, [this] {
    install_interrupt_handler();
    for (unsigned i = 0; i < size_; i++) workers_.push_back(std::make_unique<vhost_detail::Worker>(i, metadata_io_));
    for (auto& w : workers_) w->thread = std::thread([w = w.get()] { vhost_detail::worker_main(*w); });
    watchdog_ = std::thread([this] { watchdog(); });
  });
  return workers_;
}

void VhostWorkerPool::watchdog() {
  constexpr auto kPeriod = std::chrono::milliseconds(50);
  constexpr int64_t kPatienceNs = 100'000'000;  // far beyond any write to a live eventfd
  std::unique_lock lock(watch_mu_);
  while (!watch_cv_.wait_for(lock, kPeriod, [this] { return watch_exit_; })) {
    int64_t now = now_ns();
    for (auto& w : workers_) {
      int64_t since = w->signalling_since.load(std::memory_order_relaxed);
      if (since != 0 && now - since > kPatienceNs) ::pthread_kill(w->thread.native_handle(), interrupt_signal());
    }
  }
}

VhostWorkerPool::~VhostWorkerPool() {
  if (watchdog_.joinable()) {
    {
      std::lock_guard g(watch_mu_);
      watch_exit_ = true;
    }
    watch_cv_.notify_all();
    watchdog_.join();
  }
  for (auto& w : workers_) vhost_detail::post(*w, [w = w.get()] { return vhost_detail::cmd_exit(*w); });
  for (auto& w : workers_) w->thread.join();
}

// ---- VhostUserBackend

VhostUserBackend::VhostUserBackend(std::string socket_path, DeviceServers servers, VhostUserOptions options)
    : socket_path_(std::move(socket_path)), servers_(std::move(servers)), options_(std::move(options)) {
  try {
    listen_fd_ = listen_unix(socket_path_, options_.socket_access, 1);
    socket_file_ = SocketFile(socket_path_);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(options_.device.name + " socket " + socket_path_ + ": " + e.what());
  }
}

VhostUserBackend::VhostUserBackend(Fd listening, DeviceServers servers, VhostUserOptions options)
    : servers_(std::move(servers)), options_(std::move(options)), listen_fd_(std::move(listening)) {}

VhostUserBackend::~VhostUserBackend() { stop(); }

void VhostUserBackend::start() {
  stop_fd_.reset(::eventfd(0, EFD_CLOEXEC));
  device_ = std::make_unique<vhost_detail::Device>(servers_, options_);
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
