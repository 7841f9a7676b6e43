// VhostUserBackend: a virtio-fs (or virtio-9p) device served over vhost-user
// to a front-end such as QEMU's vhost-user-fs-pci, on one unix socket.
//
// Threads: a control thread speaks the vhost-user protocol (features,
// memory table, vring set-up) and a data-plane worker with its own Ring
// waits on kick eventfds, walks descriptor chains and runs fuse::Server on
// them, reading and writing file data straight from and into guest memory.
// The control thread never touches a running queue: it posts commands to the
// worker (start, stop-and-drain, swap call fd, swap memory) and waits.
//
// When the front-end disconnects every queue is stopped, guest memory is
// unmapped and FUSE state dropped; then the backend either waits for the
// next front-end or finishes, as configured.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "fsd/uring/ring.h"
#include "fsd/util/fd.h"
#include "fsd/vfs/vfs.h"

namespace fsd {

struct VhostUserOptions {
  // virtio-fs (id 26: FUSE, hiprio + request queues) or virtio-9p (id 9: 9P
  // frames on one queue; the export's tag is the mount tag).
  enum class Device { kFs, k9p } device = Device::kFs;
  unsigned request_queues = 1;   // virtio-fs: plus the hiprio queue
  bool exit_on_disconnect = false;
  // Where metadata syscalls run (see Ring::MetadataIo).
  Ring::MetadataIo metadata_io = Ring::MetadataIo::kAdaptive;
  // How long an idle queue keeps looking for the guest's next request before
  // it asks for a kick and sleeps (0: never poll). A request found by
  // polling costs neither side an eventfd wake-up.
  unsigned poll_us = 50;
};

struct VhostUserStats {
  uint64_t requests = 0;
  uint64_t bad_chains = 0;     // chains refused (malformed or unmapped)
  uint64_t bad_requests = 0;   // FUSE requests that did not decode
  uint64_t sessions = 0;       // front-end connections served
};

class VhostUserBackend {
 public:
  // Binds `socket_path` (throws std::runtime_error with a one-line message).
  VhostUserBackend(Vfs& vfs, std::string socket_path, VhostUserOptions options);
  // Uses an already bound and listening socket (libvirt's --fd).
  VhostUserBackend(Vfs& vfs, Fd listening, VhostUserOptions options);
  ~VhostUserBackend();
  VhostUserBackend(const VhostUserBackend&) = delete;

  void start();
  // Disconnects any front-end, stops the threads, removes the socket file.
  void stop();
  // True once a front-end disconnected and exit_on_disconnect is set.
  bool finished() const { return finished_.load(); }
  // Called (from the control thread) when finished() becomes true.
  void on_finished(std::function<void()> f) { on_finished_ = std::move(f); }
  VhostUserStats stats() const;
  const std::string& socket_path() const { return socket_path_; }

 private:
  class Device;

  void control_loop();

  Vfs& vfs_;
  std::string socket_path_;
  VhostUserOptions options_;
  Fd listen_fd_;
  Fd stop_fd_;  // eventfd: wakes the control thread
  std::thread control_;
  std::unique_ptr<Device> device_;
  std::atomic<bool> finished_{false};
  std::function<void()> on_finished_;
  bool stopped_ = false;
};

}  // namespace fsd
