#include "fsd/p9/virtio_channel.h"

#include <spdlog/spdlog.h>

#include <cstring>

#include "fsd/core/iovec.h"
#include "protocol/p9/codec.h"

namespace fsd::p9 {
namespace {

uint16_t tag_of(const Buffer& frame) {
  uint16_t tag;
  std::memcpy(&tag, frame.data() + 5, sizeof tag);  // size[4] type[1] tag[2]
  return tag;
}

}  // namespace

VirtioChannel::VirtioChannel(const ExportSet& exports, Ring& ring, SessionConfig config)
    : pool_(config.max_msize), session_(exports, ring, *this, config, Peer{.who = nullptr, .trusted = true}) {}

Task<Result<size_t>> VirtioChannel::handle(Ring&, const RequestBytes& in, std::span<const iovec> out) {
  size_t len = in.size();
  if (len < kHeaderSize || len > session_.max_frame()) co_return Error{-EBADMSG};
  // The whole frame, Twrite data too, is copied out of guest memory once
  // and decoded from the copy.
  Buffer frame = pool_.get(len);
  frame.set_size(in.copy_to(0, frame.room().first(len)));
  uint16_t tag = tag_of(frame);
  Pending p{out, 0};
  if (!pending_.emplace(tag, &p).second) {
    pool_.put(std::move(frame));
    co_return Error{-EBADMSG};
  }
  co_await session_.handle(std::move(frame));
  pending_.erase(tag);
  if (p.written == 0) co_return Error{-EMSGSIZE};
  co_return p.written;
}

void VirtioChannel::protocol_error(std::string_view why) { spdlog::warn("virtio-9p: {}", why); }

void VirtioChannel::reply(Buffer frame) {
  if (auto it = pending_.find(tag_of(frame)); it != pending_.end()) {
    // A reply that does not fit the chain is not sent at all.
    if (scatter(frame.bytes(), it->second->out)) it->second->written = frame.size();
  }
  pool_.put(std::move(frame));
}

MessageServerFactory virtio_channel_factory(const ExportSet& exports, SessionConfig config) {
  return [&exports, config](Ring& ring) -> std::shared_ptr<MessageServer> {
    return std::make_shared<VirtioChannel>(exports, ring, config);
  };
}

std::vector<std::byte> virtio9p_config(std::string_view mount_tag) {
  std::vector<std::byte> c(2 + mount_tag.size());
  uint16_t len = static_cast<uint16_t>(mount_tag.size());
  std::memcpy(c.data(), &len, 2);
  std::memcpy(c.data() + 2, mount_tag.data(), mount_tag.size());
  return c;
}

}  // namespace fsd::p9
