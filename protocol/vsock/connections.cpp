#include "protocol/vsock/connections.h"

#include <algorithm>

namespace fsd::vsock {

Event Host::receive(const Header& h, std::span<const std::byte> payload) {
  // Not this guest's, or not for the host: no reply could be addressed.
  if (h.src_cid != o_.guest_cid || h.dst_cid != kHostCid) return {};
  const ConnId id = conn_id(h.src_port, h.dst_port);
  auto it = conns_.find(id);
  const auto op = static_cast<Op>(h.op);
  if (op == Op::kRst) {
    if (it == conns_.end()) return {};
    conns_.erase(it);
    return {.kind = Event::Kind::kClosed, .id = id};
  }
  // Only streams; a payload only on RW, and as long as the header says.
  bool malformed = h.type != static_cast<uint16_t>(Type::kStream) || payload.size() != h.len ||
                   h.len > kMaxPayload || (op != Op::kRw && h.len != 0);
  if (op == Op::kRequest && !malformed) {
    if (!listening_.contains(h.dst_port)) return refuse(h);
    bool replaced = it != conns_.end();
    if (!replaced && conns_.size() >= o_.max_connections) return refuse(h);
    Conn& c = conns_[id];
    c = Conn{};
    c.trusted = h.src_port < kFirstUnreservedPort;
    take_credit(c, h);
    c.response_due = true;
    mark_due(id);
    return {.kind = Event::Kind::kOpened, .id = id, .trusted = c.trusted, .replaced = replaced};
  }
  if (it == conns_.end() || malformed) return refuse(h);
  Conn& c = it->second;
  uint32_t before = send_window(id);
  take_credit(c, h);
  Event credit{.kind = send_window(id) > before ? Event::Kind::kCredit : Event::Kind::kNone, .id = id};
  switch (op) {
    case Op::kRw:
      // Past the window fsd gave: the guest broke the rules.
      if (!c.peer_sends || h.len > o_.buf_alloc - c.rx_queued) return refuse(h);
      if (h.len == 0) return credit;
      c.rx_queued += h.len;
      return {.kind = Event::Kind::kData, .id = id, .data = payload};
    case Op::kCreditUpdate:
      return credit;
    case Op::kCreditRequest:
      c.update_due = true;
      mark_due(id);
      return credit;
    case Op::kShutdown:
      // The guest will receive no more (a close, or SHUT_RD): fsd's replies
      // have nowhere to go, so the connection ends with the RST the guest
      // waits for. SEND alone is a half-close.
      if (h.flags & kShutdownRcv) return refuse(h);
      if (h.flags & kShutdownSend) {
        c.peer_sends = false;
        return {.kind = Event::Kind::kPeerShutdown, .id = id};
      }
      return credit;
    default:  // a RESPONSE (fsd connects to no guest), or an unknown op
      return refuse(h);
  }
}

Event Host::refuse(const Header& h) {
  const ConnId id = conn_id(h.src_port, h.dst_port);
  bool had = conns_.erase(id) > 0;
  queue_rst(id);
  return had ? Event{.kind = Event::Kind::kClosed, .id = id} : Event{};
}

void Host::queue_rst(ConnId id) {
  if (rsts_.size() >= o_.max_control) return;
  rsts_.push_back(Header{.src_cid = kHostCid,
                         .dst_cid = o_.guest_cid,
                         .src_port = host_port_of(id),
                         .dst_port = guest_port_of(id),
                         .type = static_cast<uint16_t>(Type::kStream),
                         .op = static_cast<uint16_t>(Op::kRst)});
}

void Host::mark_due(ConnId id) {
  if (due_set_.contains(id)) return;
  if (due_.size() >= 2 * o_.max_connections + 16) {
    // Mostly ids of connections gone since: keep the live ones.
    std::erase_if(due_, [&](ConnId d) {
      bool gone = !conns_.contains(d);
      if (gone) due_set_.erase(d);
      return gone;
    });
  }
  due_.push_back(id);
  due_set_.insert(id);
}

void Host::take_credit(Conn& c, const Header& h) {
  c.peer_buf_alloc = h.buf_alloc;
  c.peer_fwd_cnt = h.fwd_cnt;
}

Header Host::header_for(ConnId id, Conn& c, Op op) {
  c.advertised = c.fwd_cnt;
  return {.src_cid = kHostCid,
          .dst_cid = o_.guest_cid,
          .src_port = host_port_of(id),
          .dst_port = guest_port_of(id),
          .type = static_cast<uint16_t>(Type::kStream),
          .op = static_cast<uint16_t>(op),
          .buf_alloc = o_.buf_alloc,
          .fwd_cnt = c.fwd_cnt};
}

void Host::consumed(ConnId id, uint32_t n) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  n = std::min(n, c.rx_queued);
  c.rx_queued -= n;
  c.fwd_cnt += n;
  // Told in quarters of the window the guest uses (every packet fsd sends
  // tells it too): the smaller of fsd's and the guest's own buf_alloc, as
  // Linux guests send no more than their own. A guest blocks only once it
  // has sent that whole window, all of which the device consumes in the end.
  uint32_t window = std::min(o_.buf_alloc, c.peer_buf_alloc ? c.peer_buf_alloc : o_.buf_alloc);
  if (c.fwd_cnt - c.advertised >= std::max<uint32_t>(window / 4, 1)) {
    c.update_due = true;
    mark_due(id);
  }
}

std::optional<Header> Host::next_control() {
  if (!rsts_.empty()) {
    Header r = rsts_.front();
    rsts_.pop_front();
    return r;
  }
  while (!due_.empty()) {
    ConnId id = due_.front();
    auto it = conns_.find(id);
    if (it == conns_.end() || !(it->second.response_due || it->second.update_due)) {
      due_.pop_front();  // gone, or told already by a packet since
      due_set_.erase(id);
      continue;
    }
    Conn& c = it->second;
    // The RESPONSE first; a CREDIT_UPDATE after it stays due.
    Op op = c.response_due ? Op::kResponse : Op::kCreditUpdate;
    (c.response_due ? c.response_due : c.update_due) = false;
    if (!c.response_due && !c.update_due) {
      due_.pop_front();
      due_set_.erase(id);
    }
    return header_for(id, c, op);
  }
  return std::nullopt;
}

uint32_t Host::send_window(ConnId id) const {
  auto it = conns_.find(id);
  if (it == conns_.end()) return 0;
  const Conn& c = it->second;
  if (c.response_due) return 0;  // not connected until the RESPONSE has gone
  // Wrapping counters: what is in flight is tx_cnt - peer_fwd_cnt. A guest
  // that claims more consumed than was sent gets no more than its window.
  uint32_t in_flight = c.tx_cnt - c.peer_fwd_cnt;
  return in_flight >= c.peer_buf_alloc ? 0 : c.peer_buf_alloc - in_flight;
}

Header Host::data_header(ConnId id, uint32_t n) {
  Conn& c = conns_.at(id);
  c.tx_cnt += n;
  c.update_due = false;  // this packet tells the guest fsd's credit
  Header h = header_for(id, c, Op::kRw);
  h.len = n;
  return h;
}

uint32_t Host::reserve(ConnId id, uint32_t n) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return 0;
  n = std::min(n, send_window(id));
  it->second.tx_cnt += n;
  it->second.reserved += n;
  return n;
}

Header Host::reserved_header(ConnId id, uint32_t n) {
  Conn& c = conns_.at(id);
  n = std::min(n, c.reserved);
  c.reserved -= n;
  c.update_due = false;
  Header h = header_for(id, c, Op::kRw);
  h.len = n;
  return h;
}

void Host::unreserve(ConnId id, uint32_t n) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  n = std::min(n, it->second.reserved);
  it->second.reserved -= n;
  it->second.tx_cnt -= n;
}

void Host::close(ConnId id) {
  if (conns_.erase(id) > 0) queue_rst(id);
}

void Host::reset() {
  conns_.clear();
  rsts_.clear();
  due_.clear();
  due_set_.clear();
}

bool Host::trusted(ConnId id) const {
  auto it = conns_.find(id);
  return it != conns_.end() && it->second.trusted;
}

uint32_t Host::unconsumed(ConnId id) const {
  auto it = conns_.find(id);
  return it == conns_.end() ? 0 : it->second.rx_queued;
}

}  // namespace fsd::vsock
