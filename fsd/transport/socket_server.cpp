#include "fsd/transport/socket_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <malloc.h>
#include <sys/un.h>
#include <unistd.h>

#include <poll.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_set>

namespace fsd {

namespace {

constexpr uint32_t kLengthPrefix = 4;

// Gives the allocator's free memory back to the system. glibc's malloc_trim
// walks glibc's own heaps, which do not exist under AddressSanitizer (its
// allocator replaces malloc): there it would crash, and is not needed.
void release_memory() {
#ifndef __SANITIZE_ADDRESS__
  ::malloc_trim(0);
#endif
}
// Back-pressure per connection: no new frame is taken while this many
// requests are being handled, or while the replies queued for sending (the
// client is not reading them) pass the byte budget, which is the larger of
// kReplyBudget and two frames.
constexpr size_t kMaxInFlight = 32;
constexpr size_t kReplyBudget = 4 << 20;

uint32_t le32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // x86 and other little-endian hosts
}

}  // namespace

// ---- Connection

class SocketServer::Connection : public ReplySink, public std::enable_shared_from_this<Connection> {
 public:
  Connection(Worker& w, Fd fd, uint64_t id, const Peer& peer, std::string peer_key);
  ~Connection() override;

  Task<void> run();
  void close();
  // Closes the connection if it broke a time rule (see Timeouts).
  void check_time(std::chrono::steady_clock::time_point now);

  // ReplySink
  Buffer buffer(size_t capacity) override { return pool_.get(capacity); }
  void reply(Buffer frame) override;
  void recycle(Buffer frame) override { pool_.put(std::move(frame)); }
  void protocol_error(std::string_view why) override;

 private:
  Task<void> request(Buffer frame);
  Task<void> sender();
  bool over_limit() const {
    return in_flight_ >= kMaxInFlight || queued_ >= std::max<size_t>(kReplyBudget, 2 * size_t{session_->max_frame()});
  }
  // Lets a reader waiting for room go on, once there is room (or the end).
  void wake() {
    if (room_ && (closed_ || !over_limit())) std::exchange(room_, nullptr)->set();
  }

  Worker& worker_;
  Fd fd_;
  uint64_t id_;
  BufferPool pool_;
  std::unique_ptr<StreamSession> session_;
  std::deque<Buffer> sendq_;
  bool sending_ = false;
  bool closed_ = false;
  size_t in_flight_ = 0;   // requests being handled
  size_t queued_ = 0;      // bytes of replies not sent yet
  Event* room_ = nullptr;  // the reader, waiting for room
  std::string peer_key_;   // its peer's share of the connections (SocketServer::peers_)
  // For the time rules: when the frame being received began (or the
  // connection, before its first frame); none while between frames. And
  // when it last received or sent anything.
  std::optional<std::chrono::steady_clock::time_point> frame_since_;
  std::chrono::steady_clock::time_point active_;
};

// ---- Worker

class SocketServer::Worker {
 public:
  Worker(SocketServer& server, unsigned index) : server(server), index(index) {
    ring.set_metadata_io(server.metadata_io_);
    wake_fd.reset(::eventfd(0, EFD_CLOEXEC));
    if (!wake_fd) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
  }

  void start() { thread = std::thread([this] { loop(); }); }
  void request_stop() {
    uint64_t one = 1;
    (void)!::write(wake_fd.get(), &one, sizeof one);
  }
  void join() {
    if (thread.joinable()) thread.join();
  }

  SocketServer& server;
  unsigned index;
  Ring ring{512};
  Fd wake_fd;
  std::thread thread;
  std::unordered_set<Connection*> connections;
  unsigned accepts_running = 0;
  bool time_rules_running = false;
  bool stopping = false;
  bool stop_done = false;
  bool trim_pending = false;  // the last connection has just closed
  uint64_t next_id = 0;
  std::atomic<uint64_t> accepted{0}, dropped{0}, refused{0};

  // A connection looking for its next request without a ring wait (see
  // Connection::run); the worker's loop ends the wait.
  struct PollWait {
    int fd;
    std::chrono::steady_clock::time_point until;
    Event done;
    bool readable = false;
  };
  std::vector<PollWait*> polling;
  std::vector<pollfd> poll_fds;     // poll_connections()' scratch
  std::vector<PollWait*> poll_wake;

 private:
  Task<void> accept_loop(int listen_fd, const ListenAddress& where) {
    accepts_running++;
    // Out of fds (or memory), the connection waits in the backlog: retrying
    // at once would spin, so wait a little, until a close frees an fd.
    static constexpr __kernel_timespec kBackoff{0, 100'000'000};
    while (!stopping) {
      int fd = co_await ring.accept(listen_fd);
      if (fd == -EINTR || fd == -ECONNABORTED) continue;
      if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM) {
        if (server.may_warn()) spdlog::warn("accept: {}; retrying every 100 ms", std::strerror(-fd));
        co_await ring.sleep(kBackoff);
        continue;
      }
      if (fd < 0) break;  // the listener was shut down
      Fd conn(fd);
      if (stopping) break;
      if (server.open_connections_.load() >= server.max_connections_) {
        refused++;
        if (server.may_warn())
          spdlog::warn("refusing a connection: {} are open (--max-connections)", server.max_connections_);
        continue;  // closed: the client sees its end at once
      }
      std::string key = peer_key(conn.get());
      if (!server.take_peer_slot(key)) {
        refused++;
        if (server.may_warn())
          spdlog::warn("refusing a connection: {} has {} open, its share of --max-connections", key,
                       server.peer_share());
        continue;
      }
      int one = 1;
      ::setsockopt(conn.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on unix
      accepted++;
      Peer peer = peer_of(conn.get(), where);
      auto c = std::make_shared<Connection>(*this, std::move(conn), (uint64_t{index} << 48) | next_id++, peer,
                                            std::move(key));
      spawn(c->run());
    }
    accepts_running--;
  }

  // Stops: closes every connection, gives requests in flight up to half a
  // second to finish, then cancels what still waits (a read from a FIFO
  // that no one writes, say), so that a stop never hangs.
  Task<void> wait_stop() {
    uint64_t v;
    co_await ring.read(wake_fd.get(), &v, sizeof v, 0);
    stopping = true;
    {
      // Closing may end a connection's coroutines, and so the connection:
      // hold each while closing them all.
      std::vector<std::shared_ptr<Connection>> all;
      for (Connection* c : connections) all.push_back(c->shared_from_this());
      for (auto& c : all) c->close();
    }
    static constexpr __kernel_timespec kTick{0, 50'000'000};
    for (int i = 0; i < 10 && !connections.empty(); i++) co_await ring.sleep(kTick);
    if (!connections.empty()) {
      spdlog::warn("{} connection(s) still busy after 0.5 s: cancelling their requests", connections.size());
      co_await ring.cancel_all();
    }
    stop_done = true;
  }

  // Five times a second: closes the connections that broke a time rule.
  // The worker's loop waits for it to see the stop (a tick at most).
  Task<void> time_rules() {
    static constexpr __kernel_timespec kTick{0, 200'000'000};
    while (!stopping) {
      co_await ring.sleep(kTick);
      auto now = std::chrono::steady_clock::now();
      std::vector<std::shared_ptr<Connection>> all;
      for (Connection* c : connections) all.push_back(c->shared_from_this());
      for (auto& c : all) c->check_time(now);
    }
    time_rules_running = false;
  }

  void loop() {
    for (size_t i = 0; i < server.listeners_.size(); i++)
      spawn(accept_loop(server.listeners_[i].get(), server.bound_[i]));
    spawn(wait_stop());
    if (server.timeouts_.frame.count() || server.timeouts_.idle.count()) {
      time_rules_running = true;
      spawn(time_rules());
    }
    while (!stop_done || accepts_running > 0 || !connections.empty() || time_rules_running) {
      ring.run_once(polling.empty());
      if (!polling.empty()) poll_connections();
      // A client's fids and buffers are many small allocations that the
      // allocator keeps for reuse; once this worker has no client, give
      // them back to the system.
      if (trim_pending && connections.empty()) release_memory();
      trim_pending = false;
    }
  }

  // One non-blocking poll() over every polling connection: wakes those that
  // became readable (or hung up) and those whose time ran out.
  // It runs in a spin, so its vectors are reused rather than allocated.
  void poll_connections() {
    auto& fds = poll_fds;
    auto& wake = poll_wake;
    fds.clear();
    wake.clear();
    for (auto* w : polling) fds.push_back({w->fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), 0) < 0) fds.assign(fds.size(), pollfd{-1, 0, POLLERR});
    auto now = std::chrono::steady_clock::now();
    size_t keep = 0;
    for (size_t i = 0; i < polling.size(); i++) {
      PollWait* w = polling[i];
      w->readable = fds[i].revents != 0;
      if (w->readable || stopping || now >= w->until) {
        wake.push_back(w);
      } else {
        polling[keep++] = w;
      }
    }
    polling.resize(keep);
    for (auto* w : wake) w->done.set();
  }
};

SocketServer::Connection::Connection(Worker& w, Fd fd, uint64_t id, const Peer& peer, std::string peer_key)
    : worker_(w), fd_(std::move(fd)), id_(id), session_(w.server.sessions_(w.ring, *this, peer)),
      peer_key_(std::move(peer_key)), frame_since_(std::chrono::steady_clock::now()),
      active_(*frame_since_) {
  worker_.connections.insert(this);
  worker_.server.open_connections_++;
  spdlog::debug("connection {:x}: open", id_);
}

SocketServer::Connection::~Connection() {
  worker_.connections.erase(this);
  worker_.server.open_connections_--;
  worker_.server.give_peer_slot(peer_key_);
  spdlog::debug("connection {:x}: closed", id_);
  if (worker_.connections.empty()) worker_.trim_pending = true;
}

void SocketServer::Connection::close() {
  if (closed_) return;
  closed_ = true;
  ::shutdown(fd_.get(), SHUT_RDWR);  // ends the pending recv
  wake();
}

// The time rules: a frame must arrive whole within Timeouts::frame of its
// first byte (and the first frame within that of the connection), so that
// connections that never finish one cannot pile up; and a connection that
// holds nothing (no fid: it never attached, or clunked everything) is
// closed once idle past Timeouts::idle. A mount holds its root fid, so an
// idle mount is never closed.
void SocketServer::Connection::check_time(std::chrono::steady_clock::time_point now) {
  if (closed_) return;
  const Timeouts& t = worker_.server.timeouts_;
  if (t.frame.count() && frame_since_ && now - *frame_since_ > t.frame) {
    spdlog::warn("connection {:x} ({}): no whole frame within {} s; closing it", id_, peer_key_, t.frame.count());
    worker_.dropped++;
    close();
  } else if (t.idle.count() && !frame_since_ && in_flight_ == 0 && sendq_.empty() && !session_->holds_state() &&
             now - active_ > t.idle) {
    spdlog::info("connection {:x} ({}): idle for {} s, holding nothing; closing it", id_, peer_key_, t.idle.count());
    close();
  }
}

void SocketServer::Connection::protocol_error(std::string_view why) {
  if (!closed_) {
    spdlog::warn("connection {:x}: {}; dropping it", id_, why);
    worker_.dropped++;
  }
  close();
}

Task<void> SocketServer::Connection::request(Buffer frame) {
  auto self = shared_from_this();
  Ring::Active active(worker_.ring);
  in_flight_++;
  co_await session_->handle(std::move(frame));
  in_flight_--;
  wake();
}

Task<void> SocketServer::Connection::run() {
  auto self = shared_from_this();
  Buffer rx(64 * 1024);
  size_t have = 0;
  bool busy = false;  // a request came in just now: the next one likely follows
  while (!closed_) {
    int n = -EAGAIN;
    if (busy && worker_.server.poll_us_) {
      // Look for the next request for a while before waiting on the ring:
      // it saves this thread a wake-up per request on a busy connection.
      Worker::PollWait w{fd_.get(), std::chrono::steady_clock::now() + std::chrono::microseconds(worker_.server.poll_us_)};
      worker_.polling.push_back(&w);
      co_await w.done.wait();
      if (w.readable && !closed_) {
        ssize_t got = ::recv(fd_.get(), rx.data() + have, rx.capacity() - have, MSG_DONTWAIT);
        n = got >= 0 ? static_cast<int>(got) : -errno;
      }
    }
    if (n == -EAGAIN || n == -EWOULDBLOCK)
      n = co_await worker_.ring.recv(fd_.get(), rx.data() + have, static_cast<unsigned>(rx.capacity() - have));
    busy = n > 0;
    if (n <= 0) {
      if (n < 0 && n != -ECONNRESET && !closed_) spdlog::debug("connection {:x}: recv: {}", id_, std::strerror(-n));
      break;
    }
    active_ = std::chrono::steady_clock::now();
    if (have == 0 && !frame_since_) frame_since_ = active_;  // a new frame begins
    have += static_cast<size_t>(n);
    size_t off = 0;
    while (!closed_ && have - off >= 4) {
      uint32_t size = le32(rx.data() + off);
      uint32_t max = session_->max_frame();
      if (size < kLengthPrefix || size > max) {
        protocol_error(size < kLengthPrefix ? "frame shorter than its length prefix"
                                            : "frame of " + std::to_string(size) + " bytes exceeds msize " +
                                                  std::to_string(max));
        break;
      }
      if (have - off < size) break;
      while (!closed_ && over_limit()) {  // back-pressure: read no more until there is room
        Event room;
        room_ = &room;
        co_await room.wait();
      }
      if (closed_) break;
      Buffer frame;
      if (off == 0 && size == have && size > BufferPool::kSmall) {
        // The buffer holds exactly one large frame (a big Twrite): hand it
        // over instead of copying it, and receive into a fresh one.
        frame = std::move(rx);
        rx = pool_.get(64 * 1024);
      } else {
        frame = pool_.get(size);
        std::memcpy(frame.data(), rx.data() + off, size);
      }
      frame.set_size(size);
      off += size;
      spawn(request(std::move(frame)));
    }
    if (off > 0) {
      std::memmove(rx.data(), rx.data() + off, have - off);
      have -= off;
      // Between frames, or the next one's first bytes came with this batch.
      frame_since_.reset();
      if (have > 0) frame_since_ = active_;
    }
    // Make room for the whole of a partly received large frame.
    if (have >= 4) {
      uint32_t size = le32(rx.data());
      if (size > rx.capacity() && size <= session_->max_frame()) {
        Buffer bigger(size);
        std::memcpy(bigger.data(), rx.data(), have);
        rx = std::move(bigger);
      }
    }
  }
  close();
}

void SocketServer::Connection::reply(Buffer frame) {
  if (closed_) {
    pool_.put(std::move(frame));
    return;
  }
  if (pool_.large() != session_->max_frame()) pool_.set_large(session_->max_frame());
  queued_ += frame.size();
  sendq_.push_back(std::move(frame));
  if (!sending_) {
    sending_ = true;
    spawn(sender());
  }
}

Task<void> SocketServer::Connection::sender() {
  auto self = shared_from_this();
  while (!sendq_.empty() && !closed_) {
    Buffer b = std::move(sendq_.front());
    sendq_.pop_front();
    size_t off = 0;
    while (off < b.size()) {
      int n = co_await worker_.ring.send(fd_.get(), b.data() + off, static_cast<unsigned>(b.size() - off));
      if (n <= 0) {
        close();
        break;
      }
      off += static_cast<size_t>(n);
    }
    queued_ -= b.size();
    pool_.put(std::move(b));
    wake();
  }
  sendq_.clear();
  queued_ = 0;
  sending_ = false;
  wake();
}

// ---- SocketServer

SocketServer::SocketServer(StreamSessionFactory sessions, unsigned threads, Ring::MetadataIo metadata_io,
                           unsigned poll_us, unsigned max_connections)
    : sessions_(std::move(sessions)),
      max_connections_(max_connections ? max_connections : kDefaultMaxConnections),
      threads_(threads ? threads : 1),
      poll_us_(poll_us),
      metadata_io_(metadata_io) {}

unsigned SocketServer::peer_share() const {
  return per_peer_ ? per_peer_ : std::max(1u, max_connections_ - max_connections_ / 4);
}

bool SocketServer::take_peer_slot(const std::string& key) {
  std::lock_guard g(peers_mu_);
  unsigned& n = peers_[key];
  if (n >= peer_share()) return false;
  n++;
  return true;
}

void SocketServer::give_peer_slot(const std::string& key) {
  std::lock_guard g(peers_mu_);
  if (auto it = peers_.find(key); it != peers_.end() && --it->second == 0) peers_.erase(it);
}

bool SocketServer::may_warn() {
  int64_t now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  int64_t last = last_warning_.load();
  return now > last && last_warning_.compare_exchange_strong(last, now);
}

SocketServer::~SocketServer() { stop(); }

void SocketServer::listen(const ListenAddress& addr, const SocketAccess& access) {
  ListenAddress a = addr;
  listeners_.push_back(bind_listener(a, access));
  if (a.kind == ListenAddress::Kind::kUnix) files_.emplace_back(a.path);
  bound_.push_back(a);
}

void SocketServer::adopt(Fd listening, const ListenAddress& addr) {
  ListenAddress a = addr;
  int listens = 0, type = 0;
  socklen_t len = sizeof listens;
  sockaddr_storage ss{};
  socklen_t sslen = sizeof ss;
  if (::getsockopt(listening.get(), SOL_SOCKET, SO_ACCEPTCONN, &listens, &len) != 0 || !listens ||
      ::getsockopt(listening.get(), SOL_SOCKET, SO_TYPE, &type, &(len = sizeof type)) != 0 || type != SOCK_STREAM ||
      ::getsockname(listening.get(), reinterpret_cast<sockaddr*>(&ss), &sslen) != 0)
    throw std::runtime_error(a.to_string() + ": not a listening stream socket");
  a.kind = ss.ss_family == AF_UNIX ? ListenAddress::Kind::kUnix : ListenAddress::Kind::kTcp;
  ::fcntl(listening.get(), F_SETFD, FD_CLOEXEC);
  listeners_.push_back(std::move(listening));
  bound_.push_back(a);  // the socket file, if any, is its owner's (systemd's) to remove
}

void SocketServer::start() {
  for (unsigned i = 0; i < threads_; i++) workers_.push_back(std::make_unique<Worker>(*this, i));
  for (auto& w : workers_) w->start();
}

void SocketServer::stop() {
  if (stopped_) return;
  stopped_ = true;
  for (auto& l : listeners_) ::shutdown(l.get(), SHUT_RDWR);  // completes pending accepts
  for (auto& w : workers_) w->request_stop();
  for (auto& w : workers_) w->join();
  listeners_.clear();
  for (auto& f : files_) f.remove();
}

SocketServerStats SocketServer::stats() const {
  SocketServerStats s;
  for (const auto& w : workers_) {
    s.connections_accepted += w->accepted;
    s.connections_dropped += w->dropped;
    s.connections_refused += w->refused;
  }
  return s;
}

}  // namespace fsd
