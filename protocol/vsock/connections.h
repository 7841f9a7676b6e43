// The host's end of one guest's stream connections over virtio-vsock: the
// connection life cycle (REQUEST/RESPONSE, RW, SHUTDOWN, RST) and the
// credit-based flow control of both directions, as a state machine with no
// I/O. The device feeds it the packets the guest sends (headers decoded from
// fsd's own copy), takes from it the control packets to put into the guest's
// receive buffers, and asks it how much data each connection may send.
//
// The guest is untrusted: a packet from another CID or to another one is
// dropped; a malformed packet, one for a connection that does not exist, an
// unknown operation or type, a connection past the cap, or data beyond the
// credit fsd gave gets an RST (never an RST for an RST), and what it named
// is forgotten. Memory is bounded: at most `max_connections` connections,
// at most one RESPONSE and one CREDIT_UPDATE queued for each, and at most
// `max_control` RSTs (past that, RSTs for floods are dropped, as a full
// network would drop them).
//
// Facts relied on (Linux's net/vmw_vsock/virtio_transport_common.c, QEMU's
// vhost-vsock): the guest closes with SHUTDOWN(RCV|SEND) and waits for an
// RST; a REQUEST on a live port pair replaces that connection; every packet
// carries its sender's buf_alloc and fwd_cnt; the guest drops data sent
// beyond its credit, so fsd never sends past it.
// Pure: no syscalls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <unordered_map>
#include <unordered_set>

#include "protocol/vsock/packet.h"

namespace fsd::vsock {

// A connection by its ports (the guest's CID is the device's own).
using ConnId = uint64_t;
inline ConnId conn_id(uint32_t guest_port, uint32_t host_port) {
  return (uint64_t{guest_port} << 32) | host_port;
}
inline uint32_t guest_port_of(ConnId id) { return static_cast<uint32_t>(id >> 32); }
inline uint32_t host_port_of(ConnId id) { return static_cast<uint32_t>(id); }

// Most payload one guest packet may carry: Linux sends at most 64 KiB
// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
inline constexpr uint32_t kMaxPayload = 64 * 1024;
// Guest ports below this need CAP_NET_BIND_SERVICE in the guest.
inline constexpr uint32_t kFirstUnreservedPort = 1024;

struct HostOptions {
  uint64_t guest_cid = 3;
  uint32_t buf_alloc = 1 << 20;  // each connection's receive window, which fsd advertises
  size_t max_connections = 64;
  size_t max_control = 256;
};

// What one guest packet did, for the device.
struct Event {
  enum class Kind {
    kNone,          // nothing for the device (dropped, answered, or credit only)
    kOpened,        // a new connection; `replaced`: one on the same ports went first
    kData,          // `data` arrived on `id` (the caller's bytes, h.len of them)
    kCredit,        // the guest's credit for `id` grew: blocked data may go now
    kPeerShutdown,  // the guest will send no more on `id` (it may still receive)
    kClosed,        // `id` is gone (the guest's RST or close, or fsd's RST for a fault)
  };
  Kind kind = Kind::kNone;
  ConnId id = 0;
  bool trusted = false;  // kOpened: from a guest port below 1024
  bool replaced = false;
  std::span<const std::byte> data;
};

class Host {
 public:
  explicit Host(HostOptions o = {}) : o_(o) {}

  const HostOptions& options() const { return o_; }
  // Accept REQUESTs to `port`; others get an RST.
  void listen(uint32_t port) { listening_.insert(port); }

  // A packet from the guest's tx queue: `h` decoded from fsd's copy of the
  // header, `payload` fsd's copy of the bytes after it.
  Event receive(const Header& h, std::span<const std::byte> payload);

  // The device has taken `n` bytes of `id`'s received data out of the
  // window (into its own buffers): the guest may send that much more, and
  // is told so when enough has gathered.
  void consumed(ConnId id, uint32_t n);

  // The next control packet for the guest's rx queue, if any.
  std::optional<Header> next_control();
  bool has_control() const { return !rsts_.empty() || !due_.empty(); }

  // How many payload bytes `id` may send to the guest now (its credit); 0
  // for an unknown connection.
  uint32_t send_window(ConnId id) const;
  // The header of an RW packet of `n` bytes (at most send_window) on `id`,
  // counted as sent. It carries fsd's credit too.
  Header data_header(ConnId id, uint32_t n);
  // Credit taken ahead, for data placed into receive buffers before its
  // packets are made: reserve() takes up to `n` bytes of the window
  // (returns how many; counted as sent), reserved_header() makes an RW
  // packet of `n` of them, unreserve() gives back `n` that will not be sent.
  uint32_t reserve(ConnId id, uint32_t n);
  Header reserved_header(ConnId id, uint32_t n);
  void unreserve(ConnId id, uint32_t n);

  // fsd ends `id`: an RST goes to the guest and the connection is forgotten.
  void close(ConnId id);
  // The device was reset (guest reboot, driver reload): every connection
  // and queued packet is forgotten, with no packet sent.
  void reset();

  bool known(ConnId id) const { return conns_.contains(id); }
  bool trusted(ConnId id) const;
  size_t connections() const { return conns_.size(); }
  // Bytes of `id` received and not yet consumed (at most buf_alloc).
  uint32_t unconsumed(ConnId id) const;

 private:
  struct Conn {
    bool trusted = false;
    bool peer_sends = true;  // no SHUTDOWN(SEND) from the guest yet
    uint32_t peer_buf_alloc = 0, peer_fwd_cnt = 0;  // the guest's window, as it last said
    uint32_t tx_cnt = 0;       // payload bytes fsd has sent (or reserved)
    uint32_t reserved = 0;     // of them, reserved and not yet in a packet
    uint32_t rx_queued = 0;    // received, not consumed
    uint32_t fwd_cnt = 0;      // consumed
    uint32_t advertised = 0;   // fwd_cnt as last told to the guest
    bool response_due = false, update_due = false;  // control packets to send
  };

  // An RST answering `h` (unless it is one), for a connection that is not (or no longer) kept.
  Event refuse(const Header& h);
  // An RST for no kept connection: at most max_control of them wait.
  void queue_rst(ConnId id);
  // `id` has a control packet due (its flags say which).
  void mark_due(ConnId id);
  Header header_for(ConnId id, Conn& c, Op op);
  void take_credit(Conn& c, const Header& h);

  HostOptions o_;
  std::unordered_set<uint32_t> listening_;
  std::unordered_map<ConnId, Conn> conns_;
  std::deque<Header> rsts_;
  // Connections with a control packet due, each once; ids of connections
  // gone since are skipped (and dropped when the list outgrows the cap).
  std::deque<ConnId> due_;
  std::unordered_set<ConnId> due_set_;
};

}  // namespace fsd::vsock
