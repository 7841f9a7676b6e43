// vhost-user message decoding and encoding.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "protocol/vhost_user/message.h"

namespace fsd::vhost_user {
namespace {

std::vector<std::byte> msg(uint32_t request, uint32_t flags, const void* body, uint32_t size) {
  std::vector<std::byte> out(kHeaderSize + size);
  Header h{request, flags, size};
  std::memcpy(out.data(), &h, sizeof h);
  if (size) std::memcpy(out.data() + kHeaderSize, body, size);
  return out;
}

TEST(VhostUser, DecodesLiteralMessages) {
  // GET_FEATURES: 01 00 00 00 | 01 00 00 00 | 00 00 00 00
  std::vector<std::byte> get_features(12);
  get_features[0] = std::byte{1};
  get_features[4] = std::byte{1};
  auto m = decode(get_features, 0);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->request, Request::GetFeatures);
  EXPECT_FALSE(m->need_reply());

  uint64_t features = kFVersion1 | kFProtocolFeatures;
  auto sf = decode(msg(2, kVersion | kFlagNeedReply, &features, 8), 0);
  ASSERT_TRUE(sf.ok());
  EXPECT_EQ(std::get<uint64_t>(sf->payload), features);
  EXPECT_TRUE(sf->need_reply());

  VringAddr a{1, 0, 0x1000, 0x2000, 0x3000, 0};
  auto va = decode(msg(9, kVersion, &a, sizeof a), 0);
  ASSERT_TRUE(va.ok());
  EXPECT_EQ(std::get<VringAddr>(va->payload).avail_user_addr, 0x3000u);
}

TEST(VhostUser, MemTableAndFdCounts) {
  std::vector<std::byte> body(8 + 8 * sizeof(MemRegion));
  uint32_t n = 2;
  std::memcpy(body.data(), &n, 4);
  MemRegion r0{0, 1 << 20, 0x7f00000000, 0}, r1{1 << 20, 1 << 20, 0x7f10000000, 0};
  std::memcpy(body.data() + 8, &r0, sizeof r0);
  std::memcpy(body.data() + 8 + sizeof r0, &r1, sizeof r1);
  auto m = decode(msg(5, kVersion, body.data(), static_cast<uint32_t>(body.size())), 2);
  ASSERT_TRUE(m.ok());
  const auto& t = std::get<MemTable>(m->payload);
  EXPECT_EQ(t.nregions, 2u);
  EXPECT_EQ(t.regions[1].userspace_addr, 0x7f10000000u);
  // one fd per region, exactly
  EXPECT_EQ(decode(msg(5, kVersion, body.data(), static_cast<uint32_t>(body.size())), 1).error(), -EBADMSG);
  EXPECT_EQ(decode(msg(5, kVersion, body.data(), static_cast<uint32_t>(body.size())), 3).error(), -EBADMSG);
  // too many regions
  n = 9;
  std::memcpy(body.data(), &n, 4);
  EXPECT_EQ(decode(msg(5, kVersion, body.data(), static_cast<uint32_t>(body.size())), 9).error(), -EBADMSG);
}

// A front-end sends the regions in use, no more: 8 + 32·n bytes, as QEMU
// does (the Rust virtiofsd rejects a table padded to 8 regions).
TEST(VhostUser, MemTableIsEncodedWithTheRegionsInUseOnly) {
  MemTable t{};
  t.nregions = 1;
  t.regions[0] = MemRegion{0, 1 << 20, 0x7f00000000, 0};
  std::byte out[512];
  auto n = encode_request(out, Request::SetMemTable, t, false);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, kHeaderSize + 8 + sizeof(MemRegion));
  auto back = decode(std::span<const std::byte>(out, *n), 1);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(std::get<MemTable>(back->payload).regions[0].userspace_addr, 0x7f00000000u);
}

TEST(VhostUser, VringFileCarriesAnFdUnlessFlagged) {
  uint64_t with_fd = 1, no_fd = 1 | kVringNoFd;
  auto a = decode(msg(12, kVersion, &with_fd, 8), 1);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(std::get<VringFile>(a->payload).has_fd);
  EXPECT_EQ(decode(msg(12, kVersion, &with_fd, 8), 0).error(), -EBADMSG);
  auto b = decode(msg(13, kVersion, &no_fd, 8), 0);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(std::get<VringFile>(b->payload).has_fd);
  uint64_t junk = 1ull << 40;
  EXPECT_EQ(decode(msg(12, kVersion, &junk, 8), 1).error(), -EBADMSG);
}

TEST(VhostUser, RejectsMalformedMessages) {
  uint64_t v = 0;
  EXPECT_EQ(decode(msg(2, 0 /* version 0 */, &v, 8), 0).error(), -EBADMSG);
  EXPECT_EQ(decode(msg(2, kVersion, &v, 4), 0).error(), -EBADMSG);  // short u64
  auto m = msg(2, kVersion, &v, 8);
  m.pop_back();
  EXPECT_EQ(decode(m, 0).error(), -EBADMSG);  // size disagrees with bytes
  std::vector<std::byte> big(kHeaderSize);
  Header h{2, kVersion, kMaxPayload + 1};
  std::memcpy(big.data(), &h, sizeof h);
  EXPECT_EQ(decode_header(big).error(), -EBADMSG);
  // an unknown request decodes (the device answers it), with no payload
  auto u = decode(msg(99, kVersion, &v, 8), 0);
  ASSERT_TRUE(u.ok());
  EXPECT_TRUE(std::holds_alternative<None>(u->payload));
}

TEST(VhostUser, EncodesRepliesAndRequests) {
  std::vector<std::byte> out(512);
  auto n = encode_reply(out, Request::GetVringBase, VringState{1, 42});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, kHeaderSize + 8);
  Header h;
  std::memcpy(&h, out.data(), sizeof h);
  EXPECT_EQ(h.request, 11u);
  EXPECT_EQ(h.flags, kVersion | kFlagReply);
  auto back = decode(std::span<const std::byte>(out).first(*n), 0);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(std::get<VringState>(back->payload).num, 42u);
  auto r = encode_request(out, Request::SetVringCall, VringFile{2, true}, false);
  ASSERT_TRUE(r.ok());
  auto d = decode(std::span<const std::byte>(out).first(*r), 1);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(std::get<VringFile>(d->payload).index, 2u);
  EXPECT_STREQ(request_name(5), "SET_MEM_TABLE");
}

}  // namespace
}  // namespace fsd::vhost_user
