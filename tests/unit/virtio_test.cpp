// Split virtqueue walking and ring protocol over a fake guest memory.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "protocol/virtio/virtqueue.h"

namespace fsd::virtio {
namespace {

constexpr uint64_t kGpa = 0x100000;
constexpr uint64_t kUva = 0x7f0000000000;
constexpr uint16_t kNum = 8;

class Guest : public ::testing::Test {
 protected:
  Guest() : ram_(1 << 20), mem_({Region{kGpa, ram_.size(), kUva, ram_.data()}}) {}

  // Guest-physical addresses of the rings and a data area.
  static constexpr uint64_t kDesc = kGpa, kAvail = kGpa + 0x1000, kUsed = kGpa + 0x2000, kData = kGpa + 0x10000;
  Desc* desc() { return reinterpret_cast<Desc*>(host(kDesc)); }
  std::byte* host(uint64_t gpa) { return ram_.data() + (gpa - kGpa); }
  void set(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    desc()[i] = Desc{addr, len, flags, next};
  }
  SplitQueue queue(bool event_idx = false) {
    return SplitQueue({desc(), host(kAvail), host(kUsed)}, kNum, event_idx, 0);
  }
  void publish(uint16_t head) {  // what a driver does: ring entry, then idx
    uint16_t idx;
    std::memcpy(&idx, host(kAvail) + 2, 2);
    std::memcpy(host(kAvail) + 4 + 2 * (idx % kNum), &head, 2);
    idx++;
    std::memcpy(host(kAvail) + 2, &idx, 2);
  }

  std::vector<std::byte> ram_;
  GuestMemory mem_;
  Chain chain_;
};

TEST_F(Guest, WalksReadableThenWritableBuffers) {
  set(0, kData, 40, kDescNext, 3);
  set(3, kData + 100, 24, kDescNext, 5);
  set(5, kData + 200, 4096, kDescWrite);
  ASSERT_TRUE(walk_chain(mem_, desc(), kNum, 0, chain_).ok());
  ASSERT_EQ(chain_.readable.size(), 2u);
  ASSERT_EQ(chain_.writable.size(), 1u);
  EXPECT_EQ(chain_.readable[0].iov_base, host(kData));
  EXPECT_EQ(chain_.readable[1].iov_len, 24u);
  EXPECT_EQ(chain_.readable_bytes, 64u);
  EXPECT_EQ(chain_.writable_bytes, 4096u);
  EXPECT_EQ(chain_.writable[0].iov_base, host(kData + 200));
}

TEST_F(Guest, WalksIndirectTables) {
  auto* table = reinterpret_cast<Desc*>(host(kData + 0x8000));
  table[0] = Desc{kData, 10, kDescNext, 1};
  table[1] = Desc{kData + 64, 20, kDescNext | kDescWrite, 2};
  table[2] = Desc{kData + 128, 30, kDescWrite, 0};
  set(2, kData + 0x8000, 3 * sizeof(Desc), kDescIndirect);
  ASSERT_TRUE(walk_chain(mem_, desc(), kNum, 2, chain_).ok());
  EXPECT_EQ(chain_.readable_bytes, 10u);
  EXPECT_EQ(chain_.writable_bytes, 50u);
}

TEST_F(Guest, RejectsHostileChains) {
  // a loop
  set(0, kData, 8, kDescNext, 1);
  set(1, kData, 8, kDescNext, 0);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
  // next out of the table
  set(0, kData, 8, kDescNext, kNum);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
  // head out of the table
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, kNum, chain_).error(), -EBADMSG);
  // a buffer outside guest memory, and one running off its end
  set(0, 0x10, 8, 0);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
  set(0, kGpa + ram_.size() - 4, 8, 0);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
  // an address that overflows 64 bits
  set(0, UINT64_MAX - 2, 8, 0);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
  // readable after writable
  set(0, kData, 8, kDescNext | kDescWrite, 1);
  set(1, kData, 8, 0);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
  // nested indirect
  auto* table = reinterpret_cast<Desc*>(host(kData + 0x8000));
  table[0] = Desc{kData + 0x9000, sizeof(Desc), kDescIndirect, 0};
  set(0, kData + 0x8000, sizeof(Desc), kDescIndirect);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
  // indirect table of a length that is not whole descriptors
  set(0, kData + 0x8000, 17, kDescIndirect);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
  // a loop inside an indirect table
  table[0] = Desc{kData, 8, kDescNext, 1};
  table[1] = Desc{kData, 8, kDescNext, 0};
  set(0, kData + 0x8000, 2 * sizeof(Desc), kDescIndirect);
  EXPECT_EQ(walk_chain(mem_, desc(), kNum, 0, chain_).error(), -EBADMSG);
}

TEST(GuestMemoryTest, BuffersMayNotCrossRegions) {
  std::vector<std::byte> a(4096), b(4096);
  GuestMemory mem({Region{0, 4096, 0x1000, a.data()}, Region{4096, 4096, 0x9000, b.data()}});
  EXPECT_EQ(mem.translate(4000, 96), a.data() + 4000);
  EXPECT_EQ(mem.translate(4096, 10), b.data());
  EXPECT_EQ(mem.translate(4000, 200), nullptr);  // contiguous in the guest, not on the host
  EXPECT_EQ(mem.translate_uva(0x9000 + 4095, 1), b.data() + 4095);
  EXPECT_EQ(mem.translate_uva(0x9000 + 4095, 2), nullptr);
}

TEST_F(Guest, PopPushAndNotify) {
  auto q = queue();
  auto none = q.pop();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  publish(3);
  publish(5);
  EXPECT_EQ(**q.pop(), 3);
  EXPECT_EQ(**q.pop(), 5);
  EXPECT_FALSE(q.pop()->has_value());
  q.push(3, 100);
  uint16_t used_idx;
  uint32_t id, len;
  std::memcpy(&used_idx, host(kUsed) + 2, 2);
  std::memcpy(&id, host(kUsed) + 4, 4);
  std::memcpy(&len, host(kUsed) + 8, 4);
  EXPECT_EQ(used_idx, 1);
  EXPECT_EQ(id, 3u);
  EXPECT_EQ(len, 100u);
  EXPECT_TRUE(q.should_notify());
  uint16_t no_interrupt = kAvailNoInterrupt;
  std::memcpy(host(kAvail), &no_interrupt, 2);
  q.push(5, 0);
  EXPECT_FALSE(q.should_notify());
}

TEST_F(Guest, DriverPublishingTooMuchIsAnError) {
  auto q = queue();
  uint16_t idx = kNum + 1;
  std::memcpy(host(kAvail) + 2, &idx, 2);
  EXPECT_EQ(q.pop().error(), -EBADMSG);
  idx = 1;
  std::memcpy(host(kAvail) + 2, &idx, 2);
  uint16_t bad_head = kNum;
  std::memcpy(host(kAvail) + 4, &bad_head, 2);
  EXPECT_EQ(queue().pop().error(), -EBADMSG);
}

TEST_F(Guest, EventIdxSuppressesInterrupts) {
  auto q = queue(true);
  for (int i = 0; i < 3; i++) publish(static_cast<uint16_t>(i));
  for (int i = 0; i < 3; i++) ASSERT_TRUE(q.pop().ok());
  // The driver wants an interrupt once used_idx passes 2 (used_event = 2).
  uint16_t used_event = 2;
  std::memcpy(host(kAvail) + 4 + 2 * kNum, &used_event, 2);
  q.push(0, 0);
  EXPECT_TRUE(q.should_notify());  // first signal is always sent
  q.push(1, 0);
  EXPECT_FALSE(q.should_notify());  // used_idx 2: not past event 2 yet
  q.push(2, 0);
  EXPECT_TRUE(q.should_notify());  // used_idx 3 crossed event+1
  q.arm_kick();
  uint16_t avail_event;
  std::memcpy(&avail_event, host(kUsed) + 4 + 8 * kNum, 2);
  EXPECT_EQ(avail_event, 3);
}

}  // namespace
}  // namespace fsd::virtio
