// VirtioChannel: 9P2000.L on a virtqueue (virtio-9p). Each descriptor chain
// carries one T-message in its readable part; the reply goes into the same
// chain's writable part. One channel (one Session) per front-end connection.
//
// Thread-safety: a channel is used by the one thread whose Ring made it.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fsd/core/server.h"
#include "fsd/p9/session.h"

namespace fsd::p9 {

class VirtioChannel : public MessageServer, private ReplySink {
 public:
  VirtioChannel(const ExportSet& exports, Ring& ring, SessionConfig config);

  // Returns the reply's length; -EMSGSIZE if the reply did not fit `out`
  // (it is dropped), or -EBADMSG for a chain that holds no 9P frame or
  // reuses the tag of a request in flight.
  Task<Result<size_t>> handle(Ring& ring, const RequestBytes& in, std::span<const iovec> out) override;

 private:
  struct Pending {
    std::span<const iovec> out;
    size_t written = 0;
  };
  Buffer buffer(size_t capacity) override { return pool_.get(capacity); }
  void recycle(Buffer b) override { pool_.put(std::move(b)); }
  void protocol_error(std::string_view why) override;
  void reply(Buffer frame) override;

  BufferPool pool_;
  Session session_;
  std::unordered_map<uint16_t, Pending*> pending_;  // by tag
};

// Channels for a vhost-user virtio-9p device serving `exports`.
MessageServerFactory virtio_channel_factory(const ExportSet& exports, SessionConfig config);

// The virtio-9p device: feature bit 0 says its config space holds the mount
// tag, as tag_len[2] tag[tag_len].
constexpr uint64_t kVirtio9pMountTag = 1ull << 0;
std::vector<std::byte> virtio9p_config(std::string_view mount_tag);
// Linux's virtio-9p transport keeps its msize below this.
constexpr uint32_t kVirtio9pMaxMsize = 512 * 1024;

}  // namespace fsd::p9
