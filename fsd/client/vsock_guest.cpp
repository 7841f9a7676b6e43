#include "fsd/client/vsock_guest.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>

namespace fsd::frontend {
namespace {

using vsock::kHeaderSize;
using vsock::kRxQueue;
using vsock::kTxQueue;
using Clock = std::chrono::steady_clock;
// Most payload one packet carries (Linux: 64 KiB).
constexpr size_t kMaxPacket = 64 * 1024;

int ms_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<int64_t>(left, 0));
}

}  // namespace

VsockGuest::VsockGuest(VhostFrontend& fe, Options o) : fe_(fe), o_(o) {
  for (unsigned i = 0; i < o_.rx_buffers; i++) rx_free_.push_back(Rx{fe_.alloc(kHeaderSize), fe_.alloc(o_.rx_payload)});
}

void VsockGuest::fill_rx() {
  bool any = false;
  while (!rx_free_.empty()) {
    Rx b = rx_free_.back();
    rx_free_.pop_back();
    VhostFrontend::Buf bufs[] = {{b.header_gpa, static_cast<uint32_t>(kHeaderSize), true},
                                 {b.payload_gpa, o_.rx_payload, true}};
    uint16_t head = fe_.add_chain(kRxQueue, bufs);
    rx_by_head_[head] = b;
    fe_.publish(kRxQueue, head);
    any = true;
  }
  if (any) fe_.kick(kRxQueue);
}

void VsockGuest::reap_tx() {
  while (fe_.poll_used(kTxQueue, 0)) {
  }
}

void VsockGuest::send(vsock::Header h, std::span<const std::byte> payload) {
  reap_tx();
  h.len = static_cast<uint32_t>(payload.size());
  uint64_t hg = fe_.alloc(kHeaderSize);
  std::array<std::byte, kHeaderSize> raw;
  vsock::encode(h, raw);
  std::memcpy(fe_.host(hg), raw.data(), kHeaderSize);
  std::vector<VhostFrontend::Buf> bufs{{hg, static_cast<uint32_t>(kHeaderSize), false}};
  if (!payload.empty()) {
    uint64_t pg = fe_.alloc(payload.size());
    std::memcpy(fe_.host(pg), payload.data(), payload.size());
    bufs.push_back({pg, static_cast<uint32_t>(payload.size()), false});
  }
  fe_.publish(kTxQueue, fe_.add_chain(kTxQueue, bufs));
  fe_.kick(kTxQueue);
}

vsock::Header VsockGuest::header(uint32_t src_port, uint32_t dst_port, vsock::Op op) {
  Stream& s = streams_[key(src_port, dst_port)];
  s.advertised = s.fwd_cnt;
  return vsock::Header{.src_cid = o_.cid,
                       .dst_cid = vsock::kHostCid,
                       .src_port = src_port,
                       .dst_port = dst_port,
                       .type = static_cast<uint16_t>(vsock::Type::kStream),
                       .op = static_cast<uint16_t>(op),
                       .buf_alloc = o_.buf_alloc,
                       .fwd_cnt = s.fwd_cnt};
}

template <class F>
Result<void> VsockGuest::next(int timeout_ms, F&& f) {
  auto u = fe_.wait_used(kRxQueue, timeout_ms);
  if (!u) return Error{u.error()};
  auto it = rx_by_head_.find(static_cast<uint16_t>(u->id));
  if (it == rx_by_head_.end()) return Error{-EPROTO};
  Rx b = it->second;
  rx_by_head_.erase(it);
  vsock::Header h{};
  std::span<const std::byte> payload;
  if (u->len >= kHeaderSize) {
    std::array<std::byte, kHeaderSize> raw;
    std::memcpy(raw.data(), fe_.host(b.header_gpa), kHeaderSize);
    h = vsock::decode(raw);
    payload = std::span(fe_.host(b.payload_gpa), std::min<size_t>(u->len - kHeaderSize, o_.rx_payload));
  } else {
    h.op = static_cast<uint16_t>(vsock::Op::kInvalid);  // given back empty
  }
  f(h, payload);
  rx_free_.push_back(b);
  // As Linux does: refill once half the buffers are used, in one batch.
  if (o_.refill && rx_by_head_.size() < o_.rx_buffers / 2) fill_rx();
  return {};
}

Result<VsockGuest::Packet> VsockGuest::receive(int timeout_ms) {
  Packet p;
  auto r = next(timeout_ms, [&](const vsock::Header& h, std::span<const std::byte> payload) {
    p.h = h;
    p.data.assign(payload.begin(), payload.end());
  });
  if (!r) return Error{r.error()};
  return p;
}

void VsockGuest::file(const vsock::Header& h, std::span<const std::byte> payload) {
  if (h.src_cid != vsock::kHostCid || h.dst_cid != o_.cid) return;
  Stream& s = streams_[key(h.dst_port, h.src_port)];
  s.peer_buf_alloc = h.buf_alloc;
  s.peer_fwd_cnt = h.fwd_cnt;
  switch (static_cast<vsock::Op>(h.op)) {
    case vsock::Op::kResponse:
      s.connected = true;
      break;
    case vsock::Op::kRst:
      s.reset = true;
      s.connected = false;
      break;
    case vsock::Op::kRw:
      if (s.off == s.data.size()) {
        s.data.clear();  // keeps its capacity
        s.off = s.credited = 0;
      } else if (s.off > s.data.size() / 2) {
        s.data.erase(s.data.begin(), s.data.begin() + static_cast<ptrdiff_t>(s.off));
        s.credited -= s.off;
        s.off = 0;
      }
      s.data.insert(s.data.end(), payload.begin(), payload.end());
      break;
    case vsock::Op::kCreditRequest:
      if (o_.give_credit) send(header(h.dst_port, h.src_port, vsock::Op::kCreditUpdate));
      break;
    default:
      break;
  }
}

Result<void> VsockGuest::poll_once(int timeout_ms) {
  return next(timeout_ms, [&](const vsock::Header& h, std::span<const std::byte> payload) { file(h, payload); });
}

Result<void> VsockGuest::connect(uint32_t src_port, uint32_t dst_port, int timeout_ms) {
  streams_.erase(key(src_port, dst_port));
  send(header(src_port, dst_port, vsock::Op::kRequest));
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const Stream& s = streams_[key(src_port, dst_port)];
    if (s.connected) return {};
    if (s.reset) return Error{-ECONNREFUSED};
    if (auto r = poll_once(ms_left(deadline)); !r) return r;
  }
}

Result<void> VsockGuest::write(uint32_t src_port, uint32_t dst_port, std::span<const std::byte> data, int timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!data.empty()) {
    Stream& s = streams_[key(src_port, dst_port)];
    if (s.reset || !s.connected) return Error{-ECONNRESET};
    // As Linux guests do: no more in flight than the smaller of fsd's
    // window and the guest's own.
    uint32_t window = std::min(s.peer_buf_alloc, o_.buf_alloc);
    uint32_t in_flight = s.tx_cnt - s.peer_fwd_cnt;
    uint32_t credit = in_flight >= window ? 0 : window - in_flight;
    if (credit == 0) {
      if (auto r = poll_once(ms_left(deadline)); !r) return r;
      continue;
    }
    size_t n = std::min<size_t>({data.size(), credit, kMaxPacket});
    send(header(src_port, dst_port, vsock::Op::kRw), data.first(n));
    s.tx_cnt += static_cast<uint32_t>(n);
    data = data.subspan(n);
  }
  return {};
}

Result<std::vector<std::byte>> VsockGuest::read(uint32_t src_port, uint32_t dst_port, int timeout_ms) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    Stream& s = streams_[key(src_port, dst_port)];
    if (s.off < s.data.size()) {
      credit(src_port, dst_port, s, s.data.size() - s.credited);
      std::vector<std::byte> out;
      if (s.off == 0) {
        out.swap(s.data);
      } else {
        out.assign(s.data.begin() + static_cast<ptrdiff_t>(s.off), s.data.end());
        s.data.clear();
      }
      s.off = s.credited = 0;
      return out;
    }
    if (s.reset) return Error{-ECONNRESET};
    if (auto r = poll_once(ms_left(deadline)); !r) return Error{r.error()};
  }
}

std::span<const std::byte> VsockGuest::received(uint32_t src_port, uint32_t dst_port) {
  Stream& s = streams_[key(src_port, dst_port)];
  credit(src_port, dst_port, s, s.data.size() - s.credited);
  s.credited = s.data.size();
  return std::span(s.data).subspan(s.off);
}

void VsockGuest::consume(uint32_t src_port, uint32_t dst_port, size_t n) {
  Stream& s = streams_[key(src_port, dst_port)];
  s.off += std::min(n, s.credited - s.off);
}

void VsockGuest::credit(uint32_t src_port, uint32_t dst_port, Stream& s, size_t n) {
  s.fwd_cnt += static_cast<uint32_t>(n);
  if (o_.give_credit && s.fwd_cnt - s.advertised >= o_.buf_alloc / 4)
    send(header(src_port, dst_port, vsock::Op::kCreditUpdate));
}

void VsockGuest::shutdown(uint32_t src_port, uint32_t dst_port, uint32_t flags) {
  auto h = header(src_port, dst_port, vsock::Op::kShutdown);
  h.flags = flags;
  send(h);
}

bool VsockGuest::reset_by_host(uint32_t src_port, uint32_t dst_port) const {
  auto it = streams_.find(key(src_port, dst_port));
  return it != streams_.end() && it->second.reset;
}

size_t VsockGuest::buffered(uint32_t src_port, uint32_t dst_port) const {
  auto it = streams_.find(key(src_port, dst_port));
  return it == streams_.end() ? 0 : it->second.data.size() - it->second.off;
}

// ---- VsockBridge

Result<std::unique_ptr<VsockBridge>> VsockBridge::open(VsockGuest& guest, uint32_t src_port, uint32_t dst_port) {
  if (auto r = guest.connect(src_port, dst_port); !r) return Error{r.error()};
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return errno_error();
  auto b = std::unique_ptr<VsockBridge>(new VsockBridge());
  b->guest_ = &guest;
  b->src_ = src_port;
  b->dst_ = dst_port;
  b->client_.reset(sv[0]);
  b->mine_.reset(sv[1]);
  b->stop_.reset(::eventfd(0, EFD_CLOEXEC));
  b->thread_ = std::thread([p = b.get()] { p->run(); });
  return b;
}

VsockBridge::~VsockBridge() {
  uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

// Relays both ways until the client closes its end, fsd resets the
// connection, or the bridge is stopped.
void VsockBridge::run() {
  std::vector<std::byte> buf(kMaxPacket);
  for (;;) {
    pollfd p[3] = {{mine_.get(), POLLIN, 0}, {guest_->frontend().call_fd(kRxQueue), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (::poll(p, 3, 1000) < 0 && errno != EINTR) return;
    if (p[2].revents) return;
    if (p[0].revents & (POLLIN | POLLHUP)) {
      ssize_t n = ::recv(mine_.get(), buf.data(), buf.size(), MSG_DONTWAIT);
      if (n == 0) {
        guest_->shutdown(src_, dst_, vsock::kShutdownRcv | vsock::kShutdownSend);
        return;
      }
      if (n > 0 && !guest_->write(src_, dst_, std::span(buf).first(static_cast<size_t>(n)))) return;
    }
    // Whatever has arrived, without waiting.
    while (guest_->poll_once(0)) {
    }
    auto got = guest_->read(src_, dst_, 0);
    if (!got && got.error() == -ECONNRESET) {
      ::shutdown(mine_.get(), SHUT_RDWR);
      return;
    }
    if (got) {
      size_t off = 0;
      while (off < got->size()) {
        ssize_t w = ::send(mine_.get(), got->data() + off, got->size() - off, MSG_NOSIGNAL);
        if (w <= 0) return;
        off += static_cast<size_t>(w);
      }
    }
  }
}

}  // namespace fsd::frontend
