// VhostFrontend: a small vhost-user front-end (the role QEMU plays) for
// tests and benchmarks. It creates guest memory (a memfd), connects to a
// back-end's socket, negotiates, sets up split virtqueues, and places
// requests in them as a guest driver would: FUSE requests for virtio-fs.
// It can also write arbitrary descriptors and messages, for hostile tests.
//
// Single-threaded. fuse() has one request in flight; submit_fuse() and
// reply_of() let a caller keep many in flight on one queue, as a guest with
// several busy threads does (the benchmarks use that).
#pragma once

#include <linux/fuse.h>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"
#include "common/result.h"
#include "protocol/vhost_user/message.h"
#include "protocol/virtio/virtqueue.h"

namespace fsd::frontend {

class VhostFrontend {
 public:
  struct Options {
    size_t memory = 64 << 20;
    size_t memfd_size = 0;                  // the memfd's real size (0: memory); smaller lies to the back-end
    uint16_t queue_size = 256;
    unsigned queues = 2;                    // virtio-fs: hiprio + 1 request queue
    uint64_t gpa_base = 0x40000000;         // guest-physical address of the memory
    uint64_t features = vhost_user::kFVersion1 | vhost_user::kFRingIndirectDesc |
                        vhost_user::kFRingEventIdx | vhost_user::kFProtocolFeatures;
    bool poison_replies = true;             // fill reply buffers with 0xAA first (tests); off for benchmarks
    // Allocate every page of guest memory at once, as in a guest that has
    // run a while (benchmarks: else they time the first touch of each page).
    bool populate = false;
  };

  static Result<std::unique_ptr<VhostFrontend>> connect(const std::string& socket_path, Options o);
  static Result<std::unique_ptr<VhostFrontend>> connect(const std::string& socket_path) {
    return connect(socket_path, Options{});
  }
  ~VhostFrontend();

  // The whole start-up sequence QEMU performs, up to enabled rings.
  Result<void> negotiate();
  // Sends the memory table again, as QEMU does when guest memory changes;
  // the back-end's acknowledgement (with REPLY_ACK) decides the result.
  Result<void> set_mem_table();
  // Sends one message (with fds); with need_reply or expect_reply, returns the reply.
  Result<vhost_user::Message> send(vhost_user::Request r, const vhost_user::Payload& p, std::vector<int> fds = {},
                                   bool need_reply = false, bool expect_reply = false);
  void disconnect() { sock_.reset(); }
  bool connected() const { return sock_.valid(); }
  uint64_t acked_features() const { return features_; }

  // ---- guest memory
  std::byte* host(uint64_t gpa) { return mem_ + (gpa - o_.gpa_base); }
  uint64_t gpa(const void* p) const { return o_.gpa_base + static_cast<uint64_t>(static_cast<const std::byte*>(p) - mem_); }
  // A buffer in the data area (reused round-robin).
  uint64_t alloc(size_t n);

  // ---- rings
  virtio::Desc* desc(unsigned q) { return reinterpret_cast<virtio::Desc*>(mem_ + ring_offset(q)); }
  uint16_t queue_size() const { return o_.queue_size; }
  struct Buf {
    uint64_t gpa;
    uint32_t len;
    bool writable;
  };
  // Writes a chain of direct descriptors starting at a fresh index; returns its head.
  uint16_t add_chain(unsigned q, std::span<const Buf> bufs);
  // Writes an indirect table in guest memory and one descriptor pointing to it.
  uint16_t add_indirect(unsigned q, std::span<const Buf> bufs);
  void publish(unsigned q, uint16_t head);
  // Sets the avail index directly (hostile tests).
  void set_avail_idx(unsigned q, uint16_t idx);
  void kick(unsigned q);
  // Kicks only when the back-end asked to be told (EVENT_IDX's avail_event),
  // as a guest driver does; without EVENT_IDX, always.
  void kick_if_needed(unsigned q);
  struct Used {
    uint32_t id, len;
  };
  // Waits for the back-end to return a chain (via the call eventfd).
  Result<Used> wait_used(unsigned q, int timeout_ms = 10000);
  // The same on several queues at once (a multiqueue guest): the first
  // chain any of them returns, and its queue.
  struct UsedOn {
    unsigned queue;
    Used used;
  };
  Result<UsedOn> wait_used_any(std::span<const unsigned> queues, int timeout_ms = 10000);
  // Looks at the used ring until the back-end returns a chain, without
  // touching the call eventfd (hostile tests that keep its counter full).
  Result<Used> poll_used(unsigned q, int timeout_ms = 10000);
  // Queue q's call eventfd (hostile tests change its flags and counter).
  int call_fd(unsigned q) const { return call_[q].get(); }

  // ---- FUSE over the request queue
  struct FuseReply {
    int error = 0;                 // -errno from fuse_out_header
    std::vector<std::byte> body;   // what follows the header
    uint32_t used_len = 0;
  };
  // Sends one FUSE request: header + args (+ payload in its own
  // descriptors), with `reply_size` bytes of writable buffers split into
  // `reply_pages`-byte descriptors after a descriptor of its own for the
  // fuse_out_header, so that the data is page-aligned as a driver's is (0:
  // one descriptor for it all). `indirect` puts the
  // chain in an indirect table.
  Result<FuseReply> fuse(unsigned q, uint32_t opcode, uint64_t nodeid, std::span<const std::byte> args,
                         size_t reply_size, std::span<const std::byte> payload = {}, size_t reply_pages = 0,
                         bool indirect = false);
  // INIT as Linux sends it (asking for FUSE_SECURITY_CTX too, as a kernel
  // with LSMs does).
  Result<FuseReply> fuse_init();
  // The next request's last `units` * 8 bytes of arguments are its
  // extensions (fuse_in_header.total_extlen).
  void extensions_in_next(uint16_t units) { extlen_ = units; }
  // FUSE_LOOKUP of `name` in directory `parent` (its reply body, on success,
  // is a fuse_entry_out).
  Result<FuseReply> fuse_lookup(uint64_t parent, std::string_view name);

  // The same request, published and kicked without waiting. The reply is
  // read with reply_of() once wait_used() returns this head; its body is a
  // view into guest memory, valid until the data area wraps around.
  struct Pending {
    uint16_t head;
    uint64_t unique;
    uint64_t out_gpa;
    uint64_t in_gpa;  // the request's header and arguments (hostile tests rewrite them)
  };
  struct ReplyView {
    int error = 0;
    std::span<const std::byte> body;
  };
  Pending submit_fuse(unsigned q, uint32_t opcode, uint64_t nodeid, std::span<const std::byte> args, size_t reply_size,
                      std::span<const std::byte> payload = {}, size_t reply_pages = 0, bool indirect = false);
  Result<ReplyView> reply_of(const Pending& p, const Used& u);
  uint64_t unique() { return ++unique_; }

 private:
  VhostFrontend(Fd sock, Fd memfd, std::byte* mem, Options o) : sock_(std::move(sock)), memfd_(std::move(memfd)), mem_(mem), o_(o) {}
  // Takes queue q's next used entry, if the back-end has returned one; else
  // asks to be interrupted for it (EVENT_IDX's used_event) and looks again.
  std::optional<Used> take_used(unsigned q);
  size_t ring_offset(unsigned q) const { return q * 0x20000; }
  size_t avail_offset(unsigned q) const { return ring_offset(q) + 0x8000; }
  size_t used_offset(unsigned q) const { return ring_offset(q) + 0x10000; }
  static constexpr size_t kDataStart = 2 << 20;

  Fd sock_, memfd_;
  std::byte* mem_;
  Options o_;
  std::vector<Fd> kick_, call_;
  std::vector<Buf> chain_;
  std::vector<uint16_t> next_desc_, avail_idx_, last_used_, kicked_idx_;
  std::vector<std::vector<uint8_t>> busy_;        // per queue: descriptors of chains in flight
  std::vector<std::vector<uint16_t>> chain_len_;  // per queue: head -> its chain's length (0: free)
  size_t data_next_ = kDataStart;
  uint64_t features_ = 0, protocol_features_ = 0;
  uint64_t unique_ = 0;
  uint16_t extlen_ = 0;  // the next request's total_extlen
};

}  // namespace fsd::frontend
