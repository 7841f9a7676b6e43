// The vhost-user back-end's insides, shared by its three parts: the
// workers and the data plane (data_plane.cpp), the front-end's messages
// (control.cpp), and the pool and socket loop (backend.cpp). Not for use
// outside fsd/vhost: backend.h is the interface.
#pragma once

#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

#include "fsd/uring/ring.h"
#include "fsd/vhost/backend.h"
#include "fsd/vhost/guest_memory.h"
#include "protocol/vhost_user/message.h"
#include "protocol/virtio/virtqueue.h"

namespace fsd {
namespace vu = vhost_user;


inline constexpr uint64_t kFeatures = vu::kFVersion1 | vu::kFRingIndirectDesc | vu::kFRingEventIdx | vu::kFProtocolFeatures;
inline constexpr uint64_t kProtocolFeatures = vu::kPfMq | vu::kPfReplyAck | vu::kPfConfigureMemSlots;
inline constexpr uint64_t kMaxMemSlots = 32;
// Queues polling at once in this process, over every device. Each poller
// spins a CPU; with many front-ends (guests) on one fsd, unbounded polling
// would have more spinning workers than CPUs, each taking CPU time from the
// workers with requests (and from the vCPUs). Past the limit, a queue
// sleeps until kicked at once.
inline std::atomic<unsigned> g_pollers{0};
inline unsigned max_pollers() {
  static const unsigned n = std::max(1u, std::thread::hardware_concurrency() / 2);
  return n;
}
inline bool take_poll_slot() {
  unsigned now = g_pollers.load(std::memory_order_relaxed);
  while (now < max_pollers())
    if (g_pollers.compare_exchange_weak(now, now + 1, std::memory_order_relaxed)) return true;
  return false;
}

// The signal that interrupts a worker stuck writing to a call eventfd (see
// VhostWorkerPool::watchdog). Its handler does nothing: installed without
// SA_RESTART, it makes the write fail with EINTR.
inline int interrupt_signal() { return SIGRTMIN; }
inline void install_interrupt_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa{};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    ::sigaction(interrupt_signal(), &sa, nullptr);
  });
}
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A request's name for logs, "unknown" for numbers the codec does not know.
inline const char* request_name(uint32_t request) {
  const char* name = vu::request_name(request);
  return name ? name : "unknown";
}

namespace vhost_detail {

using vhost::check_regions;
using vhost::is_eventfd;
using vhost::map_regions;
using vhost::MemoryMap;

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

inline void wake(Worker& w) {
  uint64_t one = 1;
  (void)!::write(w.inbox_fd.get(), &one, sizeof one);
}

// Runs `fn` on worker `w` and waits for it.
inline void post(Worker& w, std::function<Task<void>()> fn) {
  std::promise<void> done;
  auto fut = done.get_future();
  {
    std::lock_guard g(w.mu);
    w.commands.push_back({std::move(fn), &done});
  }
  wake(w);
  fut.wait();
}

inline Task<void> run_command(Command c) {
  co_await c.fn();
  c.done->set_value();
}
inline Task<void> cmd_exit(Worker& w) {
  w.exit = true;
  co_return;
}
inline Task<void> cmd_own(Worker& w, Device* d, std::vector<unsigned> queues) {
  for (unsigned q : queues) w.owned.push_back({d, q});
  co_return;
}
inline Task<void> cmd_disown(Worker& w, Device* d) {
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
  // Counted with the queue's chains in flight: its stop waits for them.
  void io_started(unsigned queue) override { queues_[queue]->inflight++; }
  void io_done(unsigned queue) override;

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

}  // namespace vhost_detail
}  // namespace fsd
