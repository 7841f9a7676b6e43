// VhostUserBackend: a virtio device (virtio-fs, virtio-9p, virtio-vsock)
// served over vhost-user to a front-end such as QEMU's vhost-user-fs-pci,
// on one unix socket. It knows virtqueues, not what travels on them. A
// request/reply device's chains each go to a MessageServer
// (fsd/core/server.h) as their readable and writable buffers in guest
// memory, so file data moves straight between guest memory and the file.
// A stream device's chains go to a ChainDevice (fsd/vhost/chain_device.h),
// which gives them back when it is done with them.
//
// Threads: a control thread speaks the vhost-user protocol (features,
// memory table, vring set-up), and data-plane workers, each with its own
// Ring, wait on kick eventfds, walk descriptor chains and run the server on
// them. Each queue has one owning worker that pops its ring; a busy queue's
// chains are spread over the other workers too (VirtioDevice::workers).
// The workers come from a VhostWorkerPool, which many devices may share.
// The control thread never touches a running queue: it posts commands to
// its owner (start, stop-and-drain) and waits.
//
// When the front-end disconnects every queue is stopped, guest memory is
// unmapped and FUSE state dropped; then the backend either waits for the
// next front-end or finishes, as configured.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "common/fd.h"
#include "fsd/core/server.h"
#include "fsd/core/unix_socket.h"
#include "fsd/uring/ring.h"
#include "fsd/vhost/chain_device.h"

namespace fsd {

// What the device is, as the front-end sees it.
struct VirtioDevice {
  std::string name = "virtio device";  // for logs, e.g. "virtio-fs 'store'"
  unsigned queues = 1;                 // virtio-fs: hiprio + request queues
  // Threads serving the queues, each with its own Ring. More than one
  // needs a server whose handle() may run on several threads at once; a
  // chain device always has one.
  unsigned workers = 1;
  uint64_t features = 0;               // device-specific feature bits
  std::vector<std::byte> config;       // its config space (GET_CONFIG); may be empty
};

namespace vhost_detail {
class Device;
struct Worker;
}  // namespace vhost_detail

// Data-plane threads for vhost-user devices, each with its own Ring. One
// pool may serve many devices (VhostUserOptions::pool): with many
// front-ends (guests) on one fsd, the threads then number the pool's size,
// not the guests'. Its threads start with the first device that uses it
// (after fsd has entered its sandbox) and stop when the pool goes, after
// every device using it.
class VhostWorkerPool {
 public:
  VhostWorkerPool(unsigned workers, Ring::MetadataIo metadata_io);
  ~VhostWorkerPool();
  VhostWorkerPool(const VhostWorkerPool&) = delete;
  unsigned size() const { return size_; }

 private:
  friend class vhost_detail::Device;
  // Makes the workers and starts their threads, the first time.
  const std::vector<std::unique_ptr<vhost_detail::Worker>>& start();
  // Interrupts a worker whose write to a call eventfd has waited too long
  // (a front-end can fill the counter and make the fd blocking): nothing a
  // front-end does holds a worker, which other devices share, for long.
  void watchdog();

  unsigned size_;
  Ring::MetadataIo metadata_io_;
  std::once_flag started_;
  std::vector<std::unique_ptr<vhost_detail::Worker>> workers_;
  std::atomic<unsigned> next_{0};  // spreads the devices' first workers over the pool
  std::thread watchdog_;
  std::mutex watch_mu_;  // guards watch_exit_
  std::condition_variable watch_cv_;
  bool watch_exit_ = false;
};

struct VhostUserOptions {
  VirtioDevice device;
  // The workers that serve the device's queues, shared with other devices;
  // null: a pool of device.workers threads of its own. A device uses
  // device.workers of the pool's threads at most.
  std::shared_ptr<VhostWorkerPool> pool;
  bool exit_on_disconnect = false;
  // Where metadata syscalls run (see Ring::MetadataIo), in a pool of the
  // device's own.
  Ring::MetadataIo metadata_io = Ring::MetadataIo::kAdaptive;
  // Mode and group of the socket file (when fsd creates it).
  SocketAccess socket_access;
  // How long an idle queue keeps looking for the guest's next request before
  // it asks for a kick and sleeps (0: never poll). A request found by
  // polling costs neither side an eventfd wake-up.
  unsigned poll_us = 50;
  // With several workers: a queue's batch is spread over them only while
  // its requests take longer than this on average (see the .cpp's dispatch).
  unsigned handoff_ns = 20'000;
};

struct VhostUserStats {
  uint64_t requests = 0;
  uint64_t bad_chains = 0;     // chains refused (malformed or unmapped)
  uint64_t bad_requests = 0;   // requests the server refused as malformed
  uint64_t sessions = 0;       // front-end connections served
};

// What serves a device's queues: a request/reply server, or a chain device.
using DeviceServers = std::variant<MessageServerFactory, vhost::ChainDeviceFactory>;

class VhostUserBackend {
 public:
  // Binds `socket_path` (throws std::runtime_error with a one-line message).
  // Each front-end connection gets a fresh server (or chain device) from
  // `servers`, made on the worker thread.
  VhostUserBackend(std::string socket_path, DeviceServers servers, VhostUserOptions options);
  // Uses an already bound and listening socket (libvirt's --fd).
  VhostUserBackend(Fd listening, DeviceServers servers, VhostUserOptions options);
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
  void control_loop();

  std::string socket_path_;
  DeviceServers servers_;
  VhostUserOptions options_;
  Fd listen_fd_;
  SocketFile socket_file_;  // when fsd made the socket: removed at stop
  Fd stop_fd_;  // eventfd: wakes the control thread
  std::thread control_;
  std::unique_ptr<vhost_detail::Device> device_;
  std::atomic<bool> finished_{false};
  std::function<void()> on_finished_;
  bool stopped_ = false;
};

}  // namespace fsd
