// 9P2000.L codec: literal frames, round trips for every message, malformed input.
#include <gtest/gtest.h>

#include <initializer_list>
#include <vector>

#include "protocol/p9/codec.h"

namespace fsd::p9 {
namespace {

std::vector<std::byte> B(std::initializer_list<int> v) {
  std::vector<std::byte> out;
  for (int x : v) out.push_back(static_cast<std::byte>(x));
  return out;
}
void append(std::vector<std::byte>& v, std::string_view s) {
  for (char c : s) v.push_back(static_cast<std::byte>(c));
}

TEST(P9Codec, DecodesLiteralTversion) {
  auto f = B({0x15, 0, 0, 0, 100, 0xff, 0xff, 0x00, 0x00, 0x01, 0x00, 8, 0});
  append(f, "9P2000.L");
  auto r = decode_t(f);
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r->tag, kNoTag);
  const auto& v = std::get<Tversion>(r->msg);
  EXPECT_EQ(v.msize, 65536u);
  EXPECT_EQ(v.version, "9P2000.L");
}

TEST(P9Codec, EncodesLiteralRversion) {
  std::vector<std::byte> buf(64);
  auto n = encode(buf, kNoTag, Rversion{.msize = 8192, .version = "9P2000.L"});
  ASSERT_TRUE(n.ok());
  auto want = B({0x15, 0, 0, 0, 101, 0xff, 0xff, 0x00, 0x20, 0x00, 0x00, 8, 0});
  append(want, "9P2000.L");
  buf.resize(*n);
  EXPECT_EQ(buf, want);
}

TEST(P9Codec, DecodesLiteralTwalk) {
  // size tag fid=1 newfid=2 nwname=2 "ab" "c"
  auto f = B({0, 0, 0, 0, 110, 7, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 2, 0, 'a', 'b', 1, 0, 'c'});
  f[0] = static_cast<std::byte>(f.size());
  auto r = decode_t(f);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tag, 7);
  const auto& w = std::get<Twalk>(r->msg);
  EXPECT_EQ(w.fid, 1u);
  EXPECT_EQ(w.newfid, 2u);
  ASSERT_EQ(w.wnames.count, 2);
  EXPECT_EQ(w.wnames[0], "ab");
  EXPECT_EQ(w.wnames[1], "c");
}

TEST(P9Codec, EncodesLiteralRlerrorAndRwalk) {
  std::vector<std::byte> buf(64);
  auto n = encode(buf, 3, Rlerror{.ecode = 2});
  ASSERT_TRUE(n.ok());
  buf.resize(*n);
  EXPECT_EQ(buf, B({11, 0, 0, 0, 7, 3, 0, 2, 0, 0, 0}));

  std::vector<std::byte> buf2(64);
  Rwalk rw{};
  rw.wqids.count = 1;
  rw.wqids.qids[0] = Qid{.type = kQtDir, .version = 0x01020304, .path = 0x1122334455667788};
  n = encode(buf2, 9, rw);
  ASSERT_TRUE(n.ok());
  buf2.resize(*n);
  EXPECT_EQ(buf2, B({22, 0, 0, 0, 111, 9, 0, 1, 0, 0x80, 4, 3, 2, 1,
                     0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11}));
}

TEST(P9Codec, DecodesLiteralTwriteDataInPlace) {
  auto f = B({0, 0, 0, 0, 118, 1, 0, 5, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 'x', 'y', 'z'});
  f[0] = static_cast<std::byte>(f.size());
  auto r = decode_t(f);
  ASSERT_TRUE(r.ok());
  const auto& w = std::get<Twrite>(r->msg);
  EXPECT_EQ(w.fid, 5u);
  EXPECT_EQ(w.offset, 16u);
  ASSERT_EQ(w.data.bytes.size(), 3u);
  EXPECT_EQ(w.data.bytes.data(), f.data() + 23);  // a view into the frame, not a copy
}

TEST(P9Codec, RreadHeaderInPlace) {
  std::vector<std::byte> buf(kRreadHeaderSize + 2);
  buf[kRreadHeaderSize] = std::byte{'h'};
  buf[kRreadHeaderSize + 1] = std::byte{'i'};
  put_rread_header(buf, 4, 2);
  auto r = decode_r(buf);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tag, 4);
  const auto& d = std::get<Rread>(r->msg).data.bytes;
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(static_cast<char>(d[0]), 'h');
}

// Fills every field of a message with a value derived from its position, so
// that a field swapped or skipped by the codec shows up in the comparison.
struct Filler {
  int n = 1;
  std::vector<std::string>* strings;
  void operator()(uint8_t& v) { v = static_cast<uint8_t>(n++); }
  void operator()(uint16_t& v) { v = static_cast<uint16_t>(0x100 + n++); }
  void operator()(uint32_t& v) { v = 0x10000u + static_cast<uint32_t>(n++); }
  void operator()(uint64_t& v) { v = 0x100000000ull + static_cast<uint64_t>(n++); }
  void operator()(std::string_view& s) {
    strings->push_back("s" + std::to_string(n++));
    s = strings->back();
  }
  void operator()(Qid& q) { (*this)(q.type); (*this)(q.version); (*this)(q.path); }
  void operator()(Data& d) {
    strings->push_back(std::string(static_cast<size_t>(n++), 'd'));
    d.bytes = std::as_bytes(std::span(strings->back()));
  }
  void operator()(WalkNames& w) {
    w.count = 3;
    for (int i = 0; i < 3; i++) (*this)(w.names[i]);
  }
  void operator()(WalkQids& w) {
    w.count = 2;
    for (int i = 0; i < 2; i++) (*this)(w.qids[i]);
  }
};

bool same(uint64_t a, uint64_t b) { return a == b; }
bool same(std::string_view a, std::string_view b) { return a == b; }
bool same(const Qid& a, const Qid& b) { return a == b; }
bool same(const Data& a, const Data& b) {
  return a.bytes.size() == b.bytes.size() &&
         std::equal(a.bytes.begin(), a.bytes.end(), b.bytes.begin());
}
bool same(const WalkNames& a, const WalkNames& b) {
  if (a.count != b.count) return false;
  for (size_t i = 0; i < a.count; i++)
    if (a.names[i] != b.names[i]) return false;
  return true;
}
bool same(const WalkQids& a, const WalkQids& b) {
  if (a.count != b.count) return false;
  for (size_t i = 0; i < a.count; i++)
    if (!(a.qids[i] == b.qids[i])) return false;
  return true;
}

template <class M, class DecodeFn>
void round_trip(DecodeFn decode) {
  SCOPED_TRACE(type_name(static_cast<uint8_t>(M::kType)));
  std::vector<std::string> strings;
  strings.reserve(64);
  M m{};
  Filler fill{.n = 1, .strings = &strings};
  std::apply([&](auto&... f) { (fill(f), ...); }, m.fields());

  std::vector<std::byte> buf(4096);
  auto n = encode(buf, 0x4242, m);
  ASSERT_TRUE(n.ok());
  buf.resize(*n);
  auto r = decode(std::span<const std::byte>(buf));
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r->tag, 0x4242);
  const M& back = std::get<M>(r->msg);
  bool all = std::apply(
      [&](const auto&... a) {
        return std::apply([&](const auto&... b) { return (same(a, b) && ...); }, back.fields());
      },
      m.fields());
  EXPECT_TRUE(all);

  // Every strict prefix of a valid frame, with its size field fixed up to
  // match, must be rejected (or be a different valid message: impossible here
  // because every field was filled and decoding is exact).
  for (size_t len = kHeaderSize; len < buf.size(); len++) {
    std::vector<std::byte> cut(buf.begin(), buf.begin() + static_cast<ptrdiff_t>(len));
    Writer(cut).put(static_cast<uint32_t>(len));
    EXPECT_FALSE(decode(std::span<const std::byte>(cut)).ok()) << "prefix " << len;
  }
  // One trailing byte is rejected as well.
  std::vector<std::byte> longer = buf;
  longer.push_back(std::byte{0});
  Writer(longer).put(static_cast<uint32_t>(longer.size()));
  EXPECT_FALSE(decode(std::span<const std::byte>(longer)).ok());
}

template <class... M>
void round_trip_all_t(std::variant<M...>*) {
  (round_trip<M>([](Bytes b) { return decode_t(b); }), ...);
}
template <class... M>
void round_trip_all_r(std::variant<M...>*) {
  (round_trip<M>([](Bytes b) { return decode_r(b); }), ...);
}

TEST(P9Codec, EveryTMessageRoundTripsAndRejectsTruncation) {
  round_trip_all_t(static_cast<TMessage*>(nullptr));
  EXPECT_EQ(std::variant_size_v<TMessage>, 28u);
}
TEST(P9Codec, EveryRMessageRoundTripsAndRejectsTruncation) {
  round_trip_all_r(static_cast<RMessage*>(nullptr));
  EXPECT_EQ(std::variant_size_v<RMessage>, 29u);
}

TEST(P9Codec, RejectsMalformedFrames) {
  // Shorter than a header.
  EXPECT_EQ(decode_t(B({5, 0, 0})).error(), -EBADMSG);
  // size < 7.
  EXPECT_EQ(decode_t(B({6, 0, 0, 0, 120, 0, 0})).error(), -EBADMSG);
  // size field larger than the bytes given (truncated frame).
  EXPECT_EQ(decode_t(B({20, 0, 0, 0, 120, 0, 0, 1, 0, 0, 0})).error(), -EBADMSG);
  // size field smaller than the bytes given.
  EXPECT_EQ(decode_t(B({7, 0, 0, 0, 120, 0, 0, 1, 0, 0, 0})).error(), -EBADMSG);
  // Tclunk missing its fid.
  EXPECT_EQ(decode_t(B({9, 0, 0, 0, 120, 0, 0, 1, 0})).error(), -EBADMSG);
  // Unknown type, well framed: EOPNOTSUPP so the server can answer with the tag.
  EXPECT_EQ(decode_t(B({11, 0, 0, 0, 124, 5, 0, 1, 0, 0, 0})).error(), -EOPNOTSUPP);
  // An R type sent as a T message.
  EXPECT_EQ(decode_t(B({11, 0, 0, 0, 121, 5, 0, 1, 0, 0, 0})).error(), -EOPNOTSUPP);
  // String length runs past the frame: Tversion with len 0xffff.
  EXPECT_EQ(decode_t(B({13, 0, 0, 0, 100, 0xff, 0xff, 0, 0x20, 0, 0, 0xff, 0xff})).error(),
            -EBADMSG);
  // Twalk with nwname 17.
  auto w = B({0, 0, 0, 0, 110, 1, 0, 1, 0, 0, 0, 2, 0, 0, 0, 17, 0});
  for (int i = 0; i < 17; i++) {
    w.push_back(std::byte{1});
    w.push_back(std::byte{0});
    w.push_back(std::byte{'a'});
  }
  w[0] = static_cast<std::byte>(w.size());
  EXPECT_EQ(decode_t(w).error(), -EBADMSG);
  // Twrite whose count claims more data than the frame carries.
  auto tw = B({0, 0, 0, 0, 118, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 'x'});
  tw[0] = static_cast<std::byte>(tw.size());
  EXPECT_EQ(decode_t(tw).error(), -EBADMSG);
}

TEST(P9Codec, EncodeReportsBufferTooSmall) {
  std::vector<std::byte> buf(10);
  EXPECT_EQ(encode(buf, 1, Rversion{.msize = 1, .version = "9P2000.L"}).error(), -EMSGSIZE);
  std::string big(70000, 'x');
  std::vector<std::byte> large(100000);
  EXPECT_EQ(encode(large, 1, Rreadlink{.target = big}).error(), -EMSGSIZE);
}

TEST(P9Codec, DirentWriterAndReader) {
  std::vector<std::byte> area(DirentWriter::entry_size("a") + DirentWriter::entry_size("bcd"));
  DirentWriter w(area);
  EXPECT_TRUE(w.add({.qid = {kQtDir, 1, 2}, .offset = 10, .type = 4, .name = "a"}));
  EXPECT_TRUE(w.add({.qid = {kQtFile, 3, 4}, .offset = 20, .type = 8, .name = "bcd"}));
  EXPECT_FALSE(w.add({.qid = {}, .offset = 30, .type = 8, .name = "x"}));  // full
  EXPECT_EQ(w.size(), area.size());

  DirentReader r(area);
  auto e1 = r.next();
  ASSERT_TRUE(e1.ok() && e1->has_value());
  EXPECT_EQ((*e1)->name, "a");
  EXPECT_EQ((*e1)->offset, 10u);
  EXPECT_EQ((*e1)->qid.path, 2u);
  auto e2 = r.next();
  ASSERT_TRUE(e2.ok() && e2->has_value());
  EXPECT_EQ((*e2)->name, "bcd");
  EXPECT_EQ((*e2)->type, 8);
  auto e3 = r.next();
  ASSERT_TRUE(e3.ok());
  EXPECT_FALSE(e3->has_value());

  DirentReader bad(std::span<const std::byte>(area).first(area.size() - 1));
  ASSERT_TRUE(bad.next().ok());
  EXPECT_EQ(bad.next().error(), -EBADMSG);
}

}  // namespace
}  // namespace fsd::p9
