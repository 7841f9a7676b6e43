// A vhost-user device served by several workers: chains of one busy queue
// spread over the workers, every chain comes back exactly once with its own
// reply, cheap requests stay on the queue's owner, and stopping a queue
// (GET_VRING_BASE) waits for the chains other workers still run.
//
// In-process, with a MessageServer that echoes its request after a pause,
// so the test controls how long a request takes, and records which thread
// ran it.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "fsd/client/vhost_frontend.h"
#include "fsd/vhost/backend.h"
#include "fsd/uring/ring.h"
#include "tests/support/test_support.h"

namespace fsd::testing {
namespace {

using frontend::VhostFrontend;
namespace vu = vhost_user;

// Copies the request into the reply after sleeping `pause_us` on the ring.
class SlowEcho : public MessageServer {
 public:
  explicit SlowEcho(unsigned pause_us) : pause_{0, static_cast<long long>(pause_us) * 1000} {}

  Task<Result<size_t>> handle(Ring& ring, const RequestBytes& in, std::span<const iovec> out) override {
    {
      std::lock_guard g(mu_);
      threads_.insert(std::this_thread::get_id());
    }
    if (pause_.tv_nsec) co_await ring.sleep(pause_);
    if (out.empty() || in.size() > out[0].iov_len) co_return Error{-EBADMSG};
    size_t n = in.copy_to(0, {static_cast<std::byte*>(out[0].iov_base), in.size()});
    handled_++;
    co_return n;
  }
  size_t threads() const {
    std::lock_guard g(mu_);
    return threads_.size();
  }
  std::set<std::thread::id> thread_ids() const {
    std::lock_guard g(mu_);
    return threads_;
  }
  unsigned handled() const { return handled_; }

 private:
  __kernel_timespec pause_;
  mutable std::mutex mu_;
  std::set<std::thread::id> threads_;
  std::atomic<unsigned> handled_{0};
};

struct Device {
  Device(unsigned workers, unsigned pause_us, unsigned queues = 2, unsigned handoff_ns = 20'000,
         std::shared_ptr<VhostWorkerPool> pool = nullptr, unsigned poll_us = 0)
      : server(std::make_shared<SlowEcho>(pause_us)) {
    VhostUserOptions o;
    o.pool = std::move(pool);
    o.handoff_ns = handoff_ns;
    o.device = {.name = "test device", .queues = queues, .workers = workers};
    o.poll_us = poll_us;
    backend = std::make_unique<VhostUserBackend>((tmp.path() / "dev.sock").string(),
                                                 [s = server](Ring&) -> std::shared_ptr<MessageServer> { return s; }, o);
    backend->start();
  }
  ~Device() { backend->stop(); }

  TempDir tmp;
  std::shared_ptr<SlowEcho> server;
  std::unique_ptr<VhostUserBackend> backend;
};

// Publishes `n` chains on queue 1 at once (one kick), each a 16-byte
// request naming its number and a 64-byte reply buffer; returns their heads.
struct Burst {
  std::vector<uint16_t> heads;
  std::vector<uint64_t> replies;
};
Burst publish_burst(VhostFrontend& f, unsigned n, unsigned q = 1) {
  Burst b;
  for (unsigned i = 0; i < n; i++) {
    uint64_t in = f.alloc(16), out = f.alloc(64);
    std::memset(f.host(in), 0, 16);
    std::memcpy(f.host(in), &i, sizeof i);
    VhostFrontend::Buf chain[] = {{in, 16, false}, {out, 64, true}};
    b.heads.push_back(f.add_chain(q, chain));
    b.replies.push_back(out);
    f.publish(q, b.heads.back());
  }
  f.kick(q);
  return b;
}

// Waits for every chain of the burst: each comes back once, with 16 bytes
// that echo its own request.
void expect_all_back(VhostFrontend& f, const Burst& b, unsigned q = 1) {
  std::set<uint16_t> seen;
  for (size_t k = 0; k < b.heads.size(); k++) {
    auto u = f.wait_used(q);
    ASSERT_TRUE(u.ok()) << "chain " << k << " of " << b.heads.size() << " never came back";
    EXPECT_TRUE(seen.insert(static_cast<uint16_t>(u->id)).second) << "head " << u->id << " returned twice";
    EXPECT_EQ(u->len, 16u);
    auto at = std::find(b.heads.begin(), b.heads.end(), u->id);
    ASSERT_NE(at, b.heads.end());
    unsigned index = static_cast<unsigned>(at - b.heads.begin()), echoed = ~0u;
    std::memcpy(&echoed, f.host(b.replies[index]), sizeof echoed);
    EXPECT_EQ(echoed, index);
  }
}

std::unique_ptr<VhostFrontend> connect(Device& d, unsigned queues = 2) {
  auto f = VhostFrontend::connect(d.backend->socket_path(), VhostFrontend::Options{.memory = 16 << 20, .queues = queues});
  EXPECT_TRUE(f.ok());
  if (!f) return nullptr;
  EXPECT_TRUE((*f)->negotiate().ok());
  return std::move(*f);
}

TEST(VhostWorkers, SlowRequestsOfOneQueueRunOnEveryWorker) {
  Device d(3, 2000);
  auto f = connect(d);
  ASSERT_TRUE(f);
  // The first bursts teach the queue that its requests are slow; later
  // bursts spread over the workers.
  for (int round = 0; round < 6; round++) expect_all_back(*f, publish_burst(*f, 24));
  EXPECT_EQ(d.server->handled(), 6u * 24);
  EXPECT_EQ(d.server->threads(), 3u);
  EXPECT_EQ(d.backend->stats().bad_chains, 0u);
}

// Cheap: well under the hand-over threshold (10 ms here, so that a loaded
// or sanitized machine's hiccups do not make them look slow).
TEST(VhostWorkers, CheapRequestsStayOnTheQueuesOwner) {
  Device d(3, 0, 2, 10'000'000);
  auto f = connect(d);
  ASSERT_TRUE(f);
  for (int round = 0; round < 6; round++) expect_all_back(*f, publish_burst(*f, 24));
  EXPECT_EQ(d.server->threads(), 1u);
}

TEST(VhostWorkers, OneWorkerRunsEverything) {
  Device d(1, 2000);
  auto f = connect(d);
  ASSERT_TRUE(f);
  for (int round = 0; round < 3; round++) expect_all_back(*f, publish_burst(*f, 16));
  EXPECT_EQ(d.server->threads(), 1u);
}

// A multiqueue front-end (num-request-queues=3 on a device offering 4):
// every request queue is served, each by its own worker first.
TEST(VhostWorkers, EveryRequestQueueIsServed) {
  Device d(2, 0, 5, 10'000'000);
  auto f = connect(d, 4);
  ASSERT_TRUE(f);
  for (unsigned q = 1; q <= 3; q++) expect_all_back(*f, publish_burst(*f, 8, q), q);
  EXPECT_EQ(d.server->handled(), 24u);
  EXPECT_EQ(d.server->threads(), 2u);  // queues 1 and 3 on one worker, 2 on the other
}

// Bursts on three queues at once, collected as a multiqueue driver (and the
// harness) does, from whichever queue answers first: each chain comes back
// once, on the queue it went out on.
TEST(VhostWorkers, RepliesOnSeveralQueuesAreCollectedTogether) {
  Device d(2, 200, 5);
  auto f = connect(d, 4);
  ASSERT_TRUE(f);
  std::map<unsigned, Burst> bursts;
  for (unsigned q = 1; q <= 3; q++) bursts[q] = publish_burst(*f, 6, q);
  std::map<unsigned, std::set<uint16_t>> back;
  const unsigned queues[] = {1, 2, 3};
  for (unsigned k = 0; k < 18; k++) {
    auto u = f->wait_used_any(queues);
    ASSERT_TRUE(u.ok()) << "only " << k << " of 18 chains came back";
    const auto& heads = bursts[u->queue].heads;
    EXPECT_NE(std::find(heads.begin(), heads.end(), u->used.id), heads.end()) << "on queue " << u->queue;
    EXPECT_TRUE(back[u->queue].insert(static_cast<uint16_t>(u->used.id)).second);
  }
  for (unsigned q : queues) EXPECT_EQ(back[q].size(), 6u) << "queue " << q;
  EXPECT_FALSE(f->wait_used_any(queues, 50).ok()) << "a chain came back twice";
}

// Devices sharing a pool run on its threads only: each device's queue has
// its own owner, taken in turn from the pool (devices 0 and 2 on one
// worker, 1 on the other); slow requests of one device spread over both;
// and a device that goes leaves the others served. The devices poll (50
// us), so a worker polls queues of two devices at once.
TEST(VhostWorkers, DevicesShareAPoolsThreads) {
  auto pool = std::make_shared<VhostWorkerPool>(2, Ring::MetadataIo::kAdaptive);
  std::vector<std::unique_ptr<Device>> devices;
  std::vector<std::unique_ptr<VhostFrontend>> fronts;
  for (int k = 0; k < 3; k++) {
    devices.push_back(std::make_unique<Device>(2, 0, 2, 20'000, pool, 50));
    fronts.push_back(connect(*devices.back()));
    ASSERT_TRUE(fronts.back());
  }
  for (int round = 0; round < 4; round++)
    for (int k = 0; k < 3; k++) expect_all_back(*fronts[k], publish_burst(*fronts[k], 1));
  std::set<std::thread::id> all;
  for (auto& d : devices) {
    EXPECT_EQ(d->server->handled(), 4u);
    ASSERT_EQ(d->server->threads(), 1u) << "cheap requests left their queue's owner";
    all.merge(d->server->thread_ids());
  }
  EXPECT_EQ(all.size(), 2u) << "three devices on a pool of two threads";
  EXPECT_NE(devices[0]->server->thread_ids(), devices[1]->server->thread_ids());
  EXPECT_EQ(devices[0]->server->thread_ids(), devices[2]->server->thread_ids());

  // Device 1 goes; 0 and 2 are still served, by the same two threads.
  fronts[1].reset();
  devices[1].reset();
  for (int k : {0, 2}) expect_all_back(*fronts[k], publish_burst(*fronts[k], 4));
  EXPECT_EQ(devices[0]->server->handled(), 8u);
  EXPECT_EQ(devices[2]->server->handled(), 8u);

  // Slow requests of one device spread over the pool's two threads.
  auto slow = std::make_unique<Device>(2, 2000, 2, 20'000, pool);
  auto f = connect(*slow);
  ASSERT_TRUE(f);
  for (int round = 0; round < 3; round++) expect_all_back(*f, publish_burst(*f, 8));
  auto used = slow->server->thread_ids();
  EXPECT_EQ(used.size(), 2u);
  for (auto id : used) EXPECT_TRUE(all.count(id)) << "a thread outside the pool served a request";
}

// GET_VRING_BASE stops the queue: its reply comes only after every chain in
// flight, on whichever worker, is back in the used ring, and the base it
// names counts them all.
TEST(VhostWorkers, StoppingAQueueWaitsForEveryWorker) {
  Device d(3, 20000);
  auto f = connect(d);
  ASSERT_TRUE(f);
  for (int round = 0; round < 3; round++) expect_all_back(*f, publish_burst(*f, 12));
  auto b = publish_burst(*f, 30);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // popped and running
  auto base = f->send(vu::Request::GetVringBase, vu::VringState{1, 0}, {}, false, true);
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(std::get<vu::VringState>(base->payload).num, 3u * 12 + 30);
  EXPECT_EQ(d.server->handled(), 3u * 12 + 30);
  expect_all_back(*f, b);
  EXPECT_GE(d.server->threads(), 2u);
}

}  // namespace
}  // namespace fsd::testing
