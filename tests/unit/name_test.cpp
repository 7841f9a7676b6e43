// Name (fsd/vfs/name.h) and RequestBytes (fsd/core/request_bytes.h): the
// copies that make a client's bytes fsd's own before they are checked.
#include <gtest/gtest.h>

#include <string>

#include "fsd/core/request_bytes.h"
#include "fsd/vfs/name.h"

namespace fsd {
namespace {

TEST(Name, TakesOnePlainComponent) {
  for (std::string_view ok : {"a", "file.txt", "...", ".hidden", "with space", "\xff\xfe"}) {
    auto n = Name::of(ok);
    ASSERT_TRUE(n.ok()) << ok;
    EXPECT_EQ(n->view(), ok);
    EXPECT_STREQ(n->c_str(), std::string(ok).c_str());
  }
  EXPECT_EQ(Name::of(std::string(NAME_MAX, 'x'))->view().size(), size_t{NAME_MAX});
}

TEST(Name, RefusesWhatCouldClimbOrCut) {
  using namespace std::string_view_literals;
  for (std::string_view bad : {""sv, "."sv, ".."sv, "../x"sv, "a/b"sv, "/"sv, "x/"sv, "a\0b"sv, "\0"sv}) {
    auto n = Name::of(bad);
    ASSERT_FALSE(n.ok()) << bad;
    EXPECT_EQ(n.error(), -EINVAL) << bad;
  }
  EXPECT_EQ(Name::of(std::string(NAME_MAX + 1, 'x')).error(), -ENAMETOOLONG);
}

TEST(Name, IsACopy) {
  std::string s = "valid";
  auto n = Name::of(s);
  ASSERT_TRUE(n.ok());
  s.replace(0, 5, "../xx");  // the client's buffer changes afterwards
  EXPECT_EQ(n->view(), "valid");
}

TEST(RequestBytes, CopiesAcrossBuffersFromAnyOffset) {
  std::string a = "hello ", b = "wor", c = "ld";
  iovec v[] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
  auto r = RequestBytes::in_shared(v);
  EXPECT_EQ(r.size(), 11u);
  EXPECT_FALSE(r.private_view().has_value());  // shared bytes are never viewed in place
  std::string out(5, '.');
  EXPECT_EQ(r.copy_to(4, std::as_writable_bytes(std::span(out))), 5u);
  EXPECT_EQ(out, "o wor");
  std::string tail(8, '.');
  EXPECT_EQ(r.copy_to(7, std::as_writable_bytes(std::span(tail))), 4u);  // only 4 left
  EXPECT_EQ(tail.substr(0, 4), "orld");
  EXPECT_EQ(r.copy_to(11, std::as_writable_bytes(std::span(tail))), 0u);
  std::vector<iovec> payload;
  r.payload(7, payload);
  ASSERT_EQ(payload.size(), 2u);
  EXPECT_EQ(std::string(static_cast<char*>(payload[0].iov_base), payload[0].iov_len), "or");
  EXPECT_EQ(std::string(static_cast<char*>(payload[1].iov_base), payload[1].iov_len), "ld");
}

TEST(RequestBytes, PrivateBytesAreViewedInPlace) {
  std::string s = "frame";
  auto r = RequestBytes::in_private(std::as_bytes(std::span(s)));
  ASSERT_TRUE(r.private_view().has_value());
  EXPECT_EQ(r.private_view()->data(), reinterpret_cast<const std::byte*>(s.data()));
  std::string out(3, '.');
  EXPECT_EQ(r.copy_to(2, std::as_writable_bytes(std::span(out))), 3u);
  EXPECT_EQ(out, "ame");
  std::vector<iovec> payload;
  r.payload(1, payload);
  ASSERT_EQ(payload.size(), 1u);
  EXPECT_EQ(payload[0].iov_len, 4u);
}

}  // namespace
}  // namespace fsd
