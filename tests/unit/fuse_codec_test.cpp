// FUSE request decoding and reply building, from literal bytes.
#include <dirent.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "protocol/fuse/reply.h"
#include "protocol/fuse/request.h"

namespace fsd::fuse {
namespace {

// Builds a request: header, then the given parts, with header.len filled in.
class Req {
 public:
  Req(uint32_t opcode, uint64_t nodeid) {
    h_.opcode = opcode;
    h_.unique = 77;
    h_.nodeid = nodeid;
    h_.uid = 1000;
    h_.gid = 100;
  }
  template <class T>
  Req& add(const T& v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    body_.insert(body_.end(), p, p + sizeof v);
    return *this;
  }
  Req& str(std::string_view s) {
    for (char c : s) body_.push_back(static_cast<std::byte>(c));
    body_.push_back(std::byte{0});
    return *this;
  }
  Req& raw(std::string_view s) {
    for (char c : s) body_.push_back(static_cast<std::byte>(c));
    return *this;
  }
  std::vector<std::byte> bytes() const {
    fuse_in_header h = h_;
    h.len = static_cast<uint32_t>(sizeof h + body_.size());
    std::vector<std::byte> out(sizeof h);
    std::memcpy(out.data(), &h, sizeof h);
    out.insert(out.end(), body_.begin(), body_.end());
    return out;
  }

 private:
  fuse_in_header h_{};
  std::vector<std::byte> body_;
};

TEST(FuseDecode, LookupFromLiteralBytes) {
  // len=45, opcode=1 (LOOKUP), unique=2, nodeid=1, uid=0, gid=0, pid=5, "hello\0"
  std::vector<std::byte> b(40 + 6);
  uint32_t len = 46, op = FUSE_LOOKUP, pid = 5;
  uint64_t unique = 2, nodeid = 1;
  std::memcpy(&b[0], &len, 4);
  std::memcpy(&b[4], &op, 4);
  std::memcpy(&b[8], &unique, 8);
  std::memcpy(&b[16], &nodeid, 8);
  std::memcpy(&b[32], &pid, 4);
  std::memcpy(&b[40], "hello", 6);
  auto r = decode(b);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->header.unique, 2u);
  EXPECT_EQ(r->header.pid, 5u);
  EXPECT_EQ(std::get<Lookup>(r->args).name, "hello");
}

TEST(FuseDecode, FixedArgumentsAndTwoNames) {
  fuse_rename2_in rn{};
  rn.newdir = 9;
  rn.flags = RENAME_NOREPLACE;
  auto b = Req(FUSE_RENAME2, 3).add(rn).str("old").str("new").bytes();
  auto r = decode(b);
  ASSERT_TRUE(r.ok());
  const auto& a = std::get<Rename2>(r->args);
  EXPECT_EQ(a.in.newdir, 9u);
  EXPECT_EQ(a.oldname, "old");
  EXPECT_EQ(a.newname, "new");
  auto sb = Req(FUSE_SYMLINK, 1).str("link").str("../target").bytes();  // decoded views point into it
  auto s = decode(sb);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(std::get<Symlink>(s->args).target, "../target");
}

TEST(FuseDecode, InitAcceptsOldAndNewLayouts) {
  fuse_init_in in{};
  in.major = 7;
  in.minor = 38;
  in.flags = FUSE_INIT_EXT | FUSE_ASYNC_READ;
  in.flags2 = 1;
  auto r = decode(Req(FUSE_INIT, 0).add(in).bytes());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::get<Init>(r->args).in.flags2, 1u);
  // A 7.3x-but-pre-7.36 client sends only the first 16 bytes.
  std::vector<std::byte> old = Req(FUSE_INIT, 0).add(in).bytes();
  old.resize(40 + 16);
  uint32_t len = 56;
  std::memcpy(old.data(), &len, 4);
  auto r2 = decode(old);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(std::get<Init>(r2->args).in.minor, 38u);
  EXPECT_EQ(std::get<Init>(r2->args).in.flags2, 0u);
}

TEST(FuseDecode, WritePayloadMayBeCarriedSeparately) {
  fuse_write_in w{};
  w.fh = 4;
  w.size = 5;
  auto whole = Req(FUSE_WRITE, 2).add(w).raw("abcde").bytes();
  auto r = decode(whole);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(std::get<Write>(r->args).data.size(), 5u);
  // Only header + fuse_write_in in the first buffer: allowed for WRITE...
  auto head = std::span<const std::byte>(whole).first(40 + sizeof w);
  auto r2 = decode(head, whole.size());
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(std::get<Write>(r2->args).data.size(), 0u);
  // ...but the declared size must match the request's length.
  w.size = 6;
  EXPECT_EQ(decode(Req(FUSE_WRITE, 2).add(w).raw("abcde").bytes()).error(), -EBADMSG);
  // and no other request may be short.
  auto lookup = Req(FUSE_LOOKUP, 1).str("name").bytes();
  EXPECT_EQ(decode(std::span<const std::byte>(lookup).first(42), lookup.size()).error(), -EBADMSG);
}

TEST(FuseDecode, RejectsMalformedRequests) {
  // shorter than a header
  std::vector<std::byte> tiny(20);
  EXPECT_EQ(decode(tiny).error(), -EBADMSG);
  // header.len disagrees with the bytes
  auto b = Req(FUSE_LOOKUP, 1).str("x").bytes();
  b.push_back(std::byte{0});
  EXPECT_EQ(decode(b).error(), -EBADMSG);
  // name without its NUL
  EXPECT_EQ(decode(Req(FUSE_LOOKUP, 1).raw("abc").bytes()).error(), -EBADMSG);
  // fixed struct cut short
  EXPECT_EQ(decode(Req(FUSE_OPEN, 1).raw("abc").bytes()).error(), -EBADMSG);
  // BATCH_FORGET whose count exceeds the entries present
  fuse_batch_forget_in bf{};
  bf.count = 1000000;
  EXPECT_EQ(decode(Req(FUSE_BATCH_FORGET, 0).add(bf).add(fuse_forget_one{}).bytes()).error(), -EBADMSG);
  // SETXATTR whose value size exceeds the request
  fuse_setxattr_in sx{};
  sx.size = 100;
  std::vector<std::byte> sxb = Req(FUSE_SETXATTR, 1).raw(std::string_view(reinterpret_cast<const char*>(&sx), 8)).str("user.a").raw("v").bytes();
  EXPECT_EQ(decode(sxb).error(), -EBADMSG);
}

TEST(FuseDecode, UnknownOpcodeDecodesToUnknown) {
  auto r = decode(Req(4242, 1).raw("whatever").bytes());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(std::holds_alternative<Unknown>(r->args));
  EXPECT_STREQ(opcode_name(FUSE_READDIRPLUS), "READDIRPLUS");
  EXPECT_EQ(opcode_name(4242), nullptr);
}

TEST(FuseReply, ScatterWriterSpansBuffers) {
  char a[5], b[3], c[10];
  iovec iov[] = {{a, sizeof a}, {b, sizeof b}, {c, sizeof c}};
  ScatterWriter w(iov);
  EXPECT_EQ(w.room(), 18u);
  EXPECT_TRUE(w.write("0123456", 7));
  EXPECT_EQ(std::string(a, 5), "01234");
  EXPECT_EQ(std::string(b, 2), "56");
  iovec scratch[4];
  size_t n = w.next_iovecs(6, scratch);
  ASSERT_EQ(n, 2u);
  EXPECT_EQ(scratch[0].iov_base, b + 2);
  EXPECT_EQ(scratch[0].iov_len, 1u);
  EXPECT_EQ(scratch[1].iov_base, c);
  EXPECT_EQ(scratch[1].iov_len, 5u);
  w.skip(6);
  EXPECT_EQ(w.written(), 13u);
  EXPECT_FALSE(w.write("0123456", 7));  // does not fit: nothing written
  EXPECT_EQ(w.written(), 13u);
  EXPECT_TRUE(w.write_at(3, "XYZ", 3));
  EXPECT_EQ(std::string(a, 5), "012XY");
  EXPECT_EQ(b[0], 'Z');
  EXPECT_FALSE(w.write_at(12, "ab", 2));  // past what was written
}

TEST(FuseReply, DirentsAreAlignedAndBounded) {
  std::vector<std::byte> area(64);
  DirentPacker p(area);
  EXPECT_TRUE(p.add(11, 1, DT_REG, "abc"));
  EXPECT_EQ(p.size(), 32u);  // 24 + 3, rounded up to 8
  fuse_dirent d;
  std::memcpy(&d, area.data(), sizeof d);
  EXPECT_EQ(d.ino, 11u);
  EXPECT_EQ(d.namelen, 3u);
  EXPECT_EQ(std::memcmp(area.data() + FUSE_NAME_OFFSET, "abc", 3), 0);
  EXPECT_TRUE(p.add(12, 2, DT_DIR, "12345678"));
  EXPECT_EQ(p.size(), 64u);
  EXPECT_FALSE(p.add(13, 3, DT_REG, "x"));
  EXPECT_FALSE(p.fits_plus("x"));
}

}  // namespace
}  // namespace fsd::fuse
