// The vhost-user back-end's data plane: worker threads, queue loops, and
// chains from their pop to their push.
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "fsd/vhost/device.h"

namespace fsd {
namespace vhost_detail {

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

// On the chain device's worker, which owns every queue of the device.
void Device::io_done(unsigned i) {
  Queue& q = *queues_[i];
  if (q.inflight.fetch_sub(1) == 1 && q.draining.load()) settle(i);
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

}  // namespace vhost_detail
}  // namespace fsd
