// VsockDevice: a virtio-vsock device (QEMU's vhost-user-vsock-pci) whose
// stream connections from the guest each carry a StreamSession (9P on
// port 564). It is a ChainDevice: the guest's transmit chains are copied
// out once and fed to the connection state machine (vsock::Host,
// protocol/vsock/connections.h); its receive chains are held until there
// is something to put in them: control packets first, then the sessions'
// replies, within each connection's credit.
//
// Reads: a 9P Rread (ReplySink::space) is read by io_uring straight into
// the receive chains held, as many as the connection's credit covers
// (leaving a few for control packets and other connections); the rest of
// it, if any, goes into a buffer and is copied out as other replies are.
// While a connection's read is in flight its later replies wait, and the
// receive queue's stop waits for the read (UsedRings::io_started).
//
// Memory: a connection holds at most one frame not yet whole and the
// receive window it advertises of unconsumed bytes after it (bytes become
// consumed, and the window opens again, as frames leave for the session,
// or as they arrive while the connection is under its limits), the frames
// its session works on (at most kMaxInFlight), and its replies not yet
// taken by the guest; past a byte budget of those, it takes no new frame
// and consumes nothing, so a guest that never takes its receive buffers or
// never gives credit stalls only its own connections. Connections are capped (VsockOptions::max_connections).
//
// Trust: a connection from a guest port below 1024 comes from guest root
// (binding one takes CAP_NET_BIND_SERVICE in the guest): its session is a
// trusted peer, as virtio-fs trusts its front-end. Any other connection is
// refused with an RST, unless VsockOptions::untrusted_as names the one
// identity it then acts as.
//
// Threads: one worker (see ChainDevice); the sessions run on its Ring.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <unordered_map>
#include <vector>

#include "fsd/core/server.h"
#include "fsd/vhost/chain_device.h"
#include "protocol/vsock/connections.h"

namespace fsd::vhost {

struct VsockOptions {
  uint64_t guest_cid = 3;
  uint32_t port = 564;  // where sessions are served
  size_t max_connections = 16;
  // Each connection's receive window; a session's frames must fit in it.
  uint32_t window = 1 << 20;
  // Connections from unreserved guest ports act as this identity; null:
  // they are refused.
  Credentials::Ref untrusted_as;
  std::string name = "virtio-vsock";  // for logs
};

struct VsockStats {
  uint64_t connections = 0;  // sessions opened
  uint64_t refused = 0;      // untrusted connections refused
  uint64_t dropped = 0;      // connections ended for a protocol error
  uint64_t placed = 0;       // reply bytes read straight into receive chains
};

class VsockDevice : public ChainDevice {
 public:
  VsockDevice(Ring& ring, UsedRings& used, StreamSessionFactory sessions, VsockOptions o);
  ~VsockDevice() override;
  VsockDevice(const VsockDevice&) = delete;

  void take(unsigned queue, std::span<virtio::Chain> chains) override;
  void release(unsigned queue) override;
  // The guest reset the device: its connections are gone, with no RST.
  void stopped() override;
  // Transmit chains go back at once; the guest only frees them.
  bool lazy_completions(unsigned queue) const override { return queue == vsock::kTxQueue; }

  const VsockStats& stats() const { return stats_; }
  size_t connections() const { return conns_.size(); }

  // The device's config space for GET_CONFIG: le64 guest_cid.
  static std::vector<std::byte> config(uint64_t guest_cid);

 private:
  class Conn;
  class Room;
  friend class Conn;
  friend class Room;

  // One packet from the guest's transmit queue.
  void transmit(const virtio::Chain& chain);
  void opened(vsock::ConnId id, bool trusted, bool replaced);
  void forget(vsock::ConnId id);
  // fsd ends `id` (an RST goes to the guest).
  void end(vsock::ConnId id);
  // A connection has output, or may have room again: it is looked at in
  // the next pump.
  void ready(vsock::ConnId id);
  // Fills held receive chains: control packets, then data within credit.
  void pump();
  bool fill_data(const virtio::Chain& rx, uint32_t& len);
  // Room for a reply of `capacity` bytes on `c`, in the receive chains
  // held (null: none to offer now).
  std::unique_ptr<ReplySpace> place(const std::shared_ptr<Conn>& c, size_t capacity);

  Ring& ring_;
  UsedRings& used_;
  StreamSessionFactory sessions_;
  VsockOptions o_;
  vsock::Host host_;
  std::unordered_map<vsock::ConnId, std::shared_ptr<Conn>> conns_;
  std::deque<virtio::Chain> rx_;         // receive chains held, in the order taken
  std::deque<vsock::ConnId> ready_;      // connections to look at, each once
  std::vector<std::byte> scratch_;       // payloads that go to no connection
  std::vector<Room*> rooms_;             // replies being read into receive chains
  bool pumping_ = false;
  VsockStats stats_;
};

// fsd's --vsock-socket PATH[,cid=N][,port=P][,untrusted-as=UID:GID]: the
// socket's path, and the device's options. Throws std::invalid_argument
// with a message naming what is wrong.
struct VsockSocketSpec {
  std::string path;
  uint64_t guest_cid = 3;
  uint32_t port = 564;
  std::optional<std::pair<uid_t, gid_t>> untrusted_as;
};
VsockSocketSpec parse_vsock_socket(std::string_view spec);

// Devices for a vhost-user back-end (VhostUserBackend with a
// ChainDeviceFactory), one per front-end connection.
ChainDeviceFactory vsock_device_factory(StreamSessionFactory sessions, VsockOptions o);

}  // namespace fsd::vhost
