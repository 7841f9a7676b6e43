#include "fsd/vhost/vsock_device.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <stdexcept>
#include <cstring>

#include "fsd/core/iovec.h"
#include "fsd/core/request_bytes.h"
#include "fsd/uring/ring.h"

namespace fsd::vhost {
namespace {

using vsock::ConnId;
using vsock::kHeaderSize;
using vsock::kRxQueue;
using vsock::kTxQueue;

constexpr uint32_t kLengthPrefix = 4;
// Back-pressure per connection, as on sockets: no new frame is taken while
// this many requests are being handled, or while the frames being handled
// or the replies the guest has not taken pass the byte budget (the larger
// of kByteBudget and two frames).
constexpr size_t kMaxInFlight = 32;
constexpr size_t kByteBudget = 4 << 20;
// A reply read into receive chains leaves this many held for control
// packets and other connections, and takes no more iovecs than this (a
// readv takes at most IOV_MAX).
constexpr size_t kSpareChains = 4;
constexpr size_t kMaxRoomIovecs = 512;

uint32_t le32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // x86 and other little-endian hosts
}

// Copies `from` into the buffers `to`, starting `off` bytes in (the caller
// checked that it fits).
void put(std::span<const iovec> to, size_t off, std::span<const std::byte> from) {
  for (const auto& v : to) {
    if (from.empty()) return;
    if (off >= v.iov_len) {
      off -= v.iov_len;
      continue;
    }
    size_t n = std::min(v.iov_len - off, from.size());
    std::memcpy(static_cast<std::byte*>(v.iov_base) + off, from.data(), n);
    from = from.subspan(n);
    off = 0;
  }
}

std::string conn_name(ConnId id) {
  return std::to_string(vsock::guest_port_of(id)) + "->" + std::to_string(vsock::host_port_of(id));
}

}  // namespace

// One stream connection and its session: frames are cut out of the bytes
// the guest sends (the inbox), replies wait in out_ until receive chains
// and credit take them.
class VsockDevice::Conn : public ReplySink, public std::enable_shared_from_this<Conn> {
 public:
  Conn(VsockDevice& d, ConnId id) : dev_(&d), ring_(d.ring_), id_(id) {}

  void start(std::unique_ptr<StreamSession> s) { session_ = std::move(s); }
  bool closed() const { return dev_ == nullptr; }
  // The device forgets the connection: what is in flight finishes into the void.
  void close() {
    dev_ = nullptr;
    inbox_ = Buffer();
    have_ = pending_ = 0;
    out_.clear();
    queued_ = 0;
  }

  // Room for `n` more received bytes at the inbox's end (empty: none,
  // which only a guest past its window can need). The inbox holds at most
  // a frame not yet whole, all consumed, and a window of bytes after it.
  std::span<std::byte> room(size_t n) {
    size_t most = size_t{dev_->o_.window} + session_->max_frame();
    if (have_ + n > most) return {};
    if (inbox_.capacity() < have_ + n) {
      size_t cap = std::max<size_t>({64 * 1024, have_ + n, 2 * inbox_.capacity()});
      Buffer bigger(std::min(cap, most));
      if (have_) std::memcpy(bigger.data(), inbox_.data(), have_);
      inbox_ = std::move(bigger);
    }
    return {inbox_.data() + have_, n};
  }
  // The `n` bytes just copied into room() are the stream's next.
  void received(size_t n) {
    have_ += n;
    pending_ += n;
    take_frames();
    settle();
  }
  void peer_shutdown() {
    peer_done_ = true;
    end_if_done();
  }

  ConnId id() const { return id_; }
  bool has_output() const { return queued_ > 0; }
  // A reply is being read into receive chains: nothing else of this
  // connection's goes before it is sent.
  bool placing() const { return placing_; }
  void start_placing() { placing_ = true; }
  // The placed reply went (or was dropped); `rest`, what did not fit in
  // its chains, goes before any reply queued meanwhile.
  void placed(Buffer rest) {
    placing_ = false;
    if (closed() || rest.size() == 0) {
      pool_.put(std::move(rest));
      return;
    }
    queued_ += rest.size();
    out_.push_front(std::move(rest));  // nothing of out_ went meanwhile: out_off_ is 0
  }
  // Moves up to `max` bytes of replies into `to` from `off` bytes in.
  size_t copy_out(std::span<const iovec> to, size_t off, size_t max) {
    size_t done = 0;
    while (done < max && !out_.empty()) {
      Buffer& b = out_.front();
      size_t n = std::min(max - done, b.size() - out_off_);
      put(to, off + done, b.bytes().subspan(out_off_, n));
      done += n;
      out_off_ += n;
      if (out_off_ == b.size()) {
        pool_.put(std::move(b));
        out_.pop_front();
        out_off_ = 0;
      }
    }
    queued_ -= done;
    return done;
  }
  // After output left: frames held back for room may go now.
  void output_taken() {
    take_frames();
    settle();
    end_if_done();
  }

  // ReplySink
  Buffer buffer(size_t capacity) override { return pool_.get(capacity); }
  // Room in the receive chains, when nothing of this connection's waits
  // to go before the reply.
  std::unique_ptr<ReplySpace> space(size_t capacity) override {
    if (closed() || placing_ || queued_ > 0) return nullptr;
    return dev_->place(shared_from_this(), capacity);
  }
  void recycle(Buffer frame) override { pool_.put(std::move(frame)); }
  void reply(Buffer frame) override {
    if (closed() || frame.size() == 0) {
      pool_.put(std::move(frame));
      return;
    }
    if (pool_.large() != session_->max_frame()) pool_.set_large(session_->max_frame());
    queued_ += frame.size();
    out_.push_back(std::move(frame));
    dev_->ready(id_);
    dev_->pump();
  }
  void protocol_error(std::string_view why) override {
    if (closed()) return;
    spdlog::warn("{} connection {}: {}; resetting it", dev_->o_.name, conn_name(id_), why);
    dev_->stats_.dropped++;
    dev_->end(id_);
  }

 private:
  size_t budget() const { return std::max<size_t>(kByteBudget, 2 * size_t{session_->max_frame()}); }
  bool over_limit() const { return in_flight_ >= kMaxInFlight || in_bytes_ + queued_ >= budget(); }

  // Consumption (the guest may send as much again): a frame's bytes are
  // consumed when it leaves for the session, and so are those of a frame
  // not yet whole while the connection is under its limits. A frame may be
  // larger than the window the guest uses (Linux guests have been seen to
  // send no more than their own buffer size, 256 KiB by default, whatever
  // fsd advertises), so waiting for whole frames could wait forever.
  void consume(size_t n) {
    pending_ -= n;
    dev_->host_.consumed(id_, static_cast<uint32_t>(n));
  }
  void settle() {
    if (!closed() && pending_ > 0 && !over_limit()) consume(pending_);
  }

  // Cuts whole frames out of the inbox while there is room for them.
  void take_frames() {
    while (!closed() && have_ >= kLengthPrefix && !over_limit()) {
      uint32_t size = le32(inbox_.data());
      uint32_t max = std::min(session_->max_frame(), dev_->o_.window);
      if (size < kLengthPrefix || size > max) {
        protocol_error(size < kLengthPrefix ? "frame shorter than its length prefix"
                                            : "frame of " + std::to_string(size) + " bytes exceeds msize " +
                                                  std::to_string(max));
        return;
      }
      if (have_ < size) break;
      spdlog::trace("{}: frame of {} bytes from {}", dev_->o_.name, size, conn_name(id_));
      Buffer frame;
      if (size == have_ && size > BufferPool::kSmall) {
        frame = std::move(inbox_);  // exactly one large frame (a big Twrite): no copy
        inbox_ = Buffer();
      } else {
        frame = pool_.get(size);
        std::memcpy(frame.data(), inbox_.data(), size);
        std::memmove(inbox_.data(), inbox_.data() + size, have_ - size);
      }
      have_ -= size;
      frame.set_size(size);
      if (pending_ > have_) consume(pending_ - have_);  // the unconsumed bytes are the inbox's last
      spawn(request(std::move(frame)));
    }
  }

  Task<void> request(Buffer frame) {
    auto self = shared_from_this();
    Ring::Active active(ring_);
    size_t size = frame.size();
    in_flight_++;
    in_bytes_ += size;
    co_await session_->handle(std::move(frame));
    in_flight_--;
    in_bytes_ -= size;
    if (closed()) co_return;
    take_frames();
    settle();
    end_if_done();
    if (!closed()) dev_->pump();  // a credit update may be due
  }

  // After the guest's SHUTDOWN(SEND): once every reply has gone, fsd ends
  // the connection.
  void end_if_done() {
    if (!closed() && peer_done_ && in_flight_ == 0 && queued_ == 0) dev_->end(id_);
  }

  VsockDevice* dev_;  // null once closed
  Ring& ring_;
  ConnId id_;
  BufferPool pool_;
  std::unique_ptr<StreamSession> session_;
  Buffer inbox_;  // received and not yet cut into frames (unconsumed)
  size_t have_ = 0;
  size_t pending_ = 0;  // the inbox's last bytes, not yet consumed
  std::deque<Buffer> out_;  // replies, the first partly sent from out_off_
  size_t out_off_ = 0;
  size_t queued_ = 0;       // bytes of out_ left to send
  size_t in_flight_ = 0;    // frames the session is handling
  size_t in_bytes_ = 0;     // and their bytes
  bool peer_done_ = false;
  bool placing_ = false;
 public:
  bool in_ready = false;  // on the device's ready_ list
};

// A reply read straight into receive chains: the chains taken from the
// front of rx_ (each with the payload it may carry), then a buffer for what
// does not fit. Sending it makes each chain used one RW packet, in order;
// chains the reply does not reach go back to rx_.
class VsockDevice::Room : public ReplySpace {
 public:
  Room(VsockDevice& d, std::shared_ptr<Conn> c) : dev_(&d), conn_(std::move(c)) {
    d.rooms_.push_back(this);
    d.used_.io_started(kRxQueue);
  }
  ~Room() override { finish(0, false); }
  Room(const Room&) = delete;

  std::span<const iovec> iov(size_t skip) override {
    if (skip == 0) return iov_;
    skipped_.clear();
    tail_of(iov_, skip, skipped_);
    return skipped_;
  }
  void send(size_t n) override { finish(n, true); }
  // The device goes first (it never does while the receive queue runs).
  void orphan() { dev_ = nullptr; }

  // Appends chain `c`, `cap` payload bytes of it.
  void add(virtio::Chain c, uint32_t cap) {
    slice_of(c.writable, kHeaderSize, cap, iov_);
    caps_.push_back(cap);
    direct_ += cap;
    chains_.push_back(std::move(c));
  }
  // And a buffer for the rest.
  void add_rest(Buffer b, size_t n) {
    rest_ = std::move(b);
    iov_.push_back(iovec{rest_.data(), n});
  }
  uint32_t direct() const { return direct_; }
  size_t iovecs() const { return iov_.size(); }

 private:
  void finish(size_t n, bool sent);

  VsockDevice* dev_;
  std::shared_ptr<Conn> conn_;
  std::vector<virtio::Chain> chains_;
  std::vector<uint32_t> caps_;
  uint32_t direct_ = 0;
  Buffer rest_;
  std::vector<iovec> iov_, skipped_;
  bool done_ = false;
};

void VsockDevice::Room::finish(size_t n, bool sent) {
  if (std::exchange(done_, true)) return;
  VsockDevice* d = std::exchange(dev_, nullptr);
  if (!d) {
    conn_->placed(Buffer());
    return;
  }
  std::erase(d->rooms_, this);
  const ConnId id = conn_->id();
  const bool live = sent && !conn_->closed();
  size_t left = live ? n : 0;
  uint32_t placed = 0;
  size_t reached = 0;  // every chain carries payload: those the reply reaches come first
  for (; reached < chains_.size() && left > 0; reached++) {
    auto len = static_cast<uint32_t>(std::min<size_t>(left, caps_[reached]));
    std::array<std::byte, kHeaderSize> raw;
    vsock::encode(d->host_.reserved_header(id, len), raw);
    put(chains_[reached].writable, 0, raw);
    d->used_.give(kRxQueue, chains_[reached].head, kHeaderSize + len);
    left -= len;
    placed += len;
  }
  for (size_t k = chains_.size(); k-- > reached;) d->rx_.push_front(std::move(chains_[k]));
  if (!conn_->closed()) d->host_.unreserve(id, direct_ - placed);
  rest_.set_size(std::min(left, rest_.capacity()));
  conn_->placed(std::move(rest_));
  d->used_.io_done(kRxQueue);
  d->stats_.placed += placed;
  if (placed) d->used_.notify(kRxQueue);
  if (!conn_->closed()) {
    d->ready(id);
    conn_->output_taken();
  }
  d->pump();
}

std::unique_ptr<ReplySpace> VsockDevice::place(const std::shared_ptr<Conn>& c, size_t capacity) {
  size_t want = std::min<size_t>(capacity, host_.send_window(c->id()));
  if (want == 0 || rx_.size() <= kSpareChains || rx_.front().writable_bytes <= kHeaderSize) return nullptr;
  auto room = std::make_unique<Room>(*this, c);
  while (room->direct() < want && rx_.size() > kSpareChains && room->iovecs() < kMaxRoomIovecs &&
         rx_.front().writable_bytes > kHeaderSize) {
    auto cap = static_cast<uint32_t>(
        std::min<size_t>({rx_.front().writable_bytes - kHeaderSize, vsock::kMaxPayload, want - room->direct()}));
    room->add(std::move(rx_.front()), cap);
    rx_.pop_front();
  }
  host_.reserve(c->id(), room->direct());  // all of it: within the window
  if (capacity > room->direct()) room->add_rest(c->buffer(capacity - room->direct()), capacity - room->direct());
  c->start_placing();
  return room;
}

VsockDevice::VsockDevice(Ring& ring, UsedRings& used, StreamSessionFactory sessions, VsockOptions o)
    : ring_(ring),
      used_(used),
      sessions_(std::move(sessions)),
      o_(std::move(o)),
      host_(vsock::HostOptions{.guest_cid = o_.guest_cid, .buf_alloc = o_.window, .max_connections = o_.max_connections}),
      scratch_(vsock::kMaxPayload) {
  host_.listen(o_.port);
}

VsockDevice::~VsockDevice() {
  for (Room* r : rooms_) r->orphan();
  for (auto& [id, c] : conns_) c->close();
}

std::vector<std::byte> VsockDevice::config(uint64_t guest_cid) {
  std::vector<std::byte> c(8);
  std::memcpy(c.data(), &guest_cid, 8);  // le64, on little-endian hosts
  return c;
}

void VsockDevice::take(unsigned queue, std::span<virtio::Chain> chains) {
  if (queue == kRxQueue) {
    for (auto& c : chains) rx_.push_back(std::move(c));
  } else {
    for (const auto& c : chains) {
      transmit(c);
      used_.give(queue, c.head, 0);
    }
  }
  pump();
}

void VsockDevice::release(unsigned queue) {
  assert(queue != kRxQueue || rooms_.empty());  // the back-end waits for their reads (io_done)
  if (queue != kRxQueue || rx_.empty()) return;
  for (const auto& c : rx_) used_.give(kRxQueue, c.head, 0);  // a guest driver drops packets this short
  rx_.clear();
  used_.notify(kRxQueue);
}

void VsockDevice::stopped() {
  if (!conns_.empty()) spdlog::info("{}: the guest reset the device; dropping its {} connections", o_.name, conns_.size());
  for (auto& [id, c] : conns_) c->close();
  conns_.clear();
  ready_.clear();
  host_.reset();
}

void VsockDevice::transmit(const virtio::Chain& chain) {
  // The header and the payload are copied out of guest memory once; the
  // payload of data for a connection goes straight into its inbox.
  auto bytes = RequestBytes::in_shared(chain.readable);
  std::array<std::byte, kHeaderSize> raw;
  if (bytes.copy_to(0, raw) < kHeaderSize) {
    spdlog::debug("{}: a transmit chain shorter than a packet header; dropped", o_.name);
    return;
  }
  const vsock::Header h = vsock::decode(raw);
  size_t n = std::min<size_t>(h.len, bytes.size() - kHeaderSize);
  spdlog::trace("{}: tx op {} {}->{} len {} buf_alloc {} fwd_cnt {}", o_.name, h.op, h.src_port, h.dst_port, h.len,
                h.buf_alloc, h.fwd_cnt);
  std::span<std::byte> to;
  std::shared_ptr<Conn> conn;
  if (static_cast<vsock::Op>(h.op) == vsock::Op::kRw && h.src_cid == o_.guest_cid) {
    if (auto it = conns_.find(vsock::conn_id(h.src_port, h.dst_port)); it != conns_.end()) conn = it->second;
  }
  if (conn) to = conn->room(n);
  if (to.size() != n) {
    conn.reset();
    to = std::span(scratch_).first(std::min(n, scratch_.size()));
  }
  to = to.first(bytes.copy_to(kHeaderSize, to));
  vsock::Event ev = host_.receive(h, to);
  using K = vsock::Event::Kind;
  switch (ev.kind) {
    case K::kNone:
      break;
    case K::kOpened:
      opened(ev.id, ev.trusted, ev.replaced);
      break;
    case K::kData:
      if (conn) {
        conn->received(ev.data.size());
      } else {
        end(ev.id);  // cannot happen: the Host and conns_ know the same connections
      }
      break;
    case K::kCredit:
      ready(ev.id);
      break;
    case K::kPeerShutdown:
      if (auto it = conns_.find(ev.id); it != conns_.end()) it->second->peer_shutdown();
      break;
    case K::kClosed:
      forget(ev.id);
      break;
  }
}

void VsockDevice::opened(ConnId id, bool trusted, bool replaced) {
  if (replaced) forget(id);
  if (!trusted && !o_.untrusted_as) {
    // Not from guest root, and no identity to give it.
    spdlog::info("{}: refused a connection from unreserved guest port {} (only ports below 1024 are served)",
                 o_.name, vsock::guest_port_of(id));
    stats_.refused++;
    host_.close(id);
    return;
  }
  auto c = std::make_shared<Conn>(*this, id);
  Peer peer = trusted ? Peer{.who = nullptr, .trusted = true} : Peer{.who = o_.untrusted_as, .trusted = false};
  c->start(sessions_(ring_, *c, peer));
  conns_[id] = std::move(c);
  stats_.connections++;
  spdlog::debug("{}: connection {} opened ({})", o_.name, conn_name(id), trusted ? "guest root" : "untrusted");
}

void VsockDevice::forget(ConnId id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  it->second->close();
  conns_.erase(it);
}

void VsockDevice::end(ConnId id) {
  host_.close(id);
  forget(id);
  pump();
}

void VsockDevice::ready(ConnId id) {
  auto it = conns_.find(id);
  if (it == conns_.end() || it->second->in_ready || !it->second->has_output()) return;
  it->second->in_ready = true;
  ready_.push_back(id);
}

// One data packet into `rx` from the first ready connection with credit;
// a connection that still has output and credit goes to the back of the
// line, so connections take turns.
bool VsockDevice::fill_data(const virtio::Chain& rx, uint32_t& len) {
  if (rx.writable_bytes <= kHeaderSize && !ready_.empty()) {
    len = 0;  // room for a header only, and data waiting: of no use to it
    return true;
  }
  while (!ready_.empty()) {
    ConnId id = ready_.front();
    ready_.pop_front();
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    std::shared_ptr<Conn> c = it->second;
    c->in_ready = false;
    uint32_t window = host_.send_window(id);
    // Back on the list with more credit, or once its placed reply went.
    if (!c->has_output() || window == 0 || c->placing()) continue;
    size_t cap = std::min<size_t>({rx.writable_bytes - kHeaderSize, window, vsock::kMaxPayload});
    auto n = static_cast<uint32_t>(c->copy_out(rx.writable, kHeaderSize, cap));
    std::array<std::byte, kHeaderSize> raw;
    vsock::encode(host_.data_header(id, n), raw);
    put(rx.writable, 0, raw);
    len = kHeaderSize + n;
    spdlog::trace("{}: rx data {} bytes to {}, window was {}", o_.name, n, conn_name(id), window);
    ready(id);
    c->output_taken();
    return true;
  }
  return false;
}

void VsockDevice::pump() {
  if (pumping_) return;  // the outer pump sees what a reply queued meanwhile
  pumping_ = true;
  bool gave = false;
  while (!rx_.empty()) {
    const virtio::Chain& rx = rx_.front();
    uint32_t len = 0;
    if (rx.writable_bytes < kHeaderSize) {
      len = 0;  // useless to the guest: given back empty
    } else if (auto h = host_.next_control()) {
      spdlog::trace("{}: rx op {} {}->{} fwd_cnt {}", o_.name, h->op, h->src_port, h->dst_port, h->fwd_cnt);
      std::array<std::byte, kHeaderSize> raw;
      vsock::encode(*h, raw);
      put(rx.writable, 0, raw);
      len = kHeaderSize;
    } else if (!fill_data(rx, len)) {
      break;
    }
    used_.give(kRxQueue, rx.head, len);
    rx_.pop_front();
    gave = true;
  }
  pumping_ = false;
  if (gave) used_.notify(kRxQueue);
}

namespace {
template <class T>
T number(std::string_view spec, std::string_view key, std::string_view v, T max) {
  T n{};
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n > max)
    throw std::invalid_argument("--vsock-socket '" + std::string(spec) + "': " + std::string(key) + "=" +
                                std::string(v) + " is not a number up to " + std::to_string(max));
  return n;
}
}  // namespace

VsockSocketSpec parse_vsock_socket(std::string_view spec) {
  VsockSocketSpec s;
  size_t comma = spec.find(',');
  s.path = std::string(spec.substr(0, comma));
  if (s.path.empty()) throw std::invalid_argument("--vsock-socket '" + std::string(spec) + "': no socket path");
  std::string_view rest = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
  while (!rest.empty()) {
    size_t next = rest.find(',');
    std::string_view item = rest.substr(0, next);
    rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next + 1);
    size_t eq = item.find('=');
    std::string_view key = item.substr(0, eq), v = eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1);
    if (key == "cid") {
      s.guest_cid = number<uint64_t>(spec, key, v, 0xfffffffeull);
      if (!vsock::valid_guest_cid(s.guest_cid))
        throw std::invalid_argument("--vsock-socket '" + std::string(spec) + "': cid " + std::string(v) +
                                    " is reserved (a guest's CID is 3 or more)");
    } else if (key == "port") {
      s.port = number<uint32_t>(spec, key, v, 0xfffffffeu);
    } else if (key == "untrusted-as") {
      size_t colon = v.find(':');
      if (colon == std::string_view::npos)
        throw std::invalid_argument("--vsock-socket '" + std::string(spec) + "': untrusted-as takes UID:GID");
      s.untrusted_as = std::pair{number<uid_t>(spec, "untrusted-as uid", v.substr(0, colon), 0xfffffffeu),
                                 number<gid_t>(spec, "untrusted-as gid", v.substr(colon + 1), 0xfffffffeu)};
    } else {
      throw std::invalid_argument("--vsock-socket '" + std::string(spec) + "': unknown option '" + std::string(item) +
                                  "' (cid=N, port=P, untrusted-as=UID:GID)");
    }
  }
  return s;
}

ChainDeviceFactory vsock_device_factory(StreamSessionFactory sessions, VsockOptions o) {
  return [sessions = std::move(sessions), o = std::move(o)](Ring& ring, UsedRings& used) -> std::shared_ptr<ChainDevice> {
    return std::make_shared<VsockDevice>(ring, used, sessions, o);
  };
}

}  // namespace fsd::vhost
