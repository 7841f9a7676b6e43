// ChainDevice: the device side of a virtio device whose queues are not
// request/reply. virtio-fs and virtio-9p answer each chain with a reply in
// the same chain (a MessageServer, fsd/core/server.h). A stream device such
// as virtio-vsock does not: it consumes the chains of its transmit queue,
// keeps the chains of its receive queue, and fills them when it has data.
//
// The back-end (fsd/vhost/backend.h) walks each chain the guest makes
// available and hands it over; the device gives each back through
// UsedRings, at once or later. A chain's buffers are guest memory, which
// the guest may change at any time: the device copies what it decodes out
// of them once, before it looks at it.
//
// Threads: a chain device and every call into it run on one worker thread,
// whose Ring it is made with; UsedRings is called from there too.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "protocol/virtio/virtqueue.h"

namespace fsd {
class Ring;
}

namespace fsd::vhost {

// The back-end's side: where a chain device gives chains back.
class UsedRings {
 public:
  virtual ~UsedRings() = default;
  // Returns chain `head` of `queue` to the guest, `len` bytes written.
  virtual void give(unsigned queue, uint16_t head, uint32_t len) = 0;
  // Interrupts the guest for what was given on `queue`, if it asked to be.
  // A device calls it once after a batch of give()s.
  virtual void notify(unsigned queue) = 0;
  // The device starts (io_started) and ends (io_done) I/O into buffers of
  // chains of `queue` it holds, such as a file read into receive buffers:
  // a stop of the queue waits until none is in flight, so that no buffer
  // is written after release().
  virtual void io_started(unsigned queue) = 0;
  virtual void io_done(unsigned queue) = 0;
};

class ChainDevice {
 public:
  virtual ~ChainDevice() = default;
  // Chains the guest made available on `queue`, in its order. The device
  // gives each back through UsedRings, now or later, until release().
  virtual void take(unsigned queue, std::span<virtio::Chain> chains) = 0;
  // `queue` stops (the front-end stops it, changes the memory table, or
  // goes), with no I/O of the device's into it in flight: the device gives
  // back every chain of it that it still holds (with what it has written,
  // or 0), and uses none of their buffers again.
  virtual void release(unsigned queue) = 0;
  // The front-end stopped the last running queue (GET_VRING_BASE): the
  // guest reset the device (a reboot, a driver reload) and has forgotten
  // its side of everything the device holds for it.
  virtual void stopped() {}
  // Whether the guest may be told late of chains given back on `queue`,
  // because it only frees them (a transmit queue): the back-end then
  // interrupts it once half the ring waits instead of after every batch.
  // The device must give such chains back at once in take().
  virtual bool lazy_completions(unsigned /*queue*/) const { return false; }
};

// Makes the device for a new front-end connection, on the worker thread
// that will run it.
using ChainDeviceFactory = std::function<std::shared_ptr<ChainDevice>(Ring& ring, UsedRings& used)>;

}  // namespace fsd::vhost
