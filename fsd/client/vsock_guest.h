// VsockGuest: the guest's side of a virtio-vsock device, driven through
// the project's vhost-user front-end (VhostFrontend), for tests and
// benchmarks: what Linux's virtio_transport does. It keeps receive buffers
// in the rx queue (a 44-byte header descriptor and a 4 KiB payload
// descriptor each, as Linux 6.1 gives them), sends packets on the tx
// queue, and keeps stream connections with their credit in both
// directions. Hostile tests can send any header they like (send()), stop
// giving receive buffers back, or never return credit.
//
// VsockBridge connects one stream and relays it to a socketpair, so that
// a stream client (p9::Client) can talk over it; it runs the guest on a
// thread of its own.
//
// Single-threaded (VsockBridge: its thread owns the guest).
#pragma once

#include <map>
#include <span>
#include <thread>
#include <vector>

#include "fsd/client/vhost_frontend.h"
#include "common/fd.h"
#include "common/result.h"
#include "protocol/vsock/packet.h"

namespace fsd::frontend {

class VsockGuest {
 public:
  struct Options {
    uint64_t cid = 3;
    unsigned rx_buffers = 64;          // receive buffers kept in the rx queue
    uint32_t rx_payload = 4096;        // payload bytes of each
    uint32_t buf_alloc = 256 * 1024;   // the guest's receive window per connection
    // Send CREDIT_UPDATE as data is read, and answer CREDIT_REQUEST (off: a
    // guest that never gives credit back).
    bool give_credit = true;
    // Give each receive buffer back once its packet is read (off: a guest
    // that stops taking what fsd sends).
    bool refill = true;
  };
  struct Packet {
    vsock::Header h;
    std::vector<std::byte> data;
  };

  VsockGuest(VhostFrontend& fe, Options o);
  VsockGuest(VhostFrontend& fe) : VsockGuest(fe, Options{}) {}

  // Puts receive buffers into the rx queue, up to Options::rx_buffers.
  void fill_rx();
  // Sends one packet as it is (its len set to the payload's size).
  void send(vsock::Header h, std::span<const std::byte> payload = {});
  // A header from this guest to the host's `dst_port`, with the
  // connection's credit fields.
  vsock::Header header(uint32_t src_port, uint32_t dst_port, vsock::Op op);
  // The next packet fsd put into a receive buffer.
  Result<Packet> receive(int timeout_ms = 10000);

  // ---- streams (as a guest socket does)
  // REQUEST, then RESPONSE (ok) or RST (ECONNREFUSED).
  Result<void> connect(uint32_t src_port, uint32_t dst_port, int timeout_ms = 10000);
  // Sends all of `data` in RW packets within fsd's credit, waiting for more.
  Result<void> write(uint32_t src_port, uint32_t dst_port, std::span<const std::byte> data, int timeout_ms = 10000);
  // Takes what has arrived on the connection (waiting up to timeout_ms for
  // something); ECONNRESET once fsd reset it and nothing is left.
  Result<std::vector<std::byte>> read(uint32_t src_port, uint32_t dst_port, int timeout_ms = 10000);
  // Without a copy: what has arrived and was not consumed yet (valid until
  // the next packet is received). It counts as read, so its credit goes
  // back, as a guest socket's does once its reader has copied the bytes
  // out: the stream's buffer is the reader's. consume() drops its first
  // `n` bytes.
  std::span<const std::byte> received(uint32_t src_port, uint32_t dst_port);
  void consume(uint32_t src_port, uint32_t dst_port, size_t n);
  // Receives and files one packet (data, credit, RST), answering
  // CREDIT_REQUEST; ETIMEDOUT if none came.
  Result<void> poll_once(int timeout_ms);
  void shutdown(uint32_t src_port, uint32_t dst_port, uint32_t flags);
  bool reset_by_host(uint32_t src_port, uint32_t dst_port) const;
  // Bytes that arrived on the connection and were not read yet.
  size_t buffered(uint32_t src_port, uint32_t dst_port) const;

  VhostFrontend& frontend() { return fe_; }
  void set_refill(bool on) { o_.refill = on; }

 private:
  struct Rx {
    uint64_t header_gpa, payload_gpa;
  };
  struct Stream {
    bool connected = false, reset = false;
    uint32_t peer_buf_alloc = 0, peer_fwd_cnt = 0, tx_cnt = 0;
    uint32_t fwd_cnt = 0, advertised = 0;
    std::vector<std::byte> data;  // arrived; consumed up to `off`, counted as read up to `credited`
    size_t off = 0, credited = 0;
  };
  static uint64_t key(uint32_t src, uint32_t dst) { return (uint64_t{src} << 32) | dst; }
  // Takes the next used receive buffer and hands its packet to `f` (the
  // payload still in guest memory).
  template <class F>
  Result<void> next(int timeout_ms, F&& f);
  // Files a packet: an RW payload is copied once, into its stream.
  void file(const vsock::Header& h, std::span<const std::byte> payload);
  // The stream read `n` more bytes: credit goes back as Linux gives it.
  void credit(uint32_t src_port, uint32_t dst_port, Stream& s, size_t n);
  void reap_tx();

  VhostFrontend& fe_;
  Options o_;
  std::map<uint16_t, Rx> rx_by_head_;
  std::vector<Rx> rx_free_;
  unsigned rx_posted_ = 0;
  std::map<uint64_t, Stream> streams_;
};

class VsockBridge {
 public:
  // Connects src_port -> dst_port on `guest` and relays the stream to the
  // returned fd's peer until either side ends.
  static Result<std::unique_ptr<VsockBridge>> open(VsockGuest& guest, uint32_t src_port, uint32_t dst_port);
  ~VsockBridge();
  // The client's end of the socketpair (taken once).
  Fd take_fd() { return std::move(client_); }

 private:
  VsockBridge() = default;
  void run();

  VsockGuest* guest_ = nullptr;
  uint32_t src_ = 0, dst_ = 0;
  Fd client_, mine_, stop_;
  std::thread thread_;
};

}  // namespace fsd::frontend
