// The vhost-user back-end's outside: the worker pool, and the socket loop
// that takes one front-end at a time and hands its messages to the device.
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
#include "fsd/vhost/device.h"
#include "fsd/vhost/guest_memory.h"
#include "protocol/vhost_user/message.h"
#include "protocol/virtio/virtqueue.h"

namespace fsd {

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
