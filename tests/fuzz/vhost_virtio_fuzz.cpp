// libFuzzer target: a hostile vhost-user front-end and a hostile guest.
// The input is split into a vhost-user message (decoded with a fuzzed fd
// count) and a guest memory image whose descriptor table and rings are
// walked and popped as the device would.
#include <cstring>
#include <vector>

#include "protocol/vhost_user/message.h"
#include "protocol/virtio/virtqueue.h"

using namespace fsd;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  size_t msg_len = data[0] % 128;
  size_t nfds = data[1] % 10;
  uint16_t num = static_cast<uint16_t>(1u << (data[2] % 5));  // 1..16
  data += 4;
  size -= 4;
  msg_len = std::min(msg_len, size);
  (void)vhost_user::decode({reinterpret_cast<const std::byte*>(data), msg_len}, nfds);

  // Guest memory: 64 KiB at gpa 0x1000 holding the rest of the input.
  std::vector<std::byte> ram(65536);
  std::memcpy(ram.data(), data + msg_len, std::min(size - msg_len, ram.size()));
  virtio::GuestMemory mem({virtio::Region{0x1000, ram.size(), 0x1000, ram.data()}});
  auto* desc = reinterpret_cast<virtio::Desc*>(ram.data());
  virtio::SplitQueue q({desc, ram.data() + 0x800, ram.data() + 0xc00}, num, true, 0);
  virtio::Chain chain;
  for (int i = 0; i < 64; i++) {
    auto head = q.pop();
    if (!head.ok() || !head->has_value()) break;
    if (virtio::walk_chain(mem, desc, num, **head, chain).ok()) {
      // Touch every byte the chain names, as the device would.
      unsigned sum = 0;
      for (const auto& v : chain.readable)
        for (size_t j = 0; j < v.iov_len; j++) sum += static_cast<unsigned>(static_cast<std::byte*>(v.iov_base)[j]);
      for (const auto& v : chain.writable) std::memset(v.iov_base, 0, v.iov_len);
      volatile unsigned sink = sum;
      (void)sink;
    }
    q.push(**head, 0);
    (void)q.should_notify();
  }
  return 0;
}
